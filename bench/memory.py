"""Memory of one GPT training step, exactly and without a GPU: fake tensors + PyTorch's MemTracker.

One file although over 500 lines: one command's meter, its check against real CPU
allocations and its report, a section each, sharing the step they all run.

    python -m bench.memory                              # gpt2, micro-batch 8, T=1024, bf16, every path
    python -m bench.memory --preset=gpt2-xl --batch_size=1
    python -m bench.memory --preset=custom --n_layer=24 --n_head=16 --n_embd=1024
    python -m bench.memory --validate=True              # the meter against real CPU allocations

A step is what ``train.py`` does: forward and loss under autocast, backward, fused AdamW step,
``zero_grad(set_to_none=True)``. It runs on fake tensors (``FakeTensorMode``: shapes, dtypes
and strides, no data), so GPT-2 XL at batch 64 takes seconds on a laptop, and every
allocation is sized exactly as on a GPU: memory is allocation sizes, the same on any device.
``torch.distributed._tools.mem_tracker.MemTracker`` (PyTorch's tracker, built for this)
records each tensor's storage as it is created and freed, and its kind: parameters,
gradients, optimizer state, activations (forward), temporaries (backward). The step runs
twice and the second is metered: the first creates AdamW's state, as a real run's first
step does, and the steady state is what must fit.

Paths (``--paths``):

- ``triton``: ``GPT(kernels="triton")``. Our ops are ``torch.library`` operators whose fake
  implementation is the launcher itself with its kernel launches skipped; the meter calls
  those launchers op by op under the tracker (``KernelMemTracker``), so the buffers a
  launcher allocates and frees inside an op (the fused cross-entropy's chunk buffer, its
  float32 gradient accumulators, LayerNorm's partial sums) are counted, not only the outputs.
- ``torch``: ``GPT(kernels="torch")``, the plain-PyTorch references as PyTorch's eager path
  runs them, attention through ``scaled_dot_product_attention`` forced to the flash backend
  (it saves q, k, v, the output and the log-sum-exp; the math fallback that stores T x T
  scores is not the baseline).
- ``nanogpt``: the torch path with nanoGPT's loss head: the full (B, T, V) logits from
  ``lm_head`` and ``F.cross_entropy`` on them.

The fake tensors are CPU tensors under CPU autocast. For the ops this model calls, CPU and
CUDA autocast agree (checked with torch 2.13): matmuls and SDPA run in the autocast dtype,
``cross_entropy`` in float32; LayerNorm sees the float32 residual stream either way; GELU
keeps its input's dtype. SDPA's CPU flash kernel saves the same tensors as the CUDA one
(output, float32 log-sum-exp).

What the figures include: every tensor a step allocates through PyTorch. What they exclude:
the CUDA context (~0.5 GiB), the caching allocator's rounding and fragmentation, cuBLAS and
cuDNN workspaces, and buffers a fused kernel allocates inside itself (FlashAttention's
float32 dQ accumulator in backward). Read them as the floor a GPU needs, not the ceiling.

``--validate=True`` checks the meter against reality at a small size on this CPU: the same
step with real tensors (the Triton kernels through the interpreter), its peak taken from the
profiler's record of every CPU allocation and free, against the meter's peak of that step.
"""

import re
import time
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import cpu_peak_bytes, unique_path, write_json
from gpt.cli import Opt, UsageError, parse, run_main

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATHS = ("triton", "torch", "nanogpt")
PARALLEL = ("none", "ddp", "fsdp")
from gpt.hardware import DTYPES  # noqa: E402
GIB = 2**30

