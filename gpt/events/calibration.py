"""Scores of predicted probabilities: discrimination, calibration, intervals, and the truth.

Against observed labels y (0/1) for predicted probabilities p:

- AUROC (evaluate.auroc: Mann-Whitney, ties 1/2) and AUPRC (average precision: the precision
  at each distinct threshold weighted by the recall it adds; the positive rate for a useless
  score);
- Brier score mean((p - y)^2);
- calibration curve: rows in `n_bins` bins of equal count by p, mean p against the observed
  rate per bin; calibration-in-the-large mean(p) - mean(y); calibration slope: the least
  squares slope of y on p (1 for a calibrated p, < 1 when p spreads too far, > 1 too little);
- bootstrap 95% intervals: percentiles of each metric over rows resampled with replacement.

Against the true probability t of each row (synthetic data: from simulating the true process),
estimated from S simulations, for a p that is the fraction of N sampled futures:

- mean absolute error mean|p - t|, and the calibration slope of t on p: the least squares
  slope, which sampling noise in p pulls below 1 (regression dilution), and the same slope
  with the sampling variance of p taken out of Var(p), the slope of the model's own
  probability (1 for a model that is calibrated, however few futures it was given);
- where the squared error comes from: E(p - t)^2 = (model error)^2 + Var(p) + Var(t), with
  the sampling variances of the two fractions estimated without bias by p(1 - p)/(N - 1) and
  t(1 - t)/(S - 1); the rest is the model's own error, what more futures would not remove;
- the same scores of "truth@N", the true process seen through N futures (the mean of N of
  its S simulations): the part of the gap to the truth that is sampling noise alone.
"""

from __future__ import annotations

import numpy as np

from gpt.events.evaluate import auroc


def average_precision(scores, labels):
    """AUPRC as average precision: sum over distinct thresholds (high to low) of precision x
    the recall gained; tied scores enter together. NaN without a positive."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    gained = np.diff(np.r_[0, tp]) / n_pos
    return float((precision * gained).sum())


def brier(p, y):
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def slope(p, y):
    """Least squares slope of y (labels or true probabilities) on p; NaN if p is constant."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    var = np.mean((p - p.mean()) ** 2)
    return float(np.mean((p - p.mean()) * (y - y.mean())) / var) if var > 0 else float("nan")


def calibration_curve(p, y, n_bins=10):
    """(mean p, mean y, count) per bin; bins hold equal numbers of rows sorted by p (fewer bins
    when rows are few; rows with equal p always share a bin)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_bins = max(1, min(n_bins, len(p)))
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1])
    which = np.searchsorted(np.unique(edges), p, side="left")
    out = []
    for b in np.unique(which):
        m = which == b
        out.append((float(p[m].mean()), float(y[m].mean()), int(m.sum())))
    return out


LABEL_METRICS = {
    "auroc": lambda p, y: auroc(p, y),
    "auprc": lambda p, y: average_precision(p, y),
    "brier": brier,
    "calibration_in_the_large": lambda p, y: float(np.mean(p) - np.mean(y)),
    "calibration_slope": slope,
}


def bootstrap(metrics, p, y, n=1000, seed=0):
    """{name: (low, high)}: the 2.5 and 97.5 percentiles of each metric(p, y) over n resamples
    of the rows (resamples where a metric is undefined, e.g. one class only, are skipped)."""
    rng = np.random.default_rng(seed)
    p, y = np.asarray(p), np.asarray(y)
    values = {k: [] for k in metrics}
    for _ in range(n):
        i = rng.integers(0, len(p), len(p))
        for k, f in metrics.items():
            v = f(p[i], y[i])
            if v == v:
                values[k].append(v)
    return {k: ((float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v
                else (float("nan"), float("nan"))) for k, v in values.items()}


def score_labels(p, y, n_boot=1000, seed=0, n_bins=10):
    """Every label metric with its bootstrap interval, and the calibration curve."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    out = {k: f(p, y) for k, f in LABEL_METRICS.items()}
    ci = bootstrap(LABEL_METRICS, p, y, n_boot, seed) if n_boot else {}
    return {"rows": int(len(p)), "positives": int(y.sum()), "positive_rate": float(y.mean()),
            "mean_prediction": float(p.mean()), **out,
            "ci95": ci, "calibration_curve": calibration_curve(p, y, n_bins)}


def score_truth(p, hits, num_samples, n_boot=1000, seed=0):
    """Scores against the true probability. p (R,) predictions that are fractions of
    num_samples futures; hits (R, S) bool: the outcome in each of S futures of the true process.
    Returns the model's MAE, slope and squared-error split, and the same for truth@N."""
    p = np.asarray(p, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    S, N = hits.shape[1], int(num_samples)
    t = hits.mean(axis=1)
    truth_n = hits[:, :N].mean(axis=1) if S > N else None  # the truth through N futures

    def split(q, n, t_rest, s):
        mse = float(np.mean((q - t_rest) ** 2))
        noise_q = float(np.mean(q * (1 - q) / (n - 1))) if n > 1 else float("nan")
        noise_t = float(np.mean(t_rest * (1 - t_rest) / (s - 1))) if s > 1 else 0.0
        return {"mse": mse, "sampling_variance": noise_q, "truth_mc_variance": noise_t,
                "model_squared_error": mse - noise_q - noise_t}

    def denoised_slope(q, t_rest, n):
        # noise in t does not bias the slope; noise in q inflates Var(q) by about
        # mean q(1 - q)/(n - 1), which is taken out of the denominator
        var = np.mean((q - q.mean()) ** 2) - np.mean(q * (1 - q)) / (n - 1)
        cov = np.mean((q - q.mean()) * (t_rest - t_rest.mean()))
        return float(cov / var) if var > 0 else float("nan")

    def metrics(q, t_rest, n):
        out = {"mae": lambda i: float(np.mean(np.abs(q[i] - t_rest[i]))),
               "calibration_slope_truth": lambda i: slope(q[i], t_rest[i])}
        if n > 1:
            out["calibration_slope_truth_denoised"] = lambda i: denoised_slope(q[i], t_rest[i], n)
        return out

    def scored(q, t_rest, n, s):
        ms = metrics(q, t_rest, n)
        all_rows = np.arange(len(q))
        out = {k: f(all_rows) for k, f in ms.items()}
        rng = np.random.default_rng(seed)
        boot = {k: [] for k in ms}
        for _ in range(n_boot):
            i = rng.integers(0, len(q), len(q))
            for k, f in ms.items():
                v = f(i)
                if v == v:
                    boot[k].append(v)
        out["ci95"] = {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
                       for k, v in boot.items() if v}
        return out | split(q, n, t_rest, s)

    result = {"truth_sims": S, "num_samples": N, "mean_truth": float(t.mean())}
    if truth_n is None:
        result["model"] = scored(p, t, N, S)
        return result
    # the reference is the other S - N simulations, for the model and truth@N alike, so that
    # truth@N's noise and the reference's are independent
    rest = hits[:, N:].mean(axis=1)
    result["reference_sims"] = S - N
    result["model"] = scored(p, rest, N, S - N)
    result["truth_at_n"] = scored(truth_n, rest, N, S - N)
    return result
