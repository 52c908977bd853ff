"""Scaling laws: count a model, plan a compute budget (Chinchilla), measure an IsoFLOP sweep.

    python -m gpt.scaling count --preset=gpt2 --tokens=10e9 --hours=24 --gpu=A100
    python -m gpt.scaling plan --compute=1e21 --dataset_tokens=300e9
    python -m gpt.scaling plan --gpu_hours=1000 --gpu=H100 --mfu=0.4
    python -m gpt.scaling sweep --out_dir=out/scaling     # trains a CPU-sized IsoFLOP sweep

`count` gives a GPTConfig's parameters, training FLOPs per token, the memory of its weights,
gradients and AdamW state, and the throughput a run of D tokens in H hours needs. `plan`
turns a compute budget C into a model size N and a number of tokens D by the three rules of
Hoffmann et al. 2022 ("Chinchilla"), with the loss each is predicted to reach and the nearest
GPTConfig one can build. `sweep` measures the same thing on this machine: at each of several
budgets it trains models of several sizes for C / (6 N) tokens each with train.py, fits a
parabola of the final validation loss against log N per budget, and fits N_opt = k * C^a
across budgets. `python -m gpt.scaling <command> --help` lists each command's options.

Conventions. Chinchilla counts N as all parameters and C = 6 N D; `plan` follows it. The
sweep counts N as the model's non-embedding parameters (`GPT.num_params(non_embedding=True)`:
all but the position table; the token embedding stays because it is also the output layer),
because those are exactly the weights a token is multiplied by, so 6 N D is the sweep's real
matmul compute; Kaplan et al. 2020 leave out both embeddings, Chinchilla neither, and at a few
thousand parameters the choice moves the small models noticeably.
"""

import contextlib
import json
import math
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpt.cli import Opt, UsageError, parse, run_main
from gpt.files import atomic_path
from gpt.files import write_json as _write_json
from gpt.flops import flops_per_token, param_counts  # noqa: F401  (public here too)
from gpt.hardware import GPUS
from gpt.model import PRESETS, GPTConfig

PROG = "python -m gpt.scaling"

# Dense bf16 tensor-core peak FLOP/s from the vendors' datasheets (H100/H200: SXM), the same
# figures train.py uses for its MFU estimate (a test keeps the two tables equal).
GPU_PEAK_FLOPS = {name: gpu.bf16_flops for name, gpu in GPUS.items()}  # datasheet dense bf16

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2}


def _si(x):
    """1.23e9 -> '1.23B': counts of parameters and tokens."""
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _bytes(n):
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"


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


# ----------------------------------------------------------------------------- count

MODEL_OPTIONS = dict(
    preset=Opt("", f"a named size ({', '.join(PRESETS)}); empty: GPTConfig's defaults"),
    n_layer=Opt(0, "transformer blocks; 0: the preset's (GPTConfig: 12)", ge=0),
    n_head=Opt(0, "attention heads; 0: the preset's (GPTConfig: 12)", ge=0),
    n_embd=Opt(0, "width; 0: the preset's (GPTConfig: 768)", ge=0),
    vocab_size=Opt(0, "vocabulary; 0: the preset's (GPTConfig: 50304)", ge=0),
    block_size=Opt(0, "context length; 0: the preset's (GPTConfig: 1024)", ge=0),
    bias=Opt(True, "biases in Linears and LayerNorms (GPT-2: True; train.py's default: False)"),
)

HARDWARE_OPTIONS = dict(
    gpu=Opt("H100", "GPU whose dense bf16 peak to assume", choices=tuple(GPU_PEAK_FLOPS)),
    peak_flops=Opt(0.0, "peak FLOP/s of one accelerator; 0: --gpu's", ge=0),
    mfu=Opt(0.4, "assumed model FLOPs utilisation (achieved / peak)", gt=0, le=1),
)

COUNT_OPTIONS = {
    "model": MODEL_OPTIONS,
    "run": dict(
        tokens=Opt(0.0, "training tokens D; 0: Chinchilla-optimal for this size (Approach 1)",
                   ge=0),
        hours=Opt(0.0, "wall time to train them in (for the tokens/s needed); 0: skip", ge=0),
        seq_len=Opt(0, "sequence length for the attention FLOPs; 0: block_size", ge=0),
    ),
    "hardware": HARDWARE_OPTIONS,
}