OPTIONS = {
    "model": dict(
        preset=Opt("gpt2", "a GPT preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl, ...), or "
                   "custom: the sizes below"),
        n_layer=Opt(12, "transformer blocks (--preset=custom)", ge=1),
        n_head=Opt(12, "attention heads (--preset=custom)", ge=1),
        n_embd=Opt(768, "width (--preset=custom)", ge=1),
        vocab_size=Opt(50304, "vocabulary (every preset: GPT-2's 50257 padded to 50304)", ge=1),
        bias=Opt(True, "biases in Linears and LayerNorms"),
    ),
    "step": dict(
        batch_size=Opt(8, "micro-batch size", ge=1),
        block_size=Opt(1024, "sequence length (at most the model's context)", ge=1),
        dtype=Opt("bfloat16", "autocast dtype; float32: no autocast",
                  choices=tuple(DTYPES)),
        paths=Opt(PATHS, "comma-separated paths to meter, or all", choices=PATHS),
    ),
    "parallel": dict(
        parallel=Opt(("none",), "comma-separated, or all: none (one process), ddp, fsdp; "
                     "per-process figures", choices=PARALLEL),
        world_size=Opt(8, "processes (GPUs) for ddp / fsdp", ge=1),
        activation_checkpointing=Opt("off", "recompute each block in backward",
                                     choices=("off", "on", "both")),
    ),
    "capacity": dict(
        gpu_memory=Opt("80GiB", "memory to fit the largest micro-batch into (e.g. 80GiB, "
                       "40GB, 24576MiB)"),
        max_batch=Opt(True, "search the largest micro-batch that fits --gpu_memory"),
    ),
    "output": dict(
        out=Opt("", "results JSON; default bench/results/memory-<preset>-<date>.json"),
        validate=Opt(False, "check the meter against real CPU allocations at a small size "
                     "instead"),
    ),
}


# ----------------------------------------------------------------------------- metering

def _tracker_class(base):
    """``base`` (MemTracker, or FSDPMemTracker for a sharded model) made to see inside our
    ops and to keep only the step's overall peak."""
    from gpt_kernels._library import LAUNCHERS, plain_launches

    class KernelMemTracker(base):
        """A mode only sees the ops dispatched to it, and an op's own allocations happen below
        it. For our ``gpt::`` ops the launcher (their fake implementation) is run here instead,
        under this tracker again, so each allocation inside it is tracked as it happens."""

        def _update_peak_stats(self, peak_state):
            # Only the overall peak: the per-module peaks MemTracker also keeps cost a walk
            # over every module at every op (most of a metered step's time).
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            launcher = LAUNCHERS.get(func._schema.name)
            if launcher is None:
                return super().__torch_dispatch__(func, types, args, kwargs)
            with self, plain_launches():  # on CUDA the launchers would use wrap_triton
                return launcher(*args, **(kwargs or {}))

    return KernelMemTracker


@contextmanager
def _fake_process_group(world_size):
    """A process group of world_size ranks in which this process is rank 0 and collectives
    only produce outputs of the right shape (torch's fake backend): FSDP shards as on
    world_size GPUs."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_config(cfg):
    """The GPTConfig of the options (a preset, or --preset=custom with explicit sizes)."""
    from gpt.model import PRESETS, GPTConfig

    sizes = dict(vocab_size=cfg["vocab_size"], bias=cfg["bias"], dropout=0.0)
    if cfg["preset"] == "custom":
        if cfg["n_embd"] % cfg["n_head"]:
            raise UsageError(f"--n_embd={cfg['n_embd']} must be divisible by --n_head={cfg['n_head']}")
        return GPTConfig(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                         block_size=max(1024, cfg["block_size"]), **sizes)
    if cfg["preset"] not in PRESETS:
        raise UsageError(f"--preset must be custom or one of {', '.join(PRESETS)}; "
                         f"got {cfg['preset']!r}")
    return GPTConfig.from_preset(cfg["preset"], **sizes)


def _step(model, optimizer, path, idx, targets, dtype):
    """One training step of train.py: autocast forward + loss, backward, AdamW, zero_grad."""
    autocast = (nullcontext() if dtype == torch.float32
                else torch.autocast("cpu", dtype=dtype))
    with autocast:
        if path == "nanogpt":
            logits, _ = model(idx)  # (B, T, V): nanoGPT's full logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
        else:
            _, loss = model(idx, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _create_optimizer_state(model, optimizer):
    """AdamW's state as after a first step (it is created lazily, by the first step), without
    running one: the metered step is then a steady-state step."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@contextmanager
def _flash_sdpa():
    """SDPA pinned to its flash backend (the eager CUDA baseline), where torch has the knob,
    on half inputs as they are (not the float32 the reference uses for CPU computation)."""
    from gpt_kernels import reference

    saved, reference.CPU_HALF_ATTENTION_IN_FLOAT32 = reference.CPU_HALF_ATTENTION_IN_FLOAT32, False
    try:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:
            yield
            return
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            yield
    finally:
        reference.CPU_HALF_ATTENTION_IN_FLOAT32 = saved


# the tracker's kinds of memory, grouped for the tables (FSDP splits them finer)
GROUPS = {
    "weights": ("Parameter", "Sharded Param", "Unsharded Param", "All Gather"),
    "gradients": ("Gradient", "Sharded Grad", "Unsharded Grad", "Reduce Scatter"),
    "optimizer": ("Optstate", "OptState"),
    "activations": ("Activation",),
    "temporaries": ("Temp",),
    "other": ("Buffer", "Inputs", "Other"),
}


