"""Turn a results JSON of bench.kernels / bench.train into markdown tables and PNG plots.

    python -m bench.report                                  # the latest GPU results in bench/results/
    python -m bench.report --results=bench/results/nvidia-h100-80gb-hbm3-2026-11-23.json
    python -m bench.report --update_readme=True             # also rewrite README's results block
    python -m bench.report --mode=fwd --dtype=float16       # plot another mode / dtype

Printed: the summary (per kernel, dtype and mode: the Triton kernel's throughput and its
speedup over eager PyTorch, torch.compile and the best SDPA backend, geometric mean over the
shapes with the range), the end-to-end table (tokens/sec, MFU, peak memory, largest
micro-batch per path) and time to quality, then the full per-shape table. Written next to the
JSON: ``<stem>.md`` (all of it), ``<stem>-kernels.png`` (speedup per kernel and size) and
``<stem>-train.png`` (tokens/sec and peak memory per path). With ``--update_readme=True`` the
summary, end-to-end and time-to-quality tables replace what is between
``<!-- results:start -->`` and ``<!-- results:end -->`` in docs/results.md (the generated tables; the README links to it).

Smoke results (``"smoke": true``: CPU, tiny sizes) are ignored unless ``--include_smoke=True``,
are then labelled as such, and never go into the README. Every number comes from the JSON.
"""

import json
import math
import os
from collections import defaultdict
from pathlib import Path

from bench.common import RESULTS_DIR, REPO_ROOT, replace_block, write_text
from gpt.cli import Opt, UsageError, defaults, parse, run_main
from gpt.files import atomic_path

PROG = "python -m bench.report"
OPTIONS = {
    "input": dict(
        results=Opt("", "a results JSON; empty: the latest non-smoke one in results_dir"),
        results_dir=Opt(str(RESULTS_DIR), "where to look for results"),
        include_smoke=Opt(False, "consider smoke results (labelled; never written to the "
                          "README)"),
    ),
    "output": dict(
        out_dir=Opt("", "where <stem>.md and the PNGs go; empty: next to the JSON"),
        plots=Opt(True, "draw the PNG plots"),
        mode=Opt("fwd+bwd", "the mode the plot shows", choices=("fwd", "bwd", "fwd+bwd")),
        dtype=Opt("bfloat16", "the dtype the plot shows",
                  choices=("bfloat16", "float16", "float32")),
        update_readme=Opt(False, "rewrite the block between the results markers in --readme"),
        readme=Opt(str(REPO_ROOT / "docs" / "results.md"), "the page whose block is rewritten"),
    ),
}
DEFAULTS = defaults(OPTIONS)

START, END = "<!-- results:start -->", "<!-- results:end -->"
BASELINES = ("torch", "compile", "sdpa")  # sdpa: the fastest SDPA backend that ran
BASELINE_TITLES = {"torch": "vs eager", "compile": "vs torch.compile", "sdpa": "vs best SDPA"}
NO_RESULTS = ("No GPU benchmark results recorded yet (GPU figures pending): run "
              "`python -m bench.kernels` and `python -m bench.train` on a CUDA GPU, then "
              "`python -m bench.report --update_readme=True`.")
SMOKE_BANNER = ("**SMOKE RUN** (CPU, tiny sizes, one call each): these figures only show that "
                "the benchmark code runs; they are not performance numbers.")


# ----------------------------------------------------------------------------- loading

def is_results(doc):
    return isinstance(doc, dict) and "schema" in doc and ("kernels" in doc or "train" in doc)


def find_results(results_dir=RESULTS_DIR, include_smoke=False):
    """The newest results JSON in ``results_dir`` (by date, then update time); None if none."""
    found = []
    for path in Path(results_dir).glob("*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if is_results(doc) and (include_smoke or not doc.get("smoke")):
            found.append(((doc.get("date", ""), doc.get("updated", "")), path))
    return max(found)[1] if found else None


# ----------------------------------------------------------------------------- numbers

def _geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _speedup_text(xs):
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}x"
    return f"{_geomean(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})"


def _mib(b):
    return "-" if b is None else f"{b / 2**20:,.0f}"


def _gib(b):
    return "-" if b is None else f"{b / 2**30:.2f}"


def _unit(metric):
    return "TFLOP/s" if metric == "tflops" else "GB/s"


