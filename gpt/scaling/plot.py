"""The picture of an IsoFLOP sweep (`scaling.png`): loss against size per budget with the
fitted parabolas, and the compute-optimal size against compute with the fitted power law."""

import math

import numpy as np

from gpt.files import atomic_path
from gpt.scaling.laws import si


def plot_sweep(records, fit, path):
    """Left: loss vs N per budget with each fitted parabola and its minimum. Right: N_opt vs C
    on log axes with the fitted power law (and a slope-0.5 line for comparison)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(fit["per_budget"])))
    for f, color in zip(fit["per_budget"], colors):
        runs = [r for r in records if r["budget"] == f["budget"]]
        n = np.array([r["params"] for r in runs], float)
        left.plot(n, [r["val_loss"] for r in runs], "o", color=color,
                  label=f"C = {f['budget']:.2g} FLOPs")
        x = np.linspace(np.log(n.min()) - 0.2, np.log(n.max()) + 0.2, 100)
        left.plot(np.exp(x), np.polyval(f["coeffs"], x), "-", color=color, lw=1)
        if f["n_opt"] is not None:
            left.plot([f["n_opt"]], [f["loss_opt"]], "*", ms=14, color=color,
                      mfc=color if f["interior"] else "none")
    left.set_xscale("log")
    sizes = sorted({r["params"] for r in records})
    left.set_xticks(sizes, [si(n) for n in sizes], fontsize=8)  # the sizes trained
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("non-embedding parameters N")
    left.set_ylabel("final validation loss (nats/token)")
    left.set_title("IsoFLOP curves (star: fitted minimum; hollow: outside the sizes)",
                   fontsize=10)
    left.grid(alpha=0.3, which="both")
    left.legend()

    found = [f for f in fit["per_budget"] if f["n_opt"] is not None]
    for f, color in zip(fit["per_budget"], colors):
        if f["n_opt"] is not None:
            right.plot([f["budget"]], [f["n_opt"]], "*", ms=14, color=color,
                       mfc=color if f["interior"] else "none")
    law = fit["power_law"]
    if law is not None:
        c = np.geomspace(min(law["budgets_used"]) / 2, max(law["budgets_used"]) * 2, 50)
        right.plot(c, law["k"] * c ** law["a"], "k-", label=f"fit: N_opt ~ C^{law['a']:.2f}")
        mid = math.sqrt(min(law["budgets_used"]) * max(law["budgets_used"]))
        ref = law["k"] * mid ** law["a"] * (c / mid) ** 0.5
        right.plot(c, ref, "k--", lw=1, alpha=0.6, label="slope 0.50 (Chinchilla)")
        right.legend()
    right.set_xscale("log")
    right.set_yscale("log")
    budgets = [f["budget"] for f in fit["per_budget"]]
    right.set_xticks(budgets, [f"{c:.2g}" for c in budgets])
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("compute C = 6 N D (FLOPs)")
    right.set_ylabel("compute-optimal N")
    right.set_title("N_opt vs compute" if found else "N_opt vs compute (no minimum found)")
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
