"""Peak memory of the fused linear cross-entropy against F.cross_entropy(x @ W.T).

One forward + backward of each, at GPT-2 lm_head sizes by default (N=8192 tokens, C=768,
V=50304), weight without bias as in GPT-2's tied lm_head, ignore_index=-1 as the model uses:

    unfused:  F.cross_entropy((x @ W.T).float(), target)          (the logits materialised)
    fused:    gpt_kernels.fused_linear_cross_entropy(x, W, target)    (token chunks; the
              cross-entropy inside the Triton matmuls)

How the peak is measured:

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus what was
  allocated before the step (inputs), so both numbers are the step's own extra memory.
- CPU: torch has no allocator peak counter on CPU, so the step runs under
  ``torch.profiler.profile(profile_memory=True)`` and the peak is the maximum, over time, of the
  live bytes of the tensors torch allocated in the step (the running sum, in time order, of
  the size of every allocation and free the profiler records). Memory the Triton interpreter
  uses internally (numpy copies) is not a torch allocation and is not counted. The Triton
  kernels, the fused loss's matmuls included, run in the interpreter on CPU
  (TRITON_INTERPRET=1, set here before triton is imported), about 2 s per token row at
  V=50304 (N=512: 1,069 s on 2 shared cores, 2026-12-05), so the default CPU size is N=512.

Alongside the measurement the script prints the analytic size of the largest live buffers of
each path at the issue's size (8192 x 768 x 50304) for the chosen dtype.

Usage:  python -m bench.flce_memory [--device=cpu|cuda] [--n=N] [--c=C] [--v=V]
                                    [--dtype=float32|bfloat16|float16] [--out=result.json]
(``python bench/flce_memory.py ...`` works too; ``--help`` lists the options.)
"""

import importlib
import os
import sys
import time

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not torch.cuda.is_available():
    # the Triton kernels run on a CPU only in Triton's interpreter, which must be switched on
    # before triton is first imported (importing gpt or gpt_kernels does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench import common  # noqa: E402  (after the path fix above)
from gpt.cli import Opt, UsageError, parse, resolve_device, run_main  # noqa: E402

IGNORE_INDEX = -1
ISSUE_SIZE = (8192, 768, 50304)
from gpt.hardware import DTYPES  # noqa: E402


def unfused(x, w, target):
    return F.cross_entropy((x @ w.t()).float(), target, ignore_index=IGNORE_INDEX)


def fused(x, w, target):
    gpt_kernels = importlib.import_module("gpt_kernels")
    return gpt_kernels.fused_linear_cross_entropy(x, w, target, ignore_index=IGNORE_INDEX,
                                                  backend="triton")


def measure(name, fn, x, w, target):
    xl = x.detach().clone().requires_grad_(True)
    wl = w.detach().clone().requires_grad_(True)

    def step():
        loss = fn(xl, wl, target)
        loss.backward()
        return loss

    start = time.perf_counter()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        method = "torch.cuda.max_memory_allocated minus the inputs"
    else:
        box = {}
        peak = common.cpu_peak_bytes(lambda: box.setdefault("loss", step()))
        loss = box["loss"]
        method = ("torch.profiler (profile_memory=True): peak running sum of torch CPU "
                  "allocations and frees")
    seconds = time.perf_counter() - start
    return {"path": name, "peak_bytes": int(peak), "loss": float(loss.detach()), "seconds": seconds,
            "method": method}