def config_from_options(cfg):
    """The GPTConfig of --preset and the explicit --n_layer ... options (0: the preset's)."""
    if cfg["preset"] and cfg["preset"] not in PRESETS:
        raise UsageError(f"--preset={cfg['preset']!r} is not a preset; choose from "
                         f"{', '.join(PRESETS)}")
    fields = dict(PRESETS[cfg["preset"]]) if cfg["preset"] else {}
    fields.pop("dropout", None)  # changes no count
    for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
        if cfg[name]:
            fields[name] = cfg[name]
    fields["bias"] = cfg["bias"]
    merged = {**GPTConfig().to_dict(), **fields}
    if merged["n_embd"] % merged["n_head"]:
        raise UsageError(f"--n_embd={merged['n_embd']} must be divisible by "
                         f"--n_head={merged['n_head']}")
    return GPTConfig(**{**fields, "kernels": "torch"})


def peak_from_options(cfg):
    return cfg["peak_flops"] or GPU_PEAK_FLOPS[cfg["gpu"]]


def count(cfg):
    """The `count` command on parsed options: returns the figures as a dict and prints them."""
    model = config_from_options(cfg)
    params = param_counts(model)
    fpt = flops_per_token(model, cfg["seq_len"] or None)
    tokens = cfg["tokens"] or approach1_for_params(params["total"])[1]
    peak = peak_from_options(cfg)
    run = throughput(fpt["total"], tokens, peak, cfg["mfu"], cfg["hours"])
    result = {"config": model.to_dict(), "params": params, "flops_per_token": fpt,
              "memory_bytes": training_memory(params["total"]), "tokens": tokens,
              "peak_flops": peak, "mfu": cfg["mfu"], **run}
    print_count(result, cfg)
    return result


def print_count(r, cfg):
    c, p, f = r["config"], r["params"], r["flops_per_token"]
    T = cfg["seq_len"] or c["block_size"]
    print(f"GPTConfig: n_layer={c['n_layer']} n_head={c['n_head']} n_embd={c['n_embd']} "
          f"vocab_size={c['vocab_size']} block_size={c['block_size']} bias={c['bias']}")
    print(f"parameters: {p['total']:,} total ({_si(p['total'])}), {p['non_embedding']:,} "
          f"non-embedding (all but the {p['embedding_positions']:,} position embeddings; the "
          f"{p['embedding_tokens']:,} token embeddings are also the output layer)")
    print(f"training FLOPs per token at T={T} (PaLM's convention, as GPT.flops_per_token): "
          f"6N = {f['matmul']:.4g} + attention 12*L*T*C = {f['attention']:.4g} "
          f"-> {f['total']:.4g}")
    print("memory of weights / gradients / AdamW state (2 moments; activations not counted):")
    for dtype, m in r["memory_bytes"].items():
        print(f"  {dtype:<9} {_bytes(m['weights']):>11} {_bytes(m['gradients']):>11} "
              f"{_bytes(m['adamw']):>11}  = {_bytes(m['total'])}")
    print("  (train.py's autocast keeps float32 parameters, gradients and AdamW state)")
    source = "" if cfg["tokens"] else " (Chinchilla-optimal for this size, Approach 1)"
    where = f"peak {r['peak_flops']:.3g} FLOP/s" + ("" if cfg["peak_flops"] else f" ({cfg['gpu']})")
    print(f"training on D = {_si(r['tokens'])} tokens{source}: {r['train_flops']:.3g} FLOPs")
    print(f"  one GPU at {where}, MFU {r['mfu']:.0%}: {r['tokens_per_sec_per_gpu']:,.0f} "
          f"tokens/s -> {r['gpu_hours']:,.1f} GPU-hours")
    if cfg["hours"]:
        print(f"  to finish in {cfg['hours']:g} h: {r['tokens_per_sec_needed']:,.0f} tokens/s "
              f"= {r['flops_per_sec_needed']:.3g} FLOP/s = {r['gpus_needed']:.2f} such GPUs at "
              f"MFU {r['mfu']:.0%} (one GPU would need MFU {r['mfu_needed_one_gpu']:.1%})")


