"""The time arithmetic of ``bench.gpu_check``, counted without a GPU.

    python -m bench.gpu_plan                         # compiles and autotune benchmarks per step
    python -m bench.gpu_plan --compile_s=1.0         # with another compile time per config

A Triton kernel compiles once per distinct binary (kernel x specialisation x config x
target) in a process, and an autotuned launch benchmarks every config it is offered once per
distinct autotune key. Both are counted here from the launches themselves: each benchmark
step's Triton launches run on fake CUDA tensors with the compile report's stand-in H100/H200
(``tools.compile_report.chips.stand_in_gpu``: sm_90, its shared memory and SM count), each
autotuned launch expanded into the configs its pruning offers on that chip, and each config
keyed as Triton keys its binaries (``tools.compile_report.triton_compile.spec_key``). What a
step costs is then

    compiles x seconds per compile  +  autotune benchmarks x seconds per benchmark
    +  measurements x seconds per measurement  +  process start and ceilings

with the seconds per compile measured with Triton's compiler for sm_90 (``--compile_s``; see
docs/gpu.md for where the default comes from) and the others estimates to be replaced by the
first GPU run (its results.json has every step's seconds).
"""

import importlib
import math
from collections import defaultdict

from gpt.cli import Opt, parse, run_main

PROG = "python -m bench.gpu_plan"
OPTIONS = {
    "costs": dict(
        compile_s=Opt(1.0, "seconds to compile one config for sm_90 (Triton 3.6, measured: "
                      "docs/gpu.md)", gt=0),
        autotune_s=Opt(0.15, "seconds per autotune benchmark (do_bench: 25 ms warm-up + "
                       "100 ms of runs, plus launch overhead; an estimate)", gt=0),
        measure_s=Opt(0.25, "seconds per timed measurement (warm-up 10 ms + 40 ms of runs, "
                      "plus one peak-memory run and the first call; an estimate)", gt=0),
        start_s=Opt(15.0, "seconds per step process: Python, torch and CUDA start, ceilings "
                    "(an estimate)", ge=0),
    ),
}
DESCRIPTION = __doc__.split("\n\n")[0]

TOKENS = 16384  # bench.kernels' attention batch: 16k tokens
TRAIN_B, TRAIN_T = 12, 1024  # bench.train's micro-batch


def _attention(B, H, T, D, backward=True):
    def run(torch):
        attention = importlib.import_module("gpt_kernels.attention")

        q, k, v = (torch.empty(B, H, T, D, dtype=torch.bfloat16, device="cuda") for _ in range(3))
        out, lse = attention.attention_forward(q, k, v, True, 1.0 / math.sqrt(D), 0.0, None)
        if backward:
            attention.attention_backward(torch.empty_like(out), q, k, v, out, lse, True,
                                         1.0 / math.sqrt(D), 0.0, None)
    return run


def _layer_norm(N, C, dtype="bfloat16"):
    def run(torch):
        layer_norm = importlib.import_module("gpt_kernels.layer_norm")

        dt = getattr(torch, dtype)
        x = torch.empty(N, C, dtype=dt, device="cuda")
        w, b = (torch.empty(C, dtype=dt, device="cuda") for _ in range(2))
        y, mean, rstd = layer_norm.layer_norm_forward(x, w, b, 1e-5)
        layer_norm.layer_norm_backward(torch.empty_like(y), x, w, b, mean, rstd)
    return run


def _linear_gelu(M, K):
    def run(torch):
        linear_gelu = importlib.import_module("gpt_kernels.linear_gelu")

        x = torch.empty(M, K, dtype=torch.bfloat16, device="cuda")
        w = torch.empty(4 * K, K, dtype=torch.bfloat16, device="cuda")
        b = torch.empty(4 * K, dtype=torch.bfloat16, device="cuda")
        y, h = linear_gelu.linear_gelu_forward(x, w, b, store_h=True)
        linear_gelu.linear_gelu_backward(torch.empty_like(y), h, x, w, True, True, True)
    return run


def _cross_entropy(N, V):
    def run(torch):
        cross_entropy = importlib.import_module("gpt_kernels.cross_entropy")

        logits = torch.empty(N, V, dtype=torch.bfloat16, device="cuda")
        target = torch.empty(N, dtype=torch.int64, device="cuda")
        dlogits = torch.empty_like(logits)
        cross_entropy.cross_entropy_forward(logits, target, -100, grad_out=dlogits)
        one = torch.empty(1, dtype=torch.float32, device="cuda")
        cross_entropy.cross_entropy_backward(dlogits, one, one)
    return run