def meter_step(config, path, batch_size, block_size, dtype, parallel="none", world_size=1,
               activation_checkpointing=False):
    """Peak bytes of one steady-state training step on fake tensors (per process), and what
    they hold at the peak.

    parallel: "none" (one process), "ddp" (the one-process step plus DDP's gradient
    buckets, computed: DDP cannot run on fake tensors) or "fsdp" (FSDP2 over ``world_size``
    ranks of a fake process group, metered with FSDPMemTracker).
    Returns {"peak_bytes", "parts": {tracker kind: bytes}, "groups": {group: bytes}, ...}.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from gpt.model import GPT, GPTConfig

    if path not in PATHS:
        raise UsageError(f"--paths: unknown path {path!r}; paths are {', '.join(PATHS)}")
    if block_size > config.block_size:
        raise UsageError(f"--block_size={block_size} is longer than the model's context "
                         f"{config.block_size}")
    backend = "triton" if path == "triton" else "torch"
    cfg = GPTConfig(**{**config.to_dict(), "kernels": backend})
    with ExitStack() as stack:
        mesh = None
        if parallel == "fsdp":
            from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
            from torch.distributed.device_mesh import init_device_mesh

            from gpt.parallel import shard

            stack.enter_context(_fake_process_group(world_size))
            mesh = init_device_mesh("cpu", (world_size,))  # from real tensors: before fake mode
        stack.enter_context(FakeTensorMode())
        stack.enter_context(_flash_sdpa())
        model = GPT(cfg)
        n_params = model.num_params()
        model.activation_checkpointing = activation_checkpointing
        if parallel == "fsdp":
            # as train.py: weights gathered in the compute dtype, float32 master copy
            shard(model, mesh=mesh, param_dtype=dtype if dtype != torch.float32 else None)
        optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")  # fused AdamW
        idx = torch.randint(0, cfg.vocab_size, (batch_size, block_size))
        targets = torch.randint(0, cfg.vocab_size, (batch_size, block_size))
        _create_optimizer_state(model, optimizer)
        if parallel == "fsdp":
            tracker = _tracker_class(FSDPMemTracker)(model, optimizer)
            tracker.track_inputs((idx, targets))
        else:
            tracker = _tracker_class(MemTracker)()
            tracker.track_external(model, optimizer, idx, targets)
        with tracker:
            _step(model, optimizer, path, idx, targets, dtype)
        snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))
    # the tracker's keys are enums; keep their names ("Parameter", "Sharded Param", ...)
    parts = {getattr(kind, "value", kind): int(n) for kind, n in snapshot.items()}
    peak = parts.pop("Total")
    parts = {kind: n for kind, n in parts.items() if n}
    if parallel == "ddp":
        # DDP copies each gradient into a flat bucket for the all-reduce: one float32 copy
        # of all gradients, allocated when the model is wrapped, alive at every moment
        parts["DDP buckets (computed)"] = 4 * n_params
        peak += 4 * n_params
    groups = {g: sum(parts.get(k, 0) for k in kinds) for g, kinds in GROUPS.items()}
    groups["gradients"] += parts.get("DDP buckets (computed)", 0)
    return {"path": path, "parallel": parallel, "world_size": world_size,
            "activation_checkpointing": activation_checkpointing, "peak_bytes": peak,
            "parts": parts, "groups": groups, "params": n_params}


def batch_limit(config, path):
    """The largest micro-batch a path can launch at all: the Triton attention kernel puts
    B * n_head programs on one grid axis, which CUDA caps at 65535."""
    if path == "triton":
        from gpt_kernels.attention import _MAX_GRID_Y
        return _MAX_GRID_Y // config.n_head
    return 1 << 16


def largest_batch(config, path, block_size, dtype, budget_bytes, limit=None, **setup):
    """The largest micro-batch whose metered peak fits budget_bytes (0 if none), at most
    ``limit`` (default: ``batch_limit``).

    The peak grows about linearly with the batch (activations), so secant steps from two
    small probes land next to the answer; bisection between the largest batch seen to fit
    and the smallest seen not to then pins it exactly: peak(b) <= budget < peak(b + 1),
    both metered. Usually five or six fake steps.
    """
    limit = limit or batch_limit(config, path)
    peaks = {}

    def peak(b):
        if b not in peaks:
            peaks[b] = meter_step(config, path, b, block_size, dtype, **setup)["peak_bytes"]
        return peaks[b]

    if peak(1) > budget_bytes:
        return 0
    points = [1, 2]
    peak(2)
    for _ in range(4):  # secant steps on peak(b) = budget
        b0, b1 = points[-2], points[-1]
        slope = max((peaks[b1] - peaks[b0]) / (b1 - b0), 1.0)
        guess = int(min(limit, max(1, b1 + (budget_bytes - peaks[b1]) // slope)))
        if guess in peaks:
            break
        peak(guess)
        points.append(guess)
    lo = max(b for b in peaks if peaks[b] <= budget_bytes)
    hi = min((b for b in peaks if peaks[b] > budget_bytes), default=None)
    step = 1
    while hi is None:  # nothing seen too big yet: widen upwards from the answer's neighbour
        if lo >= limit:
            return limit
        nxt = min(limit, lo + step)
        lo, hi = (nxt, None) if peak(nxt) <= budget_bytes else (lo, nxt)
        step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid) <= budget_bytes else (lo, mid)
    return lo


_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text, name="--gpu_memory"):
    """'80GiB' / '40GB' / '24576MiB' / '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"{name} expects a positive size such as 80GiB, 40GB or 24576MiB; "
                         f"got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