# ----------------------------------------------------------------------------- plan

PLAN_OPTIONS = {
    "budget": dict(
        compute=Opt(0.0, "training compute C in FLOPs (C = 6 N D); 0: from --gpu_hours"),
        gpu_hours=Opt(0.0, "GPU-hours at --mfu of --gpu's peak, instead of --compute"),
        **HARDWARE_OPTIONS,
    ),
    "rules": dict(
        tokens_per_param=Opt(20.0, "the rule of thumb's tokens per parameter", gt=0),
        dataset_tokens=Opt(0.0, "tokens in your dataset, to show epochs; 0: skip", ge=0),
    ),
    "model": dict(
        vocab_size=Opt(50304, "vocabulary of the GPTConfig built", ge=1),
        block_size=Opt(1024, "context length of the GPTConfig built", ge=1),
        bias=Opt(False, "biases in the GPTConfig built (train.py's default: False)"),
    ),
}


def plan(cfg):
    """The `plan` command: Approach 1, Approach 3 and the tokens-per-parameter rule side by
    side for one budget, each with its predicted loss and nearest buildable GPTConfig."""
    if cfg["compute"] and cfg["gpu_hours"]:
        raise UsageError("give --compute or --gpu_hours, not both")
    if cfg["compute"] < 0 or cfg["gpu_hours"] < 0 or not (cfg["compute"] or cfg["gpu_hours"]):
        name = "--gpu_hours" if cfg["gpu_hours"] else "--compute"
        raise UsageError(f"{name} must be > 0 (a budget: --compute=<FLOPs>, e.g. 1e21, or "
                         f"--gpu_hours=<hours> with --gpu and --mfu)")
    peak = peak_from_options(cfg)
    compute = cfg["compute"] or cfg["gpu_hours"] * 3600 * peak * cfg["mfu"]
    rules = {
        f"Approach 1 (N ~ C^{APPROACH1_A})": approach1(compute),
        f"Approach 3 (N ~ C^{CHINCHILLA_BETA / (CHINCHILLA_ALPHA + CHINCHILLA_BETA):.3f})":
            approach3(compute),
        f"{cfg['tokens_per_param']:g} tokens/parameter": tokens_per_param_rule(
            compute, cfg["tokens_per_param"]),
    }
    rows = []
    for name, (n, d) in rules.items():
        model = nearest_config(n, cfg["vocab_size"], cfg["block_size"], cfg["bias"])
        n_real = param_counts(model)["total"]
        d_real = compute / (6 * n_real)
        rows.append({"rule": name, "params": n, "tokens": d, "tokens_per_param": d / n,
                     "loss": chinchilla_loss(n, d),
                     "epochs": d / cfg["dataset_tokens"] if cfg["dataset_tokens"] else None,
                     "config": {k: v for k, v in model.to_dict().items()
                                if k not in ("dropout", "kernels")},
                     "config_params": n_real, "config_tokens": d_real,
                     "config_loss": chinchilla_loss(n_real, d_real)})
    result = {"compute": compute, "peak_flops": peak, "mfu": cfg["mfu"],
              "gpu_hours": compute / (peak * cfg["mfu"]) / 3600, "rows": rows}
    print_plan(result, cfg)
    return result