def group_kernels(doc):
    """{(kernel, dtype, mode, label): {provider: record}} of the measurements that ran,
    with the synthetic provider "sdpa" being the fastest SDPA variant."""
    groups = defaultdict(dict)
    order = []
    for rec in (doc.get("kernels") or {}).get("measurements", []):
        key = (rec["kernel"], rec["dtype"], rec["mode"], rec["label"])
        if key not in groups:
            order.append(key)
        if rec.get("skipped"):
            continue
        prov = rec["provider"]
        if prov.startswith("sdpa"):
            best = groups[key].get("sdpa")
            if best is None or rec["ms"] < best["ms"]:
                groups[key]["sdpa"] = dict(rec, best_of=prov)
            groups[key][prov] = rec
        else:
            groups[key][prov] = rec
    return {key: groups[key] for key in order}


def speedups(group):
    """{baseline: baseline ms / triton ms} for the baselines that ran next to Triton."""
    tri = group.get("triton")
    if tri is None:
        return {}
    return {b: group[b]["ms"] / tri["ms"] for b in BASELINES if b in group}


def skipped_reasons(doc):
    """{(kernel, provider): reason} of every provider skipped somewhere (first reason)."""
    out = {}
    for rec in (doc.get("kernels") or {}).get("measurements", []):
        if rec.get("skipped"):
            out.setdefault((rec["kernel"], rec["provider"]), rec.get("reason", ""))
    return out


# ----------------------------------------------------------------------------- markdown

def header_md(doc, path):
    v = doc.get("versions", {})
    commit = (doc.get("commit") or "unknown")[:10] + (" (dirty)" if doc.get("dirty") else "")
    lines = [f"Results `{Path(path).name}`: **{doc.get('device')}**, {doc.get('date')}, "
             f"torch {v.get('torch')}, triton {v.get('triton')}, CUDA {v.get('cuda')}, "
             f"commit {commit}."]
    c = doc.get("ceilings")
    if c:
        lines.append(f"Measured ceilings: device copy {c['copy_gbps']:,.0f} GB/s (read + write), "
                     f"{c['matmul_dtype']} matmul {c['matmul_tflops']:,.1f} TFLOP/s "
                     f"({'x'.join(map(str, c['matmul_shape']))}).")
    if doc.get("smoke"):
        lines.insert(0, SMOKE_BANNER)
    return "\n\n".join(lines)


def kernel_summary_md(doc):
    groups = group_kernels(doc)
    if not groups:
        return ""
    agg = defaultdict(lambda: defaultdict(list))
    for (kernel, dtype, mode, _), g in groups.items():
        a = agg[(kernel, dtype, mode)]
        if "triton" in g:
            a["value"].append(g["triton"]["value"])
            a["metric"] = g["triton"]["metric"]
            if g["triton"].get("fraction_of_ceiling") is not None:
                a["frac"].append(g["triton"]["fraction_of_ceiling"])
            if g["triton"].get("peak_mem_bytes") and g.get("torch", {}).get("peak_mem_bytes"):
                a["mem"].append(g["torch"]["peak_mem_bytes"] / g["triton"]["peak_mem_bytes"])
        for b, s in speedups(g).items():
            a[b].append(s)
    rows = ["| kernel | dtype | mode | Triton throughput (mean over shapes) | "
            + " | ".join(BASELINE_TITLES[b] for b in BASELINES) + " | eager / Triton peak memory |",
            "|" + " --- |" * (5 + len(BASELINES))]
    for (kernel, dtype, mode), a in agg.items():
        if a["value"]:
            tput = f"{sum(a['value']) / len(a['value']):,.1f} {_unit(a['metric'])}"
            if a["frac"]:
                tput += f" ({sum(a['frac']) / len(a['frac']):.0%} of ceiling)"
        else:
            tput = "not run"
        rows.append(f"| {kernel} | {dtype} | {mode} | {tput} | "
                    + " | ".join(_speedup_text(a[b]) for b in BASELINES)
                    + f" | {_speedup_text(a['mem'])} |")
    note = ("Speedup = the baseline's median time / the Triton kernel's (geometric mean over the "
            "shapes, range in brackets); > 1 means Triton is faster. \"best SDPA\" is the fastest "
            "of `scaled_dot_product_attention`'s backends that ran.")
    return "\n".join(rows) + "\n\n" + note


def kernel_detail_md(doc):
    groups = group_kernels(doc)
    if not groups:
        return ""
    rows = ["| kernel | shape | dtype | mode | Triton ms | Triton throughput | "
            + " | ".join(BASELINE_TITLES[b] for b in BASELINES)
            + " | peak MiB Triton / eager |",
            "|" + " --- |" * (7 + len(BASELINES))]
    for (kernel, dtype, mode, label), g in groups.items():
        tri = g.get("triton")
        s = speedups(g)
        if tri:
            frac = tri.get("fraction_of_ceiling")
            tput = f"{tri['value']:,.1f} {_unit(tri['metric'])}"
            tput += f" ({frac:.0%})" if frac is not None else ""
            ms = f"{tri['ms']:.3f}"
        else:
            tput, ms = "-", "skipped"
        mem = f"{_mib((tri or {}).get('peak_mem_bytes'))} / {_mib(g.get('torch', {}).get('peak_mem_bytes'))}"
        rows.append(f"| {kernel} | {label} | {dtype} | {mode} | {ms} | {tput} | "
                    + " | ".join(f"{s[b]:.2f}x" if b in s else "-" for b in BASELINES)
                    + f" | {mem} |")
    skipped = skipped_reasons(doc)
    text = "\n".join(rows)
    if skipped:
        text += "\n\nSkipped providers (first reason seen):\n\n" + "\n".join(
            f"- {k} / {p}: {r}" for (k, p), r in skipped.items())
    return text