def _flce(N, C, V):
    def run(torch):
        flce = importlib.import_module("gpt_kernels.fused_linear_cross_entropy")

        x = torch.empty(N, C, dtype=torch.bfloat16, device="cuda")
        w = torch.empty(V, C, dtype=torch.bfloat16, device="cuda")
        target = torch.empty(N, dtype=torch.int64, device="cuda")
        flce.flce_pass(x, w, None, target, -100, need_x=True, need_weight=True)
    return run


def step_launches():
    """{step: (list of launch-making functions, measurements the step times)} at the shapes
    ``bench.gpu_check`` runs: bench.train's GPT-2 small step (B=12, T=1024; LayerNorm on the
    float32 residual stream under autocast, the rest bf16), bench.kernels' attention cases
    (GPT-2 small/medium/XL heads, D=64, T=1k-8k, 16k tokens) and its --quick op shapes."""
    from bench import kernels
    from gpt.model import PRESETS

    C, H, T = PRESETS["gpt2"]["n_embd"], PRESETS["gpt2"]["n_head"], TRAIN_T
    N, V = TRAIN_B * T, kernels.VOCAB
    train = [_attention(TRAIN_B, H, T, C // H), _layer_norm(N, C, "float32"),
             _linear_gelu(N, C), _flce(N, C, V)]
    attention = [_attention(max(1, TOKENS // t), kernels.HIDDEN[size] // 64, t, 64)
                 for size in kernels.MODEL_SIZES for t in kernels.SEQ_LENS]
    ops = []
    tokens = kernels.TOKENS[1:2]  # --quick
    for size in kernels.MODEL_SIZES[:2]:
        for n in tokens:
            hid = kernels.HIDDEN[size]
            ops += [_layer_norm(n, hid), _linear_gelu(n, hid), _flce(n, hid, V)]
    ops += [_cross_entropy(n, V) for n in tokens]
    # measurements: train 4 paths; attention 12 shapes x 4 providers x 2 modes; ops 7 shapes
    # x 4 providers x 1 mode (Liger absent: 3)
    return {"train": (train, 4), "attention": (attention, len(attention) * 4 * 2),
            "ops": (ops, len(ops) * 4)}


def count(launch_fns):
    """(distinct compiles, autotune benchmarks) of running ``launch_fns`` in one process on a
    stand-in sm_90."""
    import torch

    from tools.compile_report.chips import TARGETS, stand_in_gpu
    from tools.compile_report.launches import launch_of, offered_configs
    from tools.compile_report.triton_compile import describe, jit_function, spec_key

    target = TARGETS["sm_90"]
    binaries, tuned = set(), defaultdict(int)
    for fn in launch_fns:
        with stand_in_gpu(target, "highest") as launches:
            fn(torch)
            recorded = [launch_of(k, a, kw) for k, _, a, kw in launches]
            expanded = [(launch, offered_configs(launch)) for launch in recorded]
        for launch, offered in expanded:
            descs = [describe(a) for a in launch.args]
            jit = jit_function(launch.kernel)
            for o in offered:
                binaries.add(spec_key(jit, descs, o["kwargs"], target.capability))
            keys = getattr(launch.kernel, "keys", None)
            if keys and len(offered) > 1:
                nargs = dict(zip(launch.kernel.arg_names, launch.args))
                value = tuple(str(nargs.get(k, launch.kwargs.get(k))) for k in keys)
                tuned[(launch.name, value)] = len(offered)
    return len(binaries), sum(tuned.values())


def plan(cfg):
    """{step: dict(compiles, autotune, measurements, seconds)} for the benchmark steps."""
    rows = {}
    for step, (fns, measurements) in step_launches().items():
        compiles, autotune = count(fns)
        seconds = (compiles * cfg["compile_s"] + autotune * cfg["autotune_s"]
                   + measurements * cfg["measure_s"] + cfg["start_s"])
        rows[step] = dict(compiles=compiles, autotune=autotune, measurements=measurements,
                          seconds=seconds)
    return rows


def run(cfg):
    rows = plan(cfg)
    print(f"per step, on a stand-in sm_90 (compile {cfg['compile_s']:g} s, autotune benchmark "
          f"{cfg['autotune_s']:g} s, measurement {cfg['measure_s']:g} s, start "
          f"{cfg['start_s']:g} s):\n")
    print("| step | Triton compiles | autotune benchmarks | measurements | estimated s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for step, r in rows.items():
        print(f"| {step} | {r['compiles']} | {r['autotune']} | {r['measurements']} | "
              f"{r['seconds']:.0f} |")
    return rows


def main(argv=None):
    return run(parse(argv, OPTIONS, prog=PROG, description=DESCRIPTION))


if __name__ == "__main__":
    run_main(main, PROG)
