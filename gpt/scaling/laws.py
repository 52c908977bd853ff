"""The formulas behind `python -m gpt.scaling`: what a model costs, Chinchilla's
compute-optimal rules, and the fits an IsoFLOP sweep is summarised by. No training here.

    training_memory(N)                      bytes of weights, gradients, AdamW state per dtype
    throughput(flops_per_token, D, peak, mfu, hours)   GPU-hours, or the GPUs a deadline needs
    approach1(C), approach3(C), tokens_per_param_rule(C)  -> (N_opt, D_opt)
    chinchilla_loss(N, D), nearest_config(N)
    fit_isoflop_minimum(N, losses), fit_power_law(C, N_opt), fit_sweep(records)

Parameter counts and FLOPs per token are `gpt.flops`'s, the GPU datasheet figures
`gpt.hardware`'s.
"""

import math

import numpy as np

from gpt.flops import param_counts
from gpt.hardware import DTYPES, GPUS
from gpt.model import GPTConfig

# Dense bf16 tensor-core peak FLOP/s from the vendors' datasheets (H100/H200: SXM), the same
# figures train.py uses for its MFU estimate (a test keeps the two tables equal).
GPU_PEAK_FLOPS = {name: gpu.bf16_flops for name, gpu in GPUS.items()}  # datasheet dense bf16

BYTES_PER_DTYPE = {name: dtype.itemsize for name, dtype in DTYPES.items()}


def si(x):
    """1.23e9 -> '1.23B': counts of parameters and tokens."""
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


# ----------------------------------------------------------------------------- counting

def training_memory(n_params):
    """Bytes of weights, gradients and AdamW state (two moments, kept by torch in the
    parameter's dtype) per dtype: {dtype: {"weights", "gradients", "adamw", "total"}}.
    Activations are not included: they depend on batch size, context and checkpointing."""
    out = {}
    for dtype, b in BYTES_PER_DTYPE.items():
        weights = grads = n_params * b
        adamw = 2 * n_params * b
        out[dtype] = {"weights": weights, "gradients": grads, "adamw": adamw,
                      "total": weights + grads + adamw}
    return out


def throughput(flops_per_tok, tokens, peak_flops, mfu, hours=0.0):
    """What D=`tokens` takes on GPUs of `peak_flops` at `mfu`, and, with `hours`, what
    finishing them in that wall time needs."""
    per_gpu = mfu * peak_flops / flops_per_tok  # tokens/s one GPU reaches
    out = {"tokens_per_sec_per_gpu": per_gpu, "gpu_hours": tokens / per_gpu / 3600,
           "train_flops": flops_per_tok * tokens}
    if hours > 0:
        needed = tokens / (hours * 3600)
        out.update(tokens_per_sec_needed=needed, flops_per_sec_needed=needed * flops_per_tok,
                   gpus_needed=needed / per_gpu,
                   mfu_needed_one_gpu=needed * flops_per_tok / peak_flops)
    return out


# ----------------------------------------------------------------------------- Chinchilla

# Table 3 of Hoffmann et al. 2022: (parameters, FLOPs, tokens) of compute-optimal models as
# projected by Approach 1.
CHINCHILLA_TABLE3 = [
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12), (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12), (10e12, 1.30e28, 216.2e12),
]

# Approach 1 (training curves' envelope): N_opt = k * C^a, D_opt = C / (6 N_opt) ~ C^(1-a).
# The paper prints a = 0.50, b = 0.50 (Table 2) without the coefficient; the slope of Table 3
# from 400M to 10T is a = 0.498, and k = 0.0997 is the least-squares anchor of log N = log k +
# a log C through its nine rows (every row's N within 1.3%; tests check both directions).
APPROACH1_A = 0.498
APPROACH1_K = 0.0997

# Approach 3 (parametric fit), the constants as published: L(N, D) = E + A / N^alpha + B / D^beta
# (N all parameters, D tokens, loss in nats on MassiveText).
CHINCHILLA_E, CHINCHILLA_A, CHINCHILLA_B = 1.69, 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28


def chinchilla_loss(n_params, tokens):
    """Approach 3's predicted loss L(N, D) = E + A / N^alpha + B / D^beta."""
    return (CHINCHILLA_E + CHINCHILLA_A / n_params ** CHINCHILLA_ALPHA
            + CHINCHILLA_B / tokens ** CHINCHILLA_BETA)


def approach1(compute):
    """(N_opt, D_opt) for a budget of `compute` FLOPs by Approach 1's power law."""
    n = APPROACH1_K * compute ** APPROACH1_A
    return n, compute / (6 * n)


def approach1_for_params(n_params):
    """The inverse, as Table 3 reads: (compute, tokens) for which `n_params` is optimal."""
    compute = (n_params / APPROACH1_K) ** (1 / APPROACH1_A)
    return compute, compute / (6 * n_params)