def train_md(doc):
    t = doc.get("train")
    if not t:
        return ""
    rows = ["| path | attention | micro-batch x T | ms/step | tokens/s | MFU (measured peak) | "
            "MFU (datasheet) | peak memory GiB | largest micro-batch |",
            "|" + " --- |" * 9]
    for r in t.get("paths", []):
        if r.get("skipped"):
            rows.append(f"| {r['path']} | - | - | skipped: {r.get('reason', '')} |  |  |  |  |  |")
            continue
        pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
        mb = r.get("max_batch")
        attention = "Triton flash" if r["kernels"] == "triton" else "reference"
        rows.append(f"| {r['path']} | {attention} | {r['batch_size']} x {r['block_size']} | "
                    f"{r['step_ms']:.1f} | {r['tokens_per_sec']:,.0f} | {pct(r.get('mfu'))} | "
                    f"{pct(r.get('mfu_datasheet'))} | {_gib(r.get('peak_mem_bytes'))} | "
                    f"{mb['batch_size'] if mb else '-'} |")
    m = t.get("model", {})
    precision = "bf16 autocast" if t.get("dtype") == "bfloat16" else t.get("dtype")
    note = (f"Model: {t.get('n_params', 0) / 1e6:.1f}M parameters ({m.get('n_layer')} layers, "
            f"{m.get('n_embd')} wide, vocab {m.get('vocab_size')}, T={m.get('block_size')}), "
            f"{precision}, "
            f"{t.get('optimizer')}; median of {t.get('config', {}).get('steps')} steps after "
            f"{t.get('config', {}).get('warmup')} warm-up steps. The torch path's attention: "
            f"{t.get('torch_attention')}.")
    return "\n".join(rows) + "\n\n" + note


def ttq_md(doc):
    t = (doc.get("train") or {}).get("time_to_quality")
    if not t:
        return ""
    rows = ["| path | seconds to val loss <= target | at iteration | best val loss | total seconds |",
            "|" + " --- |" * 5]
    for r in t:
        if r.get("skipped"):
            rows.append(f"| {r['path']} | skipped: {r.get('reason', '')} |  |  |  |")
            continue
        secs = f"{r['seconds']:.0f}" if r["reached"] else f"not reached (target {r['target_loss']})"
        best = "-" if r.get("best_val_loss") is None else f"{r['best_val_loss']:.4f}"
        rows.append(f"| {r['path']} | {secs} | {r['iter'] if r['reached'] else '-'} | {best} | "
                    f"{r['total_seconds']:.0f} |")
    target = t[0].get("target_loss") if t else None
    return ("\n".join(rows) + f"\n\nnanoGPT's Shakespeare character recipe, target val loss "
            f"{target}, seconds from the first evaluation (compilation and the recipe's "
            "evaluations included).")


def report_md(doc, path, full=True, images=None):
    parts = [header_md(doc, path)]
    summary, train, ttq = kernel_summary_md(doc), train_md(doc), ttq_md(doc)
    if summary:
        parts += ["**Kernels** (Triton vs PyTorch)", summary]
    if train:
        parts += ["**End to end** (one training step of the model below)", train]
    if ttq:
        parts += ["**Time to quality**", ttq]
    for title, img in (images or {}).items():
        parts.append(f"![{title}]({img})")
    if full:
        detail = kernel_detail_md(doc)
        if detail:
            parts += ["**Every kernel measurement**", detail]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plots