def print_plan(r, cfg):
    where = f"{cfg['gpu']}" if not cfg["peak_flops"] else f"{r['peak_flops']:.3g} FLOP/s"
    print(f"compute C = {r['compute']:.3g} FLOPs = {r['gpu_hours']:,.1f} GPU-hours on {where} "
          f"at MFU {r['mfu']:.0%}")
    epochs = cfg["dataset_tokens"] > 0
    head = f"{'rule':<26} {'params N':>9} {'tokens D':>9} {'D/N':>6} {'loss':>6}"
    print(head + (f" {'epochs':>7}" if epochs else ""))
    for row in r["rows"]:
        line = (f"{row['rule']:<26} {_si(row['params']):>9} {_si(row['tokens']):>9} "
                f"{row['tokens_per_param']:>6.1f} {row['loss']:>6.3f}")
        print(line + (f" {row['epochs']:>7.2f}" if epochs else ""))
    print("loss: Approach 3's L(N, D) = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28 (nats per token "
          "on Chinchilla's MassiveText, not on your data)")
    print(f"nearest buildable GPTConfig (head dim {HEAD_DIM}, width a multiple of {HEAD_DIM}, "
          f"n_embd / n_layer in [{ASPECT_MIN}, {ASPECT_MAX}], nearest {ASPECT_PREFERRED} within "
          f"{COUNT_TOLERANCE:.0%} of N; N counts all parameters, "
          f"vocab_size={cfg['vocab_size']}, block_size={cfg['block_size']}):")
    for row in r["rows"]:
        c = row["config"]
        note = ("  (the smallest buildable; the budget wants less)"
                if row["config_params"] > 1.5 * row["params"] else "")
        print(f"  {row['rule']:<26} n_layer={c['n_layer']} n_head={c['n_head']} "
              f"n_embd={c['n_embd']}: {_si(row['config_params'])} params, "
              f"D = C/(6N) = {_si(row['config_tokens'])} tokens, "
              f"loss {row['config_loss']:.3f}{note}")


# ----------------------------------------------------------------------------- sweep

# The CPU-sized default, character-level Shakespeare: three budgets over a decade, two-layer
# models (one shape family: only the width changes) from 2.2K to 229K non-embedding parameters,
# five sizes per budget. Pilot runs put the optimum of such tiny models at a few hundred to a
# thousand tokens per parameter (Chinchilla's 20 is for subword tokens and far bigger models),
# hence the default centre of 300, and found batches of 16 x 64 tokens better than 32 x 64 at
# these budgets. Its 15 runs took 16 minutes of CPU time (one thread) on this project's shared
# 2-core machine; docs/scaling.md has the measured times and a fourth budget.
DEFAULT_BUDGETS = "5e10,1.5e11,5e11"
DEFAULT_SIZES = "2x8,2x16,2x24,2x32,2x40,2x48,2x64,2x96"

SWEEP_OPTIONS = {
    "sweep": dict(
        out_dir=Opt("out/scaling", "results: runs/ (a folder and a JSON record per run), "
                    "sweep.json, scaling.png"),
        budgets=Opt(DEFAULT_BUDGETS, "compute budgets C = 6 N D in FLOPs, comma-separated"),
        sizes=Opt(DEFAULT_SIZES, "model sizes as n_layer x n_embd, comma-separated"),
        head_dim=Opt(8, "width of each attention head: n_head = n_embd / head_dim", ge=1),
        per_budget=Opt(5, "sizes trained at each budget: those nearest the centre below",
                       ge=3),
        tokens_per_param=Opt(300.0, "centre of each budget's sizes: N = sqrt(C / (6 * this)) "
                             "(Chinchilla: 20; tiny char-level models: far more)", gt=0),
        min_iters=Opt(50, "a size is not trained at a budget that gives it fewer optimizer "
                      "steps", ge=1),
        eval_tokens=Opt(65536, "validation tokens behind each final loss (the same evenly "
                        "spaced windows for every run)", ge=1),
        keep_checkpoints=Opt(False, "keep each run's ckpt.pt (deleted once evaluated)"),
        progress=Opt(True, "a progress bar over the runs (only when stderr is a terminal)"),
    ),
    "training": dict(
        dataset=Opt("shakespeare_char", "as train.py's --dataset (a named dataset or a text "
                    "file / folder)"),
        tokenizer=Opt("", "char | bpe | gpt2; empty: the dataset's default",
                      choices=("", "char", "bpe", "gpt2")),
        data_dir=Opt("data", "prepared token files (shared by every run, and with train.py)"),
        batch_size=Opt(16, "sequences per optimizer step", ge=1),
        block_size=Opt(64, "context length in tokens", ge=1),
        learning_rate=Opt(2e-3, "peak learning rate of every run (cosine to a tenth of it at "
                          "the end of the run's own budget)", gt=0),
        warmup_frac=Opt(0.05, "linear warmup as a fraction of each run's steps", ge=0, lt=1),
        weight_decay=Opt(0.1, "AdamW weight decay", ge=0),
        device=Opt("auto", "auto (cuda if available), cpu, cuda, cuda:N"),
        kernels=Opt("torch", "the model's ops (torch: the PyTorch references)",
                    choices=("auto", "triton", "torch")),
        seed=Opt(1337, "random seed (the same for every run)"),
        threads=Opt(1, "CPU threads for torch; 0: torch's default (one per core). Models this "
                    "small gain little from a second thread, and on a busy machine its "
                    "spin-waits make steps many times slower", ge=0),
    ),
}