def approach3(compute):
    """(N_opt, D_opt) minimising L(N, D) subject to 6 N D = compute. Setting the derivative
    along the constraint to zero gives N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
    G = (alpha A / (beta B))^(1 / (alpha + beta)), a = beta / (alpha + beta), b = 1 - a."""
    alpha, beta = CHINCHILLA_ALPHA, CHINCHILLA_BETA
    g = (alpha * CHINCHILLA_A / (beta * CHINCHILLA_B)) ** (1 / (alpha + beta))
    n = g * (compute / 6) ** (beta / (alpha + beta))
    return n, compute / (6 * n)


def tokens_per_param_rule(compute, ratio=20.0):
    """(N, D) with D = ratio * N and 6 N D = compute: N = sqrt(compute / (6 ratio))."""
    n = math.sqrt(compute / (6 * ratio))
    return n, ratio * n


# The rule `nearest_config` builds by: head dim 64, width a multiple of 64, an aspect ratio
# n_embd / n_layer between 32 and 128 (GPT-2's sizes span 33-64, GPT-3 175B is 128; Kaplan et
# al. 2020 find the loss within a few percent over such a range). Among the configs whose total
# parameters are within 5% of the target, the one with the aspect ratio nearest 64 (GPT-2
# small's; it makes n_head = n_layer); the nearest count if none is within 5%.
HEAD_DIM, ASPECT_MIN, ASPECT_MAX, ASPECT_PREFERRED, COUNT_TOLERANCE = 64, 32, 128, 64, 0.05


def nearest_config(n_target, vocab_size=50304, block_size=1024, bias=False):
    """The buildable GPTConfig nearest n_target total parameters by the rule above."""
    def build(n_layer, n_head):
        return GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_head * HEAD_DIM,
                         vocab_size=vocab_size, block_size=block_size, bias=bias)

    best, best_key = None, None
    # 12 L C^2 <= N with C >= 32 L bounds the depth: L <= (N / 12288)^(1/3)
    max_layers = max(1, round((n_target / (12 * ASPECT_MIN**2)) ** (1 / 3))) * 2 + 2
    for n_layer in range(1, max_layers + 1):
        lo = max(1, math.ceil(ASPECT_MIN * n_layer / HEAD_DIM))
        hi = max(lo, ASPECT_MAX * n_layer // HEAD_DIM)
        # the count grows with the width: bisect for the fewest heads reaching the target,
        # then compare with one head fewer
        while lo < hi:
            mid = (lo + hi) // 2
            if param_counts(build(n_layer, mid))["total"] < n_target:
                lo = mid + 1
            else:
                hi = mid
        for heads in {max(1, lo - 1), lo}:
            cfg = build(n_layer, heads)
            miss = abs(math.log(param_counts(cfg)["total"] / n_target))
            key = (max(miss, math.log1p(COUNT_TOLERANCE)),  # all within 5% rank equal...
                   abs(math.log(cfg.n_embd / n_layer / ASPECT_PREFERRED)), miss)  # ...then by shape
            if best_key is None or key < best_key:
                best, best_key = cfg, key
    return best


# ----------------------------------------------------------------------------- fitting

def fit_isoflop_minimum(n_params, losses):
    """Fit loss = c2 (log N)^2 + c1 log N + c0 to one budget's runs; its vertex is the
    compute-optimal size. Returns {"coeffs", "n_opt", "loss_opt", "interior"}: n_opt is None
    when the parabola opens downwards (no minimum); interior is False when the minimum lies
    outside the sizes trained (an extrapolation: train smaller or larger models)."""
    x = np.log(np.asarray(n_params, dtype=float))
    y = np.asarray(losses, dtype=float)
    if len(x) < 3:
        raise ValueError(f"a parabola needs at least 3 runs, got {len(x)}")
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        return {"coeffs": [c2, c1, c0], "n_opt": None, "loss_opt": None, "interior": False}
    x_opt = -c1 / (2 * c2)
    return {"coeffs": [float(c2), float(c1), float(c0)], "n_opt": float(np.exp(x_opt)),
            "loss_opt": float(np.polyval([c2, c1, c0], x_opt)),
            "interior": bool(x.min() <= x_opt <= x.max())}


def fit_power_law(compute, n_opt):
    """Least squares in log space: log N_opt = log k + a log C. Returns {"k", "a"}."""
    a, log_k = np.polyfit(np.log(np.asarray(compute, float)), np.log(np.asarray(n_opt, float)), 1)
    return {"k": float(np.exp(log_k)), "a": float(a)}


def fit_sweep(records):
    """Per-budget parabolas and the power law across budgets from the runs' records."""
    per_budget = []
    for budget in sorted({r["budget"] for r in records}):
        runs = sorted((r for r in records if r["budget"] == budget), key=lambda r: r["params"])
        fit = fit_isoflop_minimum([r["params"] for r in runs], [r["val_loss"] for r in runs])
        per_budget.append({"budget": budget, **fit})
    usable = [f for f in per_budget if f["n_opt"] is not None and f["interior"]]
    law = None
    if len(usable) >= 2:
        law = fit_power_law([f["budget"] for f in usable], [f["n_opt"] for f in usable])
        law["budgets_used"] = [f["budget"] for f in usable]
    return {"per_budget": per_budget, "power_law": law}