# ----------------------------------------------------------------------------- validation

def _live_bytes(model, optimizer):
    """Bytes held between steps: parameters (the tied one once), gradients, AdamW state."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + [p.grad for p in model.parameters()]
    tensors += [t for state in optimizer.state.values() for t in state.values()]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def real_step_peak(config, path, batch_size, block_size, dtype):
    """The same steady-state step on real CPU tensors: live bytes before it plus the peak
    of what it allocates (profiler)."""
    from gpt.model import GPT, GPTConfig

    backend = "triton" if path == "triton" else "torch"
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**config.to_dict(), "kernels": backend}))
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
    idx = torch.randint(0, config.vocab_size, (batch_size, block_size))
    targets = torch.randint(0, config.vocab_size, (batch_size, block_size))
    _create_optimizer_state(model, optimizer)
    with _flash_sdpa(), _collect_after_launches():
        before = _live_bytes(model, optimizer) + idx.nbytes + targets.nbytes
        return before + cpu_peak_bytes(lambda: _step(model, optimizer, path, idx, targets, dtype),
                                       op_scratch=False)


@contextmanager
def _collect_after_launches():
    """Run the garbage collector after each Triton kernel launch. Triton's interpreter keeps
    each launch's argument storages in reference cycles (closures of
    ``GridExecutor._init_args_hst``), so on the CPU they outlive the launch until a collection
    runs and the real peak holds freed tensors a GPU would not (3% of this step in float32)."""
    import gc

    from gpt_kernels import _library

    plain = _library._Launch.__getitem__

    def getitem(self, grid):
        run = plain(self, grid)

        def run_and_collect(*args, **kwargs):
            out = run(*args, **kwargs)
            gc.collect()
            return out
        return run_and_collect

    _library._Launch.__getitem__ = getitem
    try:
        yield
    finally:
        _library._Launch.__getitem__ = plain


VALIDATION_CONFIG = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=64,
                         bias=True, dropout=0.0)


def validate(paths, dtypes=("float32", "bfloat16"), batch_size=4, block_size=64):
    """Meter vs real CPU allocations for each path and dtype at a small size."""
    import gpt_kernels
    from gpt.model import GPTConfig

    if "triton" in paths and not gpt_kernels.use_triton("auto", torch.empty(0)):
        raise UsageError("--validate runs the Triton kernels for real: on a machine without "
                         "CUDA run it as TRITON_INTERPRET=1 python -m bench.memory --validate=True")
    config = GPTConfig(**VALIDATION_CONFIG)
    rows = []
    for dtype_name in dtypes:
        for path in paths:
            dtype = DTYPES[dtype_name]
            metered = meter_step(config, path, batch_size, block_size, dtype)["peak_bytes"]
            real = real_step_peak(config, path, batch_size, block_size, dtype)
            rows.append({"path": path, "dtype": dtype_name, "metered_bytes": metered,
                         "real_bytes": real, "error": metered / real - 1.0})
    return {"config": VALIDATION_CONFIG, "batch_size": batch_size, "block_size": block_size,
            "rows": rows}


# ----------------------------------------------------------------------------- report

def _in(unit):
    scale = {"GiB": GIB, "MiB": 2**20}[unit]
    return lambda n: f"{n / scale:.2f}"


def run(cfg):
    """Meter every requested (path, parallel, activation checkpointing) setup."""
    paths, parallels = cfg["paths"], cfg["parallel"]  # tuples, checked by parse()
    acs = {"off": [False], "on": [True], "both": [False, True]}[cfg["activation_checkpointing"]]
    budget = parse_memory(cfg["gpu_memory"])
    config = build_config(cfg)
    if cfg["block_size"] > config.block_size:
        raise UsageError(f"--block_size={cfg['block_size']} is longer than the model's context "
                         f"{config.block_size}")
    dtype = DTYPES[cfg["dtype"]]
    t0 = time.perf_counter()
    results = []
    for parallel in parallels:
        world = cfg["world_size"] if parallel != "none" else 1
        for ac in acs:
            setup = dict(parallel=parallel, world_size=world, activation_checkpointing=ac)
            for path in paths:
                r = meter_step(config, path, cfg["batch_size"], cfg["block_size"], dtype, **setup)
                if cfg["max_batch"]:
                    r["largest_batch"] = largest_batch(config, path, cfg["block_size"], dtype,
                                                       budget, **setup)
                results.append(r)
    out = {
        "preset": cfg["preset"], "config": config.to_dict(), "batch_size": cfg["batch_size"],
        "block_size": cfg["block_size"], "dtype": cfg["dtype"], "gpu_memory_bytes": budget,
        "gpu_memory": cfg["gpu_memory"],
        "method": "FakeTensorMode + MemTracker (FSDPMemTracker for fsdp), steady-state step; "
                  "ddp adds DDP's gradient buckets (computed)",
        "torch": torch.__version__, "date": date.today().isoformat(),
        "seconds": time.perf_counter() - t0, "paths": results,
    }
    # triton against the other paths, setup by setup
    for r in results:
        if r["path"] == "triton":
            continue
        mine = next(t for t in results if t["path"] == "triton" and _same_setup(t, r))
        r["triton_peak_ratio"] = mine["peak_bytes"] / r["peak_bytes"]
        if cfg["max_batch"] and r["largest_batch"]:
            r["triton_batch_ratio"] = mine["largest_batch"] / r["largest_batch"]
    return out


def _same_setup(a, b):
    return all(a[k] == b[k] for k in ("parallel", "world_size", "activation_checkpointing"))


def table(result):
    """Markdown table of one run: peak per process and its parts per setup (GiB or MiB)."""
    has_batch = "largest_batch" in result["paths"][0]
    unit = "GiB" if max(r["peak_bytes"] for r in result["paths"]) >= GIB else "MiB"
    size = _in(unit)
    head = ["path", "parallel", "act. ckpt", f"peak {unit}", *GROUPS]
    if has_batch:
        head.append(f"largest batch on {result['gpu_memory']}")
    head.append("triton / this")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["paths"]:
        parallel = r["parallel"] if r["parallel"] == "none" else f"{r['parallel']} x{r['world_size']}"
        row = [r["path"], parallel, "on" if r["activation_checkpointing"] else "off",
               size(r["peak_bytes"]), *[size(r["groups"][g]) for g in GROUPS]]
        if has_batch:
            row.append(str(r["largest_batch"]))
        ratio = f"{r['triton_peak_ratio']:.2f}" if "triton_peak_ratio" in r else ""
        if "triton_batch_ratio" in r:
            ratio += f" (batch x{r['triton_batch_ratio']:.2f})"
        row.append(ratio)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog="python -m bench.memory",
                description="Exact memory of a GPT training step, metered on fake tensors.")
    if cfg["validate"]:
        result = validate(cfg["paths"])
        for row in result["rows"]:
            print(f"{row['path']:8s} {row['dtype']:9s} metered {row['metered_bytes'] / 2**20:8.3f} MiB"
                  f"  real {row['real_bytes'] / 2**20:8.3f} MiB  error {100 * row['error']:+.2f}%")
        return result
    result = run(cfg)
    print(f"{cfg['preset']}: batch {cfg['batch_size']} x {cfg['block_size']} tokens, {cfg['dtype']}, "
          f"metered in {result['seconds']:.1f} s")
    print(table(result))
    out = Path(cfg["out"]) if cfg["out"] else unique_path(  # never over an earlier result
        RESULTS_DIR / f"memory-{cfg['preset']}-{result['date']}.json")
    write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    run_main(main, "python -m bench.memory")