# the trainer settings that make two runs the same run (a record is reused only if they match)
RUN_KEYS = ("dataset", "tokenizer", "batch_size", "block_size", "n_layer", "n_head", "n_embd",
            "dropout", "bias", "kernels", "learning_rate", "max_iters", "weight_decay",
            "warmup_iters", "lr_decay_iters", "min_lr", "seed", "dtype")


def _parse_budgets(text):
    budgets = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--budgets expects FLOPs like 3e11,1e12; "
                             f"got {item.strip()!r}") from None
        if not value > 0 or math.isinf(value):
            raise UsageError(f"--budgets must be > 0 FLOPs each; got {item.strip()}")
        budgets.append(value)
    budgets = sorted(set(budgets))
    if len(budgets) < 2:
        raise UsageError(f"--budgets needs at least 2 budgets to fit N_opt ~ C^a (3 or more "
                         f"for a trustworthy exponent); got {text!r}")
    return budgets


def _parse_sizes(text, head_dim):
    sizes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if not match or not all(int(g) > 0 for g in match.groups()):
            raise UsageError(f"--sizes expects n_layer x n_embd pairs like 2x64,4x128; "
                             f"got {item.strip()!r}")
        n_layer, n_embd = map(int, match.groups())
        if n_embd % head_dim:
            raise UsageError(f"--sizes: n_embd={n_embd} of {item.strip()} is not a multiple "
                             f"of --head_dim={head_dim}")
        sizes.append((n_layer, n_embd))
    if len(set(sizes)) < 3:
        raise UsageError(f"--sizes needs at least 3 sizes (a parabola per budget); got {text!r}")
    return sorted(set(sizes))


def plan_runs(cfg, budgets, sizes, vocab_size):
    """The runs of the sweep: at each budget, the --per_budget sizes nearest (in log N) to
    N = sqrt(C / (6 * tokens_per_param)) among those that get >= --min_iters steps."""
    tokens_per_iter = cfg["batch_size"] * cfg["block_size"]
    runs = []
    for budget in budgets:
        fits = []
        for n_layer, n_embd in sizes:
            model = GPTConfig(n_layer=n_layer, n_head=n_embd // cfg["head_dim"], n_embd=n_embd,
                              vocab_size=vocab_size, block_size=cfg["block_size"], bias=False)
            counts = param_counts(model)
            iters = round(budget / (6 * counts["non_embedding"]) / tokens_per_iter)
            fits.append(dict(budget=budget, n_layer=n_layer, n_head=model.n_head, n_embd=n_embd,
                             params=counts["non_embedding"], params_total=counts["total"],
                             iters=iters, tokens=iters * tokens_per_iter,
                             name=f"{budget:.2e}".replace("+", "") + f"-{n_layer}x{n_embd}"))
        ok = [r for r in fits if r["iters"] >= cfg["min_iters"]]
        if len(ok) < 3:
            smallest = min(fits, key=lambda r: r["params"])
            what = f"only {len(ok)} of --sizes get" if ok else "none of --sizes gets"
            raise UsageError(
                f"--budgets: {budget:.3g} FLOPs is too small: {what} --min_iters="
                f"{cfg['min_iters']} steps of {tokens_per_iter} tokens (the smallest, "
                f"{smallest['n_layer']}x{smallest['n_embd']}, gets {smallest['iters']}); a "
                f"parabola needs 3 sizes: raise the budget, add smaller sizes or lower --min_iters")
        centre = math.sqrt(budget / (6 * cfg["tokens_per_param"]))
        ok.sort(key=lambda r: abs(math.log(r["params"] / centre)))
        runs += sorted(ok[:cfg["per_budget"]], key=lambda r: r["params"])
    return runs


