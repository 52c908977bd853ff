"""Where a training step's time goes: one GPT-2 step per path under PyTorch's profiler.

    python -m bench.profile                                  # triton and torch paths, GPT-2 124M
    python -m bench.profile --paths=triton --top=40 --out=prof.json
    python -m bench.profile --smoke=True                     # CPU, tiny model: checks the code

The step is ``bench.train``'s (bf16 autocast, B x T tokens, clipping, fused AdamW). After
``--warmup`` steps (compilation and autotuning stay out), ``--steps`` steps run under
``torch.profiler``; the device time of every kernel is summed by name and each kernel is put
in a group (attention, matmul, layer norm, linear+GELU, cross-entropy, optimizer, other), so
the table says which op to work on first. Times are per step. Writes a JSON with the groups and
the ``--top`` kernels of each path when ``--out`` is given.
"""

import re

import torch
from torch.profiler import ProfilerActivity, profile

from bench import common
from bench.train import PATHS, Bench
from gpt.cli import Opt, UsageError, parse, run_main
from gpt.model import PRESETS

PROG = "python -m bench.profile"
OPTIONS = {
    "model": dict(
        paths=Opt(("triton", "torch"), "comma-separated paths, or all", choices=PATHS),
        preset=Opt("gpt2", "model size (a gpt.model preset)"),
        block_size=Opt(1024, "sequence length", ge=1),
        batch_size=Opt(8, "micro-batch", ge=1),
    ),
    "profile": dict(
        warmup=Opt(3, "untimed steps first (compilation, autotuning)", ge=0),
        steps=Opt(2, "profiled steps (times are divided by this)", ge=1),
        top=Opt(25, "kernels listed per path", ge=1),
        smoke=Opt(False, "CPU, tiny model: checks the code, times nothing meaningful"),
    ),
    "output": dict(out=Opt("", "JSON with the groups and top kernels; empty: print only")),
}

# kernel-name patterns -> group, first match wins (Triton kernels carry their function's name)
GROUPS = (
    ("attention", r"attn|flash|sdpa|fmha"),
    ("layer norm", r"layer_norm|layernorm|gammabeta"),
    ("linear+gelu", r"linear_gelu|gelu"),
    # the eager path's only softmax kernels are F.cross_entropy's (SDPA's are cuDNN's)
    ("cross-entropy", r"cross_entropy|softmax|nll"),
    ("optimizer", r"adam|multi_tensor|foreach|norm_kernel|clip"),
    ("matmul", r"gemm|sm90_|sm80_|cutlass|ampere|hopper|nvjet|matmul|_mm_|addmm"),
)


def group_of(name):
    low = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, low):
            return group
    return "other"


def profile_path(path, cfg, mcfg, device):
    bench = Bench(path, mcfg, device, cfg["smoke"])
    x, y = bench.batch(cfg["batch_size"])
    for _ in range(cfg["warmup"]):
        bench.step(x, y)
    common.sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(cfg["steps"]):
            bench.step(x, y)
        common.sync(device)
    kernels = {}
    for ev in prof.events():
        if device == "cuda":
            if ev.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = ev.device_time
        else:  # CPU smoke: top-level aten ops stand in for kernels
            if not ev.name.startswith("aten::") or ev.cpu_parent is not None:
                continue
            us = ev.cpu_time
        k = kernels.setdefault(ev.name, dict(name=ev.name, group=group_of(ev.name), us=0.0,
                                              calls=0))
        k["us"] += us / cfg["steps"]
        k["calls"] += 1 / cfg["steps"]
    total = sum(k["us"] for k in kernels.values())
    groups = {}
    for k in kernels.values():
        g = groups.setdefault(k["group"], dict(group=k["group"], us=0.0, calls=0.0))
        g["us"] += k["us"]
        g["calls"] += k["calls"]
    ranked = sorted(kernels.values(), key=lambda k: -k["us"])
    return dict(path=path, total_ms=total / 1e3,
                groups=sorted(groups.values(), key=lambda g: -g["us"]),
                kernels=ranked[: cfg["top"]])


def print_profile(rec):
    print(f"\npath {rec['path']}: {rec['total_ms']:.2f} ms of device time per step")
    print(f"  {'group':<14} {'ms':>8} {'share':>6} {'launches':>9}")
    for g in rec["groups"]:
        print(f"  {g['group']:<14} {g['us'] / 1e3:8.2f} {g['us'] / 1e3 / rec['total_ms']:6.1%} "
              f"{g['calls']:9.0f}")
    print(f"  {'kernel':<70} {'ms':>8} {'calls':>6}")
    for k in rec["kernels"]:
        print(f"  {k['name'][:70]:<70} {k['us'] / 1e3:8.3f} {k['calls']:6.0f}")


def run(cfg):
    if cfg["preset"] not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}; got {cfg['preset']!r}")
    device = common.check_can_time(cfg["smoke"], "profile")
    mcfg = dict(PRESETS["tiny" if cfg["smoke"] else cfg["preset"]])
    mcfg.update(vocab_size=512 if cfg["smoke"] else 50304,
                block_size=32 if cfg["smoke"] else cfg["block_size"], dropout=0.0)
    records = []
    for path in cfg["paths"]:
        rec = profile_path(path, cfg, mcfg, device)
        print_profile(rec)
        records.append(rec)
        if cfg["out"]:
            meta = common.metadata(device, cfg["smoke"])
            common.write_json(cfg["out"], dict(meta=meta, config=cfg, paths=records))
    return records


def main(argv=None):
    return run(parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    run_main(main, PROG)
