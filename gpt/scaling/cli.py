"""Scaling laws: count a model, plan a compute budget (Chinchilla), measure an IsoFLOP sweep.

The command line of `gpt.scaling`: the `count` and `plan` commands (formulas only, printed),
`sweep` from `gpt.scaling.sweep`, and the dispatch on the first argument. Each command's
options are `gpt.cli.Opt` tables grouped for `--help`.
"""


from gpt.cli import Opt, parse_command
from gpt.errors import UsageError
from gpt.flops import flops_per_token, param_counts
from gpt.model import PRESETS, GPTConfig
from gpt.scaling.laws import (APPROACH1_A, ASPECT_MAX, ASPECT_MIN, ASPECT_PREFERRED,
                              CHINCHILLA_ALPHA, CHINCHILLA_BETA, COUNT_TOLERANCE, GPU_PEAK_FLOPS,
                              HEAD_DIM, approach1, approach1_for_params, approach3,
                              chinchilla_loss, nearest_config, si, throughput,
                              tokens_per_param_rule, training_memory)
from gpt.scaling.sweep import SWEEP_OPTIONS, sweep

PROG = "python -m gpt.scaling"


def _bytes(n):
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"


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
    print(f"parameters: {p['total']:,} total ({si(p['total'])}), {p['non_embedding']:,} "
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
    print(f"training on D = {si(r['tokens'])} tokens{source}: {r['train_flops']:.3g} FLOPs")
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
        line = (f"{row['rule']:<26} {si(row['params']):>9} {si(row['tokens']):>9} "
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
              f"n_embd={c['n_embd']}: {si(row['config_params'])} params, "
              f"D = C/(6N) = {si(row['config_tokens'])} tokens, "
              f"loss {row['config_loss']:.3f}{note}")


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


def main(argv=None):
    command, cfg = parse_command(argv, {name: (doc, options)
                                        for name, (_, options, doc) in COMMANDS.items()},
                                 PROG, description=__doc__.split("\n\n")[0])
    return COMMANDS[command][0](cfg)