def trainer_config(cfg, run, run_dir):
    """train.py's config for one run: its own budget of steps, warmup + cosine to its end,
    one evaluation batch at the start and the end (the sweep evaluates the checkpoint itself)."""
    import train

    iters = run["iters"]
    return {**train.DEFAULTS,
            "dataset": cfg["dataset"], "tokenizer": cfg["tokenizer"], "data_dir": cfg["data_dir"],
            "out_dir": str(run_dir), "batch_size": cfg["batch_size"],
            "block_size": cfg["block_size"], "gradient_accumulation_steps": 1,
            "n_layer": run["n_layer"], "n_head": run["n_head"], "n_embd": run["n_embd"],
            "dropout": 0.0, "bias": False, "kernels": cfg["kernels"],
            "learning_rate": cfg["learning_rate"], "max_iters": iters,
            "weight_decay": cfg["weight_decay"], "decay_lr": True,
            "warmup_iters": round(cfg["warmup_frac"] * iters), "lr_decay_iters": iters,
            "min_lr": cfg["learning_rate"] / 10, "eval_interval": iters, "eval_iters": 1,
            "log_interval": max(1, iters // 20), "always_save_checkpoint": True,
            "init_from": "scratch", "num_samples": 0, "device": cfg["device"], "dtype": "auto",
            "compile": False, "seed": cfg["seed"], "progress": False}


def evaluate(run_dir, data_dir, block_size, eval_tokens, device, batch=64):
    """Mean validation loss of run_dir's checkpoint over eval_tokens // block_size windows
    evenly spaced over the val split: the same tokens for every run, so sizes compare paired."""
    import torch

    from gpt.data import TokenDataset
    from gpt.sample import load_checkpoint

    model, _ = load_checkpoint(run_dir, device=device)  # in eval mode, dropout 0
    val = TokenDataset(data_dir, "val")
    n = max(1, min(eval_tokens // block_size, len(val) - block_size))
    starts = np.linspace(0, len(val) - block_size - 1, n).round().astype(np.int64)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            rows = starts[i:i + batch, None] + np.arange(block_size + 1)
            buf = torch.from_numpy(val.data[rows].astype(np.int64)).to(device)
            _, loss = model(buf[:, :-1], buf[:, 1:])
            total += loss.item() * len(rows)  # each window has block_size targets
    return total / n, n * block_size


def write_json(path, obj):
    """Write to a temporary name and rename: a record is complete or absent."""
    _write_json(path, obj)


def run_one(cfg, run, out_dir, device):
    """Train one (budget, size) run, evaluate it, write its record; return the record."""
    import torch

    import train
    from gpt.data import TokenDataset

    run_dir = out_dir / "runs" / run["name"]
    tcfg = trainer_config(cfg, run, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    load_before, t0, cpu0 = os.getloadavg(), time.time(), time.process_time()
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log):
        summary = train.train(tcfg)  # its log lines go to train.log, not over the progress bar
    train_s = time.time() - t0
    val_loss, eval_tokens = evaluate(run_dir, summary["data_dir"], cfg["block_size"],
                                     cfg["eval_tokens"], device)
    if not cfg["keep_checkpoints"]:
        (run_dir / "ckpt.pt").unlink()
    train_tokens = len(TokenDataset(summary["data_dir"], "train"))
    record = {**run, "val_loss": val_loss, "eval_tokens": eval_tokens,
              "eval_tokens_requested": cfg["eval_tokens"],
              "compute": 6 * run["params"] * run["tokens"],
              "compute_with_attention": run["tokens"] * (
                  6 * run["params"] + 12 * run["n_layer"] * cfg["block_size"] * run["n_embd"]),
              "tokens_per_param": run["tokens"] / run["params"],
              "epochs": run["tokens"] / train_tokens, "train_s": train_s,
              "wall_s": time.time() - t0, "cpu_s": time.process_time() - cpu0,
              "threads": torch.get_num_threads(), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "train_config": {k: v for k, v in tcfg.items() if k != "progress"}}
    write_json(out_dir / "runs" / f"{run['name']}.json", record)
    return record


def _check_records(runs, out_dir, cfg):
    """Runs already recorded with the same trainer settings are done; a record with other
    settings under the same name is a UsageError (reusing it would mix two sweeps)."""
    done = {}
    for run in runs:
        path = out_dir / "runs" / f"{run['name']}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        wanted = trainer_config(cfg, run, out_dir)
        diff = [k for k in RUN_KEYS if record["train_config"].get(k) != wanted[k]]
        if record.get("eval_tokens_requested") != cfg["eval_tokens"]:
            diff.append("eval_tokens")
        if diff:
            shown = ", ".join(f"--{k}" for k in diff)
            raise UsageError(f"--out_dir={out_dir} holds run {run['name']} made with other "
                             f"settings ({shown} differ); use another --out_dir")
        done[run["name"]] = record
    return done


def _machine(device):
    import subprocess

    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parent,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu"
    return {"device": name, "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit}


def sweep(cfg):
    """The `sweep` command: plan, train what is not done yet, fit, plot; returns sweep.json's
    content. Every user mistake is raised before a run starts."""
    import torch

    import train

    budgets = _parse_budgets(cfg["budgets"])
    sizes = _parse_sizes(cfg["sizes"], cfg["head_dim"])
    out_dir = Path(cfg["out_dir"])
    probe = dict(name="probe", n_layer=sizes[0][0], n_head=sizes[0][1] // cfg["head_dim"],
                 n_embd=sizes[0][1], iters=cfg["min_iters"])
    train.check_config(trainer_config(cfg, probe, out_dir / "runs" / "probe"))
    device = train.resolve_device_and_dtype(trainer_config(cfg, probe, out_dir))[0]
    plan_runs(cfg, budgets, sizes, vocab_size=1)  # budgets too small, before writing anything
    data_dir = train.prepare_data(trainer_config(cfg, probe, out_dir))  # a cache, shared
    from gpt.data import load_meta

    vocab_size = load_meta(data_dir)["vocab_size"]
    runs = plan_runs(cfg, budgets, sizes, vocab_size)
    done = _check_records(runs, out_dir, cfg)
    print_sweep_plan(runs, done, data_dir, vocab_size, cfg)

    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time()
    todo = [r for r in runs if r["name"] not in done]
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        records = _train_runs(cfg, runs, todo, done, out_dir, device)
    finally:
        torch.set_num_threads(threads)  # a library caller keeps its own setting

    ordered = [records[r["name"]] for r in runs]
    fit = fit_sweep(ordered)
    wall = time.time() - t0
    previous = out_dir / "sweep.json"  # a resumed sweep keeps the times of the earlier calls
    history = json.loads(previous.read_text()).get("invocations", []) if previous.is_file() else []
    result = {"settings": cfg, "machine": _machine(device), "vocab_size": vocab_size,
              "data_dir": str(data_dir), "started": started, "wall_s": wall,
              "runs_trained_now": len(todo),
              "invocations": history + [{"started": started, "wall_s": wall,
                                         "runs_trained": len(todo)}],
              "runs_wall_s_sum": sum(r["wall_s"] for r in ordered),
              "runs_cpu_s_sum": sum(r["cpu_s"] for r in ordered),
              "param_count": "non-embedding (GPT.num_params(non_embedding=True))",
              "runs": ordered, "fit": fit}
    plot_sweep(ordered, fit, out_dir / "scaling.png")
    write_json(out_dir / "sweep.json", result)
    print_sweep_fit(fit, out_dir)
    return result


def _train_runs(cfg, runs, todo, done, out_dir, device):
    """Train the runs not done yet, in order, under a progress bar; {name: record} of all."""
    bar = None
    if cfg["progress"] and todo and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), initial=len(done), unit="run", dynamic_ncols=True)
    write = bar.write if bar is not None else print
    records = dict(done)
    for run in todo:
        if bar is not None:
            bar.set_postfix_str(f"{run['name']}: {run['iters']} steps")
        record = run_one(cfg, run, out_dir, device)
        records[run["name"]] = record
        write(f"{run['name']}: N={_si(run['params'])}, {run['iters']} steps, "
              f"{_si(run['tokens'])} tokens ({record['tokens_per_param']:.1f}/param): "
              f"val loss {record['val_loss']:.4f} ({record['wall_s']:.0f} s, CPU "
              f"{record['cpu_s']:.0f} s, load "
              f"{record['loadavg_before'][0]:.1f} -> {record['loadavg_after'][0]:.1f})")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return records


def print_sweep_plan(runs, done, data_dir, vocab_size, cfg):
    print(f"data: {data_dir} (vocab {vocab_size}); {cfg['batch_size']} x {cfg['block_size']} "
          f"tokens per step; N counts non-embedding parameters")
    print(f"{'run':<18} {'N':>7} {'steps':>6} {'tokens':>7} {'D/N':>7}  status")
    for run in runs:
        status = f"done, val loss {done[run['name']]['val_loss']:.4f}" if run["name"] in done \
            else "to train"
        print(f"{run['name']:<18} {_si(run['params']):>7} {run['iters']:>6} "
              f"{_si(run['tokens']):>7} {run['tokens'] / run['params']:>7.1f}  {status}")


def print_sweep_fit(fit, out_dir):
    for f in fit["per_budget"]:
        if f["n_opt"] is None:
            print(f"C = {f['budget']:.3g}: the parabola has no minimum (loss falls or rises "
                  f"across all sizes): no N_opt")
        else:
            where = "" if f["interior"] else " (outside the sizes trained: not used in the fit)"
            print(f"C = {f['budget']:.3g}: N_opt = {_si(f['n_opt'])}, loss {f['loss_opt']:.4f}"
                  f"{where}")
    law = fit["power_law"]
    if law is None:
        print("N_opt ~ C^a: fewer than 2 budgets have a minimum inside their sizes; no exponent")
    else:
        print(f"N_opt = {law['k']:.3g} * C^{law['a']:.3f} over {len(law['budgets_used'])} "
              f"budgets (D_opt ~ C^{1 - law['a']:.3f}); Chinchilla (Approach 1): a = 0.50")
    print(f"results: {out_dir / 'sweep.json'}, {out_dir / 'scaling.png'}")


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
    left.set_xticks(sizes, [_si(n) for n in sizes], fontsize=8)  # the sizes trained
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


# ----------------------------------------------------------------------------- CLI

COMMANDS = {
    "count": (count, COUNT_OPTIONS, "Parameters, FLOPs per token, training memory and the "
              "throughput a run needs, for a preset or any GPTConfig."),
    "plan": (plan, PLAN_OPTIONS, "Compute-optimal parameters and tokens for a budget by "
             "Chinchilla's Approach 1, Approach 3 and the tokens-per-parameter rule, with "
             "the predicted loss and the nearest buildable GPTConfig."),
    "sweep": (sweep, SWEEP_OPTIONS, "An IsoFLOP sweep that trains: per budget, several sizes "
              "for C / (6N) tokens each; a parabola of loss vs log N per budget; "
              "N_opt = k C^a across budgets. Resumable: finished runs are skipped."),
}


def usage():
    lines = [f"usage: {PROG} <command> [--name=value ...]", "", __doc__.split("\n\n")[0], "",
             "commands:"]
    lines += [f"  {name:<6} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    lines += ["", f"`{PROG} <command> --help` lists the command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            raise UsageError("a command is needed: count, plan or sweep (see --help)")
        print(usage())
        return None
    command = argv[0]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; choose count, plan or sweep")
    fn, options, doc = COMMANDS[command]
    return fn(parse(argv[1:], options, prog=f"{PROG} {command}", description=doc))


if __name__ == "__main__":
    run_main(main, PROG)