def plot_kernels(doc, png, mode, dtype):
    """Speedup of the Triton kernel over each baseline, per kernel and shape."""
    groups = {k: g for k, g in group_kernels(doc).items() if k[1] == dtype and k[2] == mode}
    kernels = list(dict.fromkeys(k[0] for k in groups))
    if not kernels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kernels), 1, figsize=(11, 3.2 * len(kernels)), squeeze=False)
    width = 0.8 / len(BASELINES)
    for ax, kernel in zip(axes[:, 0], kernels):
        items = [(k[3], speedups(g)) for k, g in groups.items() if k[0] == kernel]
        for i, b in enumerate(BASELINES):
            xs = [j + (i - (len(BASELINES) - 1) / 2) * width for j in range(len(items))]
            ys = [s.get(b, math.nan) for _, s in items]
            if any(not math.isnan(y) for y in ys):
                ax.bar(xs, ys, width, label=BASELINE_TITLES[b])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([label for label, _ in items], rotation=20, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("speedup (x, log scale)")
        ax.set_title(f"{kernel} ({dtype}, {mode})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    title = f"Triton kernel speedup on {doc.get('device')}"
    fig.suptitle(title + (" -- SMOKE RUN, not performance" if doc.get("smoke") else ""))
    fig.tight_layout()
    _save(fig, png)
    return png


def plot_train(doc, png):
    """Tokens/sec and peak memory of each end-to-end path."""
    rows = [r for r in (doc.get("train") or {}).get("paths", []) if not r.get("skipped")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["path"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.bar(names, [r["tokens_per_sec"] for r in rows], color="tab:blue")
    a1.set_ylabel("tokens / s")
    a1.set_title("training throughput")
    mem = [(r.get("peak_mem_bytes") or 0) / 2**30 for r in rows]
    a2.bar(names, mem, color="tab:orange")
    a2.set_ylabel("peak memory (GiB)")
    a2.set_title("peak memory")
    for ax in (a1, a2):
        ax.grid(axis="y", alpha=0.3)
    b = rows[0]
    fig.suptitle(f"GPT-2 124M, micro-batch {b['batch_size']} x {b['block_size']}, "
                 f"{doc.get('device')}" + (" -- SMOKE RUN, not performance" if doc.get("smoke") else ""))
    fig.tight_layout()
    _save(fig, png)
    return png


def _save(fig, png):
    import matplotlib.pyplot as plt

    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- README

def update_readme(readme, block):
    readme = Path(readme)
    return write_text(readme, replace_block(readme.read_text(), block, START, END))


# ----------------------------------------------------------------------------- main

def check_inputs(cfg):
    """UsageError for a --results, --results_dir or --readme that is not there."""
    if cfg["results"] and not Path(cfg["results"]).is_file():
        raise UsageError(f"--results={cfg['results']}: no such file")
    if not cfg["results"] and not Path(cfg["results_dir"]).is_dir():
        raise UsageError(f"--results_dir={cfg['results_dir']}: no such folder")
    if cfg["update_readme"] and not Path(cfg["readme"]).is_file():
        raise UsageError(f"--readme={cfg['readme']}: no such file")


def run(cfg):
    check_inputs(cfg)
    path = Path(cfg["results"]) if cfg["results"] else find_results(
        cfg["results_dir"], include_smoke=cfg["include_smoke"])
    if path is None:
        print(NO_RESULTS)
        if cfg["update_readme"]:
            print(f"updated {update_readme(cfg['readme'], NO_RESULTS)}")
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError:
        doc = None
    if not is_results(doc):
        raise UsageError(f"{path} is not a bench.kernels / bench.train results file")
    if doc.get("smoke") and not cfg["include_smoke"]:
        raise UsageError(f"{path} is a smoke run (CPU, tiny sizes), not performance numbers; "
                         "pass --include_smoke=True to summarise it anyway")
    out_dir = Path(cfg["out_dir"]) if cfg["out_dir"] else Path(path).parent
    stem = Path(path).stem
    images = {}
    if cfg["plots"]:
        k = plot_kernels(doc, out_dir / f"{stem}-kernels.png", cfg["mode"], cfg["dtype"])
        t = plot_train(doc, out_dir / f"{stem}-train.png")
        images = {name: p for name, p in (("kernel speedups", k), ("training", t)) if p}
    text = report_md(doc, path, full=True, images={n: p.name for n, p in images.items()})
    print(text)
    md = out_dir / f"{stem}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    print(f"wrote {md}" + "".join(f", {p}" for p in images.values()))
    if cfg["update_readme"]:
        if doc.get("smoke"):
            raise UsageError("refusing to put smoke results (not performance numbers) in the README")
        readme_dir = Path(cfg["readme"]).resolve().parent
        rel = {n: os.path.relpath(Path(p).resolve(), readme_dir) for n, p in images.items()}
        block = report_md(doc, os.path.relpath(Path(path).resolve(), readme_dir), full=False,
                          images=rel)
        block += f"\nEvery measurement: [{md.name}]({os.path.relpath(md.resolve(), readme_dir)}).\n"
        print(f"updated {update_readme(cfg['readme'], block)}")
    return dict(markdown=text, md=md, images=images)


def main(argv=None):
    return run(parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    run_main(main, PROG)