def analytic(N, C, V, dtype):
    """Sizes of the largest buffers alive at once in each path (bytes)."""
    fused_mod = sys.modules["gpt_kernels.fused_linear_cross_entropy"]
    e = torch.empty((), dtype=dtype).element_size()
    rows = fused_mod.chunk_rows(N, V, C, e)
    unfused_bytes = {
        "logits (N, V) in dtype": N * V * e,
        "float32 logits (N, V) (the .float() cast; aliased when dtype is float32)":
            N * V * 4 if dtype != torch.float32 else 0,
        "float32 log-softmax saved for backward (N, V)": N * V * 4,
        "float32 grad of the logits in backward (N, V)": N * V * 4,
    }
    n_tiles = -(-V // fused_mod.STAT_N)
    fused_bytes = {  # the same on CUDA and in the interpreter: see the fused module's docstring
        f"chunk buffer ({rows}, V) in dtype: exp(logit - tile lse)": rows * V * e,
        f"float32 tile log-sum-exps ({rows}, {n_tiles})": rows * n_tiles * 4,
        "float32 grad_weight accumulator (V, C) (wgrad adds each chunk in: no temporary)":
            V * C * 4,
        "grad_x (N, C) in dtype": N * C * e,
        "backward: grad_weight scaled into a new tensor in the weight's dtype": V * C * e,
    }
    return {"N": N, "C": C, "V": V, "dtype": str(dtype).replace("torch.", ""),
            "chunk_rows": rows,
            "unfused_buffers": unfused_bytes, "unfused_total": sum(unfused_bytes.values()),
            "fused_buffers": fused_bytes, "fused_total": sum(fused_bytes.values())}


PROG = "python -m bench.flce_memory"
OPTIONS = {
    "size": dict(
        n=Opt(0, "tokens; 0: 8192 on CUDA, 512 on the CPU (the interpreter is slow)", ge=0),
        c=Opt(ISSUE_SIZE[1], "hidden size C", ge=1),
        v=Opt(ISSUE_SIZE[2], "vocabulary size V", ge=1),
        dtype=Opt("", "empty: bfloat16 on CUDA, float32 on the CPU", choices=("", *DTYPES)),
    ),
    "system": dict(
        device=Opt("auto", "auto (cuda if available), cpu, cuda, cuda:N"),
    ),
    "output": dict(
        out=Opt("", "also write the result as JSON here"),
    ),
}


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    device = torch.device(resolve_device(cfg["device"]))
    if cfg["out"] and not os.path.isdir(os.path.dirname(os.path.abspath(cfg["out"]))):
        raise UsageError(f"--out={cfg['out']}: its folder does not exist")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("--device=cpu runs the Triton kernels in Triton's interpreter: "
                         "start with TRITON_INTERPRET=1 in the environment")
    importlib.import_module("gpt_kernels")
    N = cfg["n"] or (ISSUE_SIZE[0] if device.type == "cuda" else 512)
    dtype = DTYPES[cfg["dtype"] or ("bfloat16" if device.type == "cuda" else "float32")]
    C, V = cfg["c"], cfg["v"]

    torch.manual_seed(0)
    x = torch.randn(N, C, device=device).to(dtype)
    w = (torch.randn(V, C, device=device) * 0.02).to(dtype)
    target = torch.randint(0, V, (N,), device=device)
    target[torch.rand(N, device=device) < 0.1] = IGNORE_INDEX

    results = [measure("unfused", unfused, x, w, target), measure("fused", fused, x, w, target)]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "measured": {"N": N, "C": C, "V": V, "dtype": str(dtype).replace("torch.", ""),
                     "results": results,
                     "saving": 1 - results[1]["peak_bytes"] / max(results[0]["peak_bytes"], 1)},
        "analytic_issue_size": analytic(*ISSUE_SIZE, dtype),
    }
    mib = 2 ** 20
    print(f"measured at N={N} C={C} V={V} {dtype} on {report['device']}:")
    for r in results:
        print(f"  {r['path']:8s} peak {r['peak_bytes'] / mib:10.1f} MiB   loss {r['loss']:.6f}"
              f"   {r['seconds']:.1f} s")
    print(f"  saving {100 * report['measured']['saving']:.1f}%  ({results[0]['method']})")
    a = report["analytic_issue_size"]
    print(f"analytic largest live buffers at N={a['N']} C={a['C']} V={a['V']} {a['dtype']}: "
          f"unfused {a['unfused_total'] / mib:.1f} MiB, fused {a['fused_total'] / mib:.1f} MiB "
          f"(chunk of {a['chunk_rows']} rows)")
    if cfg["out"]:
        common.write_json(cfg["out"], report)
    return report


if __name__ == "__main__":
    run_main(main, PROG)
