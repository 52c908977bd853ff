"""What is known without a GPU: every Triton kernel compiled for real NVIDIA chips, no GPU needed.

    python -m bench.compile_report                       # sm_80 and sm_90, every dtype
    python -m bench.compile_report --targets=all         # also sm_86, sm_89 (99 KB of smem)
    python -m bench.compile_report --subset=ci           # GPT-2 small (make test)
    python -m bench.compile_report --update_readme=True  # and rewrite README's block
    python -m bench.compile_report --readme_only=True    # the block from the JSONs there

For each kernel in ``gpt_kernels/`` x dtype (bf16, fp16, fp32 with IEEE dots, fp32 with TF32) x
target (sm_80 = A100, sm_90 = H100; sm_86 / sm_89 on request) x every config the kernel's
autotuner offers at that shape, Triton's compiler produces the PTX and cubin the chip would
run (``bench/triton_compile.py``), and the report records: compiled or not, registers per
thread, spill bytes, shared memory against the chip's limit, tensor-core instructions in
the SASS (``HMMA``; ``HGMMA`` is Hopper's wgmma) and compile seconds.

Launches come from the project's own launchers (``attention_forward``, ``layer_norm_backward``,
...) run on fake CUDA tensors (``FakeTensorMode``: shapes, dtypes, strides and storage
offsets, no memory) inside ``gpt_kernels._library.recording()``, where each
``launch(kernel)[grid](...)`` records its arguments instead of running. The device the
launchers and the autotuners' pruning see is a stand-in for the target (its SM count and
shared-memory limit), so the configs compiled are exactly those the autotuner would offer
on that chip at that shape, specialised as a real launch specialises them (constexprs,
argument dtypes, divisibility by 16 of pointers and integers).

Shapes come from the model presets (``gpt.model.PRESETS``, batch 8; see ``build_cases``).
``--subset=ci`` takes GPT-2 small's shapes and compiles, per launch, the offered config most
likely to spill (the largest tile per warp); every other offered config must then appear,
compiled cleanly, in the committed full report of the same Triton version.

Writes ``bench/results/compile-<triton>-<date>.json`` (``-ci`` appended for the subset), a
markdown summary next to it, and with ``--update_readme=True`` the block between
``<!-- compile:start -->`` and ``<!-- compile:end -->`` in docs/results.md. Exits with status 1
when any compiled config fails, spills, or asks for more shared memory than the target has
(``--check=False`` only reports).
"""

import hashlib
import inspect
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

from bench.common import replace_block, write_text
from gpt.cli import Opt, UsageError, parse, run_main

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
START, END = "<!-- compile:start -->", "<!-- compile:end -->"
SCHEMA = "compile-report/1"


@dataclass(frozen=True)
class Target:
    name: str
    capability: int
    smem: int  # bytes of shared memory one program may use (the opt-in maximum per block)
    sms: int  # multiprocessors of the example chip (LayerNorm's backward sizes its grid by it)
    chip: str


# sharedMemPerBlockOptin from NVIDIA's CUDA programming guide (compute capabilities table)
TARGETS = {
    "sm_80": Target("sm_80", 80, 166912, 108, "A100"),
    "sm_86": Target("sm_86", 86, 101376, 84, "RTX 3090 / A10 / A40"),
    "sm_89": Target("sm_89", 89, 101376, 128, "RTX 4090 / L4 / L40"),
    "sm_90": Target("sm_90", 90, 232448, 132, "H100 / H200"),
}
# dtype label -> (torch dtype name, torch.set_float32_matmul_precision)
DTYPES = {
    "bf16": ("bfloat16", "highest"),
    "fp16": ("float16", "highest"),
    "fp32": ("float32", "highest"),  # IEEE float32 dots (torch's default)
    "fp32-tf32": ("float32", "high"),  # TF32 allowed, as train.py sets on GPUs
}
OPS = ("attention", "layer_norm", "add_layer_norm", "linear_gelu", "cross_entropy",
       "fused_linear_cross_entropy")
# the modules whose kernels are launched (the fused linear cross-entropy launches
# cross_entropy.py's kernel from its own chunk loop)
KERNEL_MODULES = ("attention", "layer_norm", "add_layer_norm", "linear_gelu", "cross_entropy")

OPTIONS = {
    "what": dict(
        subset=Opt("full", "full: every preset shape and variant; ci: GPT-2 small's shapes, "
                           "the largest config of each launch", choices=("full", "ci")),
        ops=Opt("all", "comma-separated kernel files (" + ", ".join(OPS) + "), or all"),
        dtypes=Opt("all", "comma-separated of " + ", ".join(DTYPES) + ", or all"),
        targets=Opt("sm_80,sm_90", "comma-separated of " + ", ".join(TARGETS) + ", or all"),
        configs=Opt("auto", "which offered configs to compile: all, or the largest of each launch "
                            "(the one most likely to spill); auto: all for full, largest for ci",
                    choices=("auto", "all", "largest")),
        inject=Opt("", "KERNEL:NAME=VALUE,...: also compile this config wherever KERNEL is "
                       "autotuned (e.g. _attn_fwd:BLOCK_M=256,BLOCK_N=256,num_warps=4,"
                       "num_stages=3)"),
    ),
    "run": dict(
        workers=Opt(2, "compiler processes", ge=1),
        cache=Opt(True, "reuse the result of an identical compile (same Triton, kernel source, "
                        "specialisation, options, target) from cache_dir"),
        cache_dir=Opt(str(Path.home() / ".cache" / "gpt-triton" / "compile-report"),
                      "where compile results are cached"),
    ),
    "output": dict(
        out=Opt("", "results JSON; default bench/results/compile-<triton>-<date>[-ci].json"),
        markdown=Opt(True, "also write the summary as <stem>.md next to the JSON"),
        update_readme=Opt(False, "rewrite the block between the compile markers in --readme"),
        readme=Opt(str(REPO_ROOT / "docs" / "results.md"), "the page whose block is rewritten"),
        readme_only=Opt(False, "only rebuild the README block from the newest full report of "
                               "each Triton version in bench/results (no compiling)"),
        check=Opt(True, "exit with status 1 if any offered config fails, spills or exceeds "
                        "shared memory"),
    ),
}
DESCRIPTION = __doc__.split("\n\n")[0]

BATCH = 8  # sequences per batch in every shape below
TRAIN_VOCAB = 50304  # GPTConfig's default: GPT-2's 50257 padded to a multiple of 64


# ----------------------------------------------------------------------------- shapes

@dataclass
class Case:
    """Launchers of one kernel file at one shape; ``run(dtype)`` calls them on fake tensors."""

    op: str
    label: str
    run: object = field(repr=False)


def kernel_module(name):
    """``gpt_kernels.<name>`` the module (the package binds the op's public function to
    ``gpt_kernels.layer_norm`` and the like, over the module of the same name)."""
    import importlib

    return importlib.import_module(f"gpt_kernels.{name}")


def _shape(preset):
    from gpt.model import PRESETS

    p = PRESETS[preset]
    return p["n_embd"], p["n_head"], p["block_size"], p.get("vocab_size", TRAIN_VOCAB)


def attention_case(label, C, H, T, causal=True, dropout=0.0):
    attention = kernel_module("attention")

    D = C // H
    scale = 1.0 / math.sqrt(D)

    def run(dtype):
        import torch

        # the model's layout: q, k, v are (B, H, T, D) views of c_attn's (B, T, 3C) output
        qkv = torch.empty(BATCH, T, 3 * C, dtype=dtype, device="cuda")
        q, k, v = (t.view(BATCH, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=2))
        # the dropout seed is a (1,) int64 tensor (attention.dropout_seed)
        seed = torch.empty(1, dtype=torch.int64, device="cuda") if dropout else None
        out, lse = attention.attention_forward(q, k, v, causal, scale, dropout, seed)
        # the gradient of y.transpose(1, 2).contiguous().view(B, T, C) arrives in that layout
        dy = torch.empty(BATCH, T, C, dtype=dtype, device="cuda").view(BATCH, T, H, D)
        attention.attention_backward(dy.transpose(1, 2), q, k, v, out, lse, causal, scale,
                                     dropout, seed)
        if dropout:
            attention.dropout_keep_mask(BATCH, H, T, T, dropout, seed, q.device)

    what = ("causal" if causal else "full") + (f", dropout {dropout}" if dropout else "")
    return Case("attention", f"{label}: B={BATCH} H={H} T={T} D={D}, {what}", run)


def layer_norm_case(label, C, T, bias=True):
    layer_norm = kernel_module("layer_norm")

    def run(dtype):
        import torch

        x = torch.empty(BATCH * T, C, dtype=dtype, device="cuda")
        w = torch.empty(C, dtype=dtype, device="cuda")
        b = torch.empty(C, dtype=dtype, device="cuda") if bias else None
        y, mean, rstd = layer_norm.layer_norm_forward(x, w, b, 1e-5)
        layer_norm.layer_norm_backward(torch.empty_like(y), x, w, b, mean, rstd)

    return Case("layer_norm", f"{label}: N={BATCH * T} C={C}" + ("" if bias else ", no bias"), run)


def add_layer_norm_case(label, C, T, bias=True):
    add_layer_norm = kernel_module("add_layer_norm")

    def run(dtype):
        import torch

        # the model's mixed precision: a float32 stream; branch, y and dy in the run's dtype
        x = torch.empty(BATCH * T, C, dtype=torch.float32, device="cuda")
        r = torch.empty(BATCH * T, C, dtype=dtype, device="cuda")
        w = torch.empty(C, dtype=torch.float32, device="cuda")
        b = torch.empty(C, dtype=torch.float32, device="cuda") if bias else None
        s, y, mean, rstd = add_layer_norm.add_layer_norm_forward(x, r, w, b, 1e-5, dtype)
        add_layer_norm.add_layer_norm_backward(torch.empty_like(y), torch.empty_like(s), s, w, b,
                                               mean, rstd, dtype)

    return Case("add_layer_norm", f"{label}: N={BATCH * T} C={C}, float32 stream", run)


def linear_gelu_case(label, C, T, bias=True, inference=True):
    linear_gelu = kernel_module("linear_gelu")

    def run(dtype):
        import torch

        M, K, N = BATCH * T, C, 4 * C  # the MLP's c_fc: (4C, C)
        x = torch.empty(M, K, dtype=dtype, device="cuda")
        w = torch.empty(N, K, dtype=dtype, device="cuda")
        b = torch.empty(N, dtype=dtype, device="cuda") if bias else None
        if inference:  # no h stored: a separate specialisation
            linear_gelu.linear_gelu_forward(x, w, b, store_h=False)
        y, h = linear_gelu.linear_gelu_forward(x, w, b, store_h=True)
        linear_gelu.linear_gelu_backward(torch.empty_like(y), h, x, w, bias, True, True)
        # the MLP's backward on the Triton path also rewrites gelu(h) (gpt_kernels/recompute.py)
        linear_gelu.gelu_backward(torch.empty_like(y), h, dtype, True)

    return Case("linear_gelu", f"{label}: M={BATCH * T} K={C} N={4 * C}"
                + ("" if bias else ", no bias"), run)


def cross_entropy_case(label, V, T, inference=True):
    cross_entropy = kernel_module("cross_entropy")

    def run(dtype):
        import torch

        N = BATCH * T
        logits = torch.empty(N, V, dtype=dtype, device="cuda")
        target = torch.empty(N, dtype=torch.int64, device="cuda")
        if inference:  # no gradient wanted (evaluation): a separate specialisation
            cross_entropy.cross_entropy_forward(logits, target, -100)
        dlogits = torch.empty_like(logits)
        cross_entropy.cross_entropy_forward(logits, target, -100, grad_out=dlogits)
        one = torch.empty(1, dtype=torch.float32, device="cuda")
        cross_entropy.cross_entropy_backward(dlogits, one, one)

    return Case("cross_entropy", f"{label}: N={BATCH * T} V={V}", run)


def flce_case(label, C, V, T):
    flce = kernel_module("fused_linear_cross_entropy")

    def run(dtype):
        import torch

        N = BATCH * T
        x = torch.empty(N, C, dtype=dtype, device="cuda")
        w = torch.empty(V, C, dtype=dtype, device="cuda")
        target = torch.empty(N, dtype=torch.int64, device="cuda")
        flce.flce_pass(x, w, None, target, -100, need_x=True, need_weight=True)

    return Case("fused_linear_cross_entropy", f"{label}: N={BATCH * T} C={C} V={V}", run)


def decode_case(label, C, H, T):
    """One KV-cache generation step: a single query against T cached keys (forward only)."""
    attention = kernel_module("attention")
    D = C // H

    def run(dtype):
        import torch

        qkv = torch.empty(BATCH, 1, 3 * C, dtype=dtype, device="cuda")
        q = qkv.split(C, dim=2)[0].view(BATCH, 1, H, D).transpose(1, 2)
        # gpt.generate.KVCache: (n_layer, B, H, max_len, D) buffers, a layer's first T positions
        k, v = (torch.empty(1, BATCH, H, T, D, dtype=dtype, device="cuda").select(0, 0)
                for _ in range(2))
        attention.attention_forward(q, k, v, True, 1.0 / math.sqrt(D), 0.0, None)

    return Case("attention", f"{label}: B={BATCH} H={H} Tq=1 Tk={T} D={D}, decode step", run)


def build_cases(subset, ops):
    """The shapes of the report.

    ``ci``: GPT-2 small's, as its training step launches them (no dropout, no launch that
    only inference or evaluation makes).
    ``full``: every preset's LayerNorm, linear+GELU and cross-entropy shapes; attention at
    GPT-2 small's width and context at every head dim the kernel takes (with dropout too at
    64, every GPT-2 size's and shakespeare-char's, and 128, the largest tiles' registers;
    gpt2-medium/large/xl differ from gpt2 only in the number of heads, a runtime argument),
    shakespeare-char's own shape (dropout 0.2, T=256), and a KV-cache decode step. Causal
    attention with biases throughout, as the model runs it.
    """
    from gpt.model import PRESETS
    from gpt_kernels import SUPPORTED_HEAD_DIMS

    C0, H0, T0, _ = _shape("gpt2")
    if subset == "ci":
        cases = [layer_norm_case("gpt2", C0, T0), add_layer_norm_case("gpt2", C0, T0),
                 linear_gelu_case("gpt2", C0, T0, inference=False),
                 cross_entropy_case("gpt2", PRESETS["gpt2"]["vocab_size"], T0, inference=False),
                 flce_case("gpt2", C0, TRAIN_VOCAB, T0), attention_case("gpt2", C0, H0, T0)]
        return [c for c in cases if c.op in ops]
    cases = []
    for preset in PRESETS:
        C, H, T, V = _shape(preset)
        cases += [layer_norm_case(preset, C, T), add_layer_norm_case(preset, C, T),
                  linear_gelu_case(preset, C, T),
                  cross_entropy_case(preset, V, T), flce_case(preset, C, TRAIN_VOCAB, T)]
    for D in SUPPORTED_HEAD_DIMS:  # GPT-2 small's width and context, every head dim
        for dropout in (0.0, 0.1) if D >= 64 else (0.0,):
            cases.append(attention_case(f"gpt2 width, D={D}", C0, C0 // D, T0, dropout=dropout))
    C, H, T, _ = _shape("shakespeare-char")
    cases.append(attention_case("shakespeare-char", C, H, T,
                                dropout=PRESETS["shakespeare-char"]["dropout"]))
    cases.append(decode_case("gpt2", C0, H0, T0))
    return [c for c in cases if c.op in ops]


# ----------------------------------------------------------------------------- capture

def kernel_modules():
    return [kernel_module(name) for name in KERNEL_MODULES]


def launched_kernels(module):
    """Names of the module's Triton kernels that its Python code launches
    (``launch(name)[grid](``, see ``gpt_kernels/_library.py``)."""
    from triton.runtime.jit import KernelInterface

    src = inspect.getsource(module)
    return [name for name, obj in vars(module).items()
            if isinstance(obj, KernelInterface) and re.search(rf"\blaunch\({name}\)\[", src)]


@dataclass
class Launch:
    module: str
    name: str
    kernel: object
    args: tuple
    kwargs: dict


def _launch_of(kernel, args, kwargs):
    """A recorded ``(kernel, grid, args, kwargs)`` as a Launch named after its kernel."""
    from bench.triton_compile import jit_function

    fn = jit_function(kernel).fn
    return Launch(fn.__module__, fn.__name__, kernel, args, kwargs)


@contextmanager
def stand_in_gpu(target, matmul_precision):
    """Fake CUDA tensors, a device that looks like ``target`` to the launchers and the
    autotuners' pruning, torch's float32 matmul precision, and every kernel launch recorded
    instead of run (``gpt_kernels._library.recording``). Yields the list of recorded launches
    (kernel, grid, args, kwargs), complete when the block ends."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gpt_kernels._library import recording

    props = SimpleNamespace(
        name=f"stand-in for {target.chip}", major=target.capability // 10,
        minor=target.capability % 10, multi_processor_count=target.sms,
        shared_memory_per_block_optin=target.smem, total_memory=80 * 2**30)
    saved_props = torch.cuda.get_device_properties
    saved_precision = torch.get_float32_matmul_precision()
    saved_getitem, saved_setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    # Python indexing of a fake CUDA tensor asks a CPU-only torch for CUDA's device guard;
    # the launchers only index leading-dim slices (x[start:end]), which aten.slice does
    def rows(t, key):
        if isinstance(key, slice) and key.step in (None, 1):
            stop = t.shape[0] if key.stop is None else key.stop
            return torch.ops.aten.slice(t, 0, key.start or 0, stop)
        return None

    def getitem(t, key):
        view = rows(t, key)
        return saved_getitem(t, key) if view is None else view

    def setitem(t, key, value):
        view = rows(t, key)
        return saved_setitem(t, key, value) if view is None else torch.ops.aten.copy_(view, value)

    torch.cuda.get_device_properties = lambda device=None: props
    torch.Tensor.__getitem__, torch.Tensor.__setitem__ = getitem, setitem
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        with FakeTensorMode(), recording() as launches:
            yield launches
    finally:
        torch.cuda.get_device_properties = saved_props
        torch.Tensor.__getitem__, torch.Tensor.__setitem__ = saved_getitem, saved_setitem
        torch.set_float32_matmul_precision(saved_precision)


def parse_inject(text):
    """"KERNEL:NAME=VALUE,..." -> (kernel name, {constexpr: int}, {num_warps/num_stages: int})."""
    if not text:
        return None
    name, sep, rest = text.partition(":")
    try:
        pairs = dict(item.split("=", 1) for item in rest.split(",")) if sep else None
        values = {k.strip(): int(v) for k, v in pairs.items()}
    except (AttributeError, ValueError):
        raise UsageError(f"--inject expects KERNEL:NAME=INT,NAME=INT,..., got {text!r}") from None
    options = {k: values.pop(k) for k in ("num_warps", "num_stages") if k in values}
    return name.strip(), values, options


def offered_configs(launch, inject=None):
    """[{label, kwargs, smem (estimate or None), injected}] for one recorded launch: every
    config its autotuner offers at these arguments (after its own pruning, which reads the
    stand-in device), or the launch itself for a kernel that is not autotuned."""
    import triton

    kernel = launch.kernel
    if not hasattr(kernel, "configs"):
        label = {k: v for k, v in launch.kwargs.items() if k.startswith(("BLOCK", "GROUP"))}
        label.update(num_warps=launch.kwargs.get("num_warps", 4),
                     num_stages=launch.kwargs.get("num_stages", 3))
        return [dict(label=label, kwargs=dict(launch.kwargs), smem=None, injected=False)]
    nargs = dict(zip(kernel.arg_names, launch.args))
    prune = getattr(kernel, "early_config_prune", None)
    configs = [(c, False) for c in (prune(kernel.configs, nargs, **launch.kwargs) if prune
                                    else kernel.configs)]
    if inject and inject[0] == launch.name:
        configs.append((triton.Config(inject[1], **inject[2]), True))
    estimate = getattr(prune, "smem", None)
    return [dict(label={**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
                 kwargs={**launch.kwargs, **cfg.all_kwargs()},
                 smem=estimate(cfg, nargs, launch.kwargs) if estimate else None,
                 injected=injected)
            for cfg, injected in configs]


def largest(offered):
    """The offered config most likely to spill or overflow: the most tile elements per warp,
    then the most shared memory. ``--subset=ci`` compiles this one per launch (and any
    injected config); the full report compiles them all."""
    def weight(o):
        tile = math.prod(v for k, v in o["label"].items() if k.startswith("BLOCK"))
        return (tile / o["label"]["num_warps"], o["smem"] or 0, o["label"]["num_stages"])

    regular = [o for o in offered if not o["injected"]]
    return [max(regular, key=weight)] + [o for o in offered if o["injected"]]


def _specialisation(launch, config_label):
    """The launch's own constexprs (those that are not part of the config)."""
    return {k: v for k, v in launch.kwargs.items()
            if k.isupper() and k not in config_label and not k.startswith("num_")}


def collect_jobs(cases, dtypes, targets, inject, pick="all"):
    """Capture every launch and expand it into compile jobs, one per distinct binary.

    ``pick``: "all" offered configs, or the "largest" per launch. Returns ({spec key: job},
    offered) where a job knows where it is used (cases x dtypes) and ``offered`` lists every
    (kernel, target, dtype, specialisation, config) an autotuner offers, compiled or not."""
    import torch

    from bench.triton_compile import describe, jit_function, spec_key

    jobs, offered_all = {}, []
    for target in targets:
        for dtype_label in dtypes:
            dtype_name, precision = DTYPES[dtype_label]
            for case in cases:
                with stand_in_gpu(target, precision) as launches:
                    case.run(getattr(torch, dtype_name))
                    expanded = [(launch, offered_configs(launch, inject))
                                for launch in (_launch_of(k, a, kw) for k, _, a, kw in launches)]
                for launch, offered in expanded:
                    spec = _specialisation(launch, offered[0]["label"])
                    offered_all += [dict(kernel=launch.name, target=target.name,
                                         dtype=dtype_label, specialisation=spec,
                                         config=o["label"]) for o in offered if not o["injected"]]
                    descs = [describe(a) for a in launch.args]
                    fn = jit_function(launch.kernel)
                    for o in (offered if pick == "all" else largest(offered)):
                        key = spec_key(fn, descs, o["kwargs"], target.capability)
                        job = jobs.get(key)
                        if job is None:
                            job = jobs[key] = dict(
                                key=key, module=launch.module, kernel=launch.name,
                                file=launch.module.removeprefix("gpt_kernels.") + ".py",
                                target=target.name, config=o["label"], specialisation=spec,
                                smem_limit=target.smem, smem_estimate=o["smem"],
                                injected=o["injected"], args=descs, kwargs=o["kwargs"],
                                uses=[])
                        use = {"op": case.op, "case": case.label, "dtype": dtype_label}
                        if use not in job["uses"]:
                            job["uses"].append(use)
    return jobs, offered_all


def _entry(kernel, target, dtype, specialisation, config):
    return (kernel, target, dtype, json.dumps(specialisation, sort_keys=True),
            json.dumps(config, sort_keys=True))


def _distinct(offered):
    seen, out = set(), []
    for o in offered:
        e = _entry(**o)
        if e not in seen:
            seen.add(e)
            out.append(o)
    return out


def unreported(offered, full):
    """The offered configs that the full report ``full`` did not compile cleanly (a table
    edited without running the report again)."""
    clean = {_entry(r["kernel"], r["target"], u["dtype"], r["specialisation"], r["config"])
             for r in full["records"] if not r["problems"] for u in r["uses"]}
    return [o for o in _distinct(offered) if _entry(**o) not in clean]


# ----------------------------------------------------------------------------- compiling

def _cache_file(cache_dir, key):
    return Path(cache_dir).expanduser() / (hashlib.sha256(key.encode()).hexdigest() + ".json")


def _cached(cache_dir, key):
    path = _cache_file(cache_dir, key)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("key") == key else None


def _store(cache_dir, key, result):
    write_text(_cache_file(cache_dir, key), json.dumps({"key": key, **result}))


def _compile_job(job):
    from bench.triton_compile import compile_launch

    target = TARGETS[job["target"]]
    return compile_launch(job["module"], job["kernel"], job["args"], job["kwargs"],
                          target.capability)


def _worker_init():
    import warnings

    warnings.simplefilter("ignore")


def compile_jobs(jobs, workers, cache, cache_dir):
    """Compile every job (results cached on disk by their spec key); returns {key: result}."""
    results, todo = {}, []
    for key, job in jobs.items():
        hit = _cached(cache_dir, key) if cache else None
        if hit is not None:
            hit.pop("key")
            results[key] = {**hit, "cached": True}
        else:
            todo.append(job)
    print(f"{len(jobs)} distinct compiles: {len(results)} from the cache, {len(todo)} to run "
          f"on {workers} process(es)", flush=True)
    # a fresh Triton cache: every compile happens for real, and its seconds are its own
    with tempfile.TemporaryDirectory(prefix="gpt-triton-compile-cache-") as tmp:
        env = {"TRITON_CACHE_DIR": tmp}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                futures = {pool.submit(_compile_job, job): job for job in todo}
                for i, fut in enumerate(as_completed(futures), 1):
                    job = futures[fut]
                    result = fut.result()
                    results[job["key"]] = result
                    _store(cache_dir, job["key"], result)
                    print(f"[{i}/{len(todo)}] {_job_line(job, result)}", flush=True)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return results


def _config_text(config):
    return " ".join(f"{k}={v}" for k, v in config.items())


def _job_line(job, r):
    dtypes = ",".join(sorted({u["dtype"] for u in job["uses"]}))
    head = f"{job['target']} {job['kernel']} [{dtypes}] {_config_text(job['config'])}"
    if not r["ok"]:
        return f"{head}: FAILED {r['error'][:200]}"
    return (f"{head}: {r['registers']} regs, {r['spill_stores']} B spilled, "
            f"{r['shared'] / 1024:.0f} KB smem, {r['compile_s']:.1f} s")


# ----------------------------------------------------------------------------- checks

def problems_of(rec):
    """What stops this config from running well on its target (empty when nothing does)."""
    if not rec["ok"]:
        return ["compile error: " + rec["error"]]
    out = []
    if rec["spill_stores"] or rec["spill_loads"]:
        out.append(f"spills {rec['spill_stores']} B stored / {rec['spill_loads']} B loaded "
                   f"per thread ({rec['registers']} registers)")
    if rec["shared"] > rec["smem_limit"]:
        out.append(f"shared memory {rec['shared']} B > {rec['smem_limit']} B on {rec['target']}")
    if rec["smem_estimate"] is not None and rec["shared"] > rec["smem_estimate"]:
        out.append(f"the autotuner's shared-memory estimate {rec['smem_estimate']} B is below "
                   f"the {rec['shared']} B compiled: its pruning could let a config through "
                   f"that does not fit")
    return out


def make_records(jobs, results):
    records = []
    for key, job in jobs.items():
        rec = {k: v for k, v in job.items() if k not in ("args", "kwargs", "key", "module")}
        rec.update(results[key])
        rec["problems"] = problems_of(rec)
        records.append(rec)
    order = {name: i for i, name in enumerate(TARGETS)}
    records.sort(key=lambda r: (r["file"], r["kernel"], order[r["target"]],
                                sorted({u["dtype"] for u in r["uses"]}), str(r["config"])))
    return records


def summarise(records):
    """Per (kernel, dtype, target): configs compiled, failures, worst registers / spills /
    shared memory, tensor-core instructions, compile seconds."""
    groups = defaultdict(list)
    for rec in records:
        for dtype in sorted({u["dtype"] for u in rec["uses"]}):
            groups[(rec["file"], rec["kernel"], dtype, rec["target"])].append(rec)
    rows = []
    for (file, kernel, dtype, target), recs in groups.items():
        ok = [r for r in recs if r["ok"]]
        tc = defaultdict(int)
        for r in ok:
            for op, n in r["tensor_core"].items():
                tc[op] = max(tc[op], n)
        rows.append(dict(
            file=file, kernel=kernel, dtype=dtype, target=target, compiles=len(recs),
            failed=len(recs) - len(ok),
            spilling=sum(1 for r in ok if r["spill_stores"] or r["spill_loads"]),
            over_smem=sum(1 for r in ok if r["shared"] > r["smem_limit"]),
            max_registers=max((r["registers"] for r in ok), default=None),
            max_spill=max((r["spill_stores"] for r in ok), default=None),
            max_shared=max((r["shared"] for r in ok), default=None),
            smem_limit=recs[0]["smem_limit"],
            tensor_core=dict(tc),
            compile_s_median=statistics.median(r["compile_s"] for r in recs),
            compile_s_total=round(sum(r["compile_s"] for r in recs), 2),
        ))
    return rows


def totals(records):
    return dict(
        compiles=len(records),
        failed=sum(not r["ok"] for r in records),
        spilling=sum(1 for r in records if r["ok"] and (r["spill_stores"] or r["spill_loads"])),
        over_smem=sum(1 for r in records if r["ok"] and r["shared"] > r["smem_limit"]),
        with_problems=sum(bool(r["problems"]) for r in records),
        compile_s=round(sum(r["compile_s"] for r in records), 1),
    )


# ----------------------------------------------------------------------------- markdown

def _kb(n):
    return "-" if n is None else f"{n / 1024:.0f}"


def _tc_text(tc):
    return ", ".join(f"{op} {n}" for op, n in sorted(tc.items())) or "none"


def summary_md(doc):
    t = doc["totals"]
    lines = [
        f"Triton {doc['versions']['triton']}, targets {', '.join(doc['targets'])}, dtypes "
        f"{', '.join(doc['dtypes'])} ({doc['subset']} subset, {doc['configs']} configs of "
        f"{len(doc['offered'])} offered): **{t['compiles']} distinct compiles, {t['failed']} "
        f"failed, {t['spilling']} spill, {t['over_smem']} over shared memory**; "
        f"{t['compile_s']:.0f} s of compiling, {doc['wall_s']:.0f} s wall on "
        f"{doc['workers']} process(es) ({doc['host']}).",
        "",
        "| kernel | dtype | target | configs | failed | max regs | spills | max smem KB (limit) "
        "| tensor-core instrs (max) | compile s (median) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in doc["summary"]:
        lines.append(
            f"| `{row['kernel']}` | {row['dtype']} | {row['target']} | {row['compiles']} | "
            f"{row['failed']} | {row['max_registers']} | {row['spilling']} | "
            f"{_kb(row['max_shared'])} ({_kb(row['smem_limit'])}) | "
            f"{_tc_text(row['tensor_core'])} | {row['compile_s_median']:.1f} |")
    return "\n".join(lines)


def detail_md(doc):
    lines = ["| kernel | target | dtypes | config | specialisation | regs | spill B | smem KB "
             "| est. KB | tensor cores | s |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in doc["records"]:
        dtypes = ", ".join(sorted({u["dtype"] for u in r["uses"]}))
        spec = " ".join(f"{k}={v}" for k, v in r["specialisation"].items())
        head = (f"| `{r['kernel']}` | {r['target']} | {dtypes} | {_config_text(r['config'])} "
                f"| {spec}")
        if not r["ok"]:
            lines.append(f"{head} | FAILED | | | | {r['error'][:120]} | {r['compile_s']:.1f} |")
            continue
        lines.append(
            f"{head} | {r['registers']} | {r['spill_stores']} | {r['shared'] / 1024:.1f} | "
            f"{_kb(r['smem_estimate'])} | {_tc_text(r['tensor_core'])} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def report_md(doc):
    problems = [f"- `{r['kernel']}` {r['target']} {_config_text(r['config'])}: {p}"
                for r in doc["records"] for p in r["problems"]]
    return "\n".join([
        f"# Compile report: Triton {doc['versions']['triton']}, {doc['date']}",
        "", summary_md(doc), "",
        "## Problems", "", "\n".join(problems) if problems else "None.", "",
        "## Shapes", "", "\n".join(f"- {c}" for c in doc["cases"]), "",
        "## Every compile", "", detail_md(doc), "",
    ])


def _kernel_rows(doc, targets):
    """README rows: per kernel, over dtypes, the worst figures per target."""
    per = defaultdict(lambda: defaultdict(list))
    for row in doc["summary"]:
        per[(row["file"], row["kernel"])][row["target"]].append(row)
    lines = []
    for (file, kernel), by_target in per.items():
        cells = []
        for t in targets:
            rows = by_target.get(t, [])
            if not rows:
                cells += ["-"] * 4
                continue
            tc = defaultdict(int)
            for r in rows:
                for op, n in r["tensor_core"].items():
                    tc[op] = max(tc[op], n)
            cells += [str(sum(r["compiles"] for r in rows)),
                      str(max(r["max_registers"] or 0 for r in rows)),
                      f"{max(r['max_shared'] or 0 for r in rows) / 1024:.0f} / "
                      f"{rows[0]['smem_limit'] / 1024:.0f}",
                      "/".join(sorted(tc)) or "-"]
        lines.append(f"| `{kernel}` ({file}) | " + " | ".join(cells) + " |")
    return lines


def readme_block(docs):
    """The README's compile block from full reports (newest Triton first)."""
    if not docs:
        return ("No compile report yet: run `python -m bench.compile_report "
                "--update_readme=True`.")
    newest = docs[0]
    targets = [t for t in ("sm_80", "sm_90") if t in newest["targets"]] or newest["targets"]
    head = ["| kernel | " + " | ".join(f"{t} configs | {t} max regs | {t} max smem KB / limit "
                                       f"| {t} tensor cores" for t in targets) + " |",
            "| --- | " + " | ".join("---: | ---: | ---: | ---" for _ in targets) + " |"]
    lines = [
        f"Generated by `python -m bench.compile_report` from "
        f"`bench/results/{newest['file']}` ({newest['date']}, commit "
        f"{(newest.get('commit') or 'unknown')[:10]}).",
        "",
    ]
    for doc in docs:
        t = doc["totals"]
        lines.append(
            f"- Triton {doc['versions']['triton']}: {t['compiles']} distinct compiles "
            f"({', '.join(doc['targets'])}; {', '.join(doc['dtypes'])}), **{t['failed']} "
            f"failed, {t['spilling']} spill, {t['over_smem']} over shared memory**; "
            f"{doc['wall_s'] / 60:.0f} min on {doc['workers']} process(es).")
    lines += ["", f"Per kernel with Triton {newest['versions']['triton']}, worst case over "
              f"dtypes, shapes and the configs each autotuner offers:", ""]
    lines += head + _kernel_rows(newest, targets)
    return "\n".join(lines)


def update_readme(readme, docs):
    readme = Path(readme)
    write_text(readme, replace_block(readme.read_text(), readme_block(docs), START, END))
    return readme


def newest_reports(results_dir=RESULTS_DIR):
    """The newest full report of each Triton version, newest Triton first."""
    best = {}
    for path in sorted(Path(results_dir).glob("compile-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("schema") != SCHEMA or doc.get("subset") != "full":
            continue
        doc["file"] = path.name
        version = doc["versions"]["triton"]
        if version not in best or doc["date"] >= best[version]["date"]:
            best[version] = doc
    key = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])  # noqa: E731
    return [best[v] for v in sorted(best, key=key, reverse=True)]


# ----------------------------------------------------------------------------- main

def _split(text, allowed, what):
    if text == "all":
        return list(allowed)
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UsageError(f"--{what} must be 'all' or a comma-separated list of "
                         f"{', '.join(allowed)}; got {text!r}")
    return items


def _check_environment():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UsageError("TRITON_INTERPRET=1 is set: the kernels would offer the interpreter's "
                         "single config, not what a GPU run offers; unset it")
    attention = sys.modules.get("gpt_kernels.attention")
    if attention is not None and getattr(attention, "_INTERPRET", False):
        raise UsageError("kernels were imported under TRITON_INTERPRET=1 in this process; "
                         "run the report in a fresh process without it")


def _full_report_for(version, results_dir=RESULTS_DIR):
    """The newest full report made with Triton ``version``, or None."""
    return next((d for d in newest_reports(results_dir) if d["versions"]["triton"] == version),
                None)


def run(cfg):
    if cfg["readme_only"]:
        docs = newest_reports()
        print(f"updated {update_readme(cfg['readme'], docs)} from "
              + (", ".join(d["file"] for d in docs) or "no report"))
        return None
    ops = _split(cfg["ops"], OPS, "ops")
    dtypes = _split(cfg["dtypes"], DTYPES, "dtypes")
    targets = [TARGETS[t] for t in _split(cfg["targets"], TARGETS, "targets")]
    inject = parse_inject(cfg["inject"])
    if cfg["update_readme"] and cfg["subset"] != "full":
        raise UsageError("--update_readme=True needs --subset=full: the README shows full reports")
    if cfg["update_readme"] and not Path(cfg["readme"]).is_file():
        raise UsageError(f"--readme: {cfg['readme']} does not exist")
    _check_environment()

    from bench.common import git_commit, host_description, versions

    t0 = time.perf_counter()
    cases = build_cases(cfg["subset"], ops)
    pick = cfg["configs"] if cfg["configs"] != "auto" else \
        ("all" if cfg["subset"] == "full" else "largest")
    jobs, offered = collect_jobs(cases, dtypes, targets, inject, pick)
    if inject and not any(j["injected"] for j in jobs.values()):
        autotuned = sorted({j["kernel"] for j in jobs.values() if j["smem_estimate"] is not None})
        raise UsageError(f"--inject: no autotuned kernel {inject[0]!r} is launched in this "
                         f"report; autotuned kernels: {', '.join(autotuned)}")
    kernels_seen = {j["kernel"] for j in jobs.values()}
    # the full report must launch every kernel; the ci subset launches what GPT-2 small's
    # training does (no dropout: not the dropout-mask kernel, which only tests use)
    missing = [] if cfg["subset"] != "full" else sorted(
        {f"{m.__name__}.{n}" for m in kernel_modules() for n in launched_kernels(m)
         if n not in kernels_seen and m.__name__.removeprefix("gpt_kernels.") in ops})
    results = compile_jobs(jobs, cfg["workers"], cfg["cache"], cfg["cache_dir"])
    records = make_records(jobs, results)
    commit, dirty = git_commit()
    doc = dict(
        schema=SCHEMA, subset=cfg["subset"], configs=pick, date=date.today().isoformat(),
        versions=versions(), commit=commit, dirty=dirty, host=host_description(),
        targets=[t.name for t in targets], dtypes=dtypes, ops=ops,
        target_info={t.name: {"capability": t.capability, "smem_limit": t.smem, "sms": t.sms,
                              "chip": t.chip} for t in targets},
        inject=cfg["inject"] or None, cases=[c.label for c in cases],
        kernels_not_launched=missing, workers=cfg["workers"],
        offered=_distinct(offered),
        wall_s=None, totals=totals(records), summary=summarise(records), records=records,
    )
    version = doc["versions"]["triton"]
    if pick != "all":  # what was not compiled here must have been, cleanly, in a full report
        full = _full_report_for(version)
        doc["full_report"] = full["file"] if full else None
        doc["not_in_full_report"] = unreported(offered, full) if full else None
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    suffix = "" if cfg["subset"] == "full" else f"-{cfg['subset']}"
    out = Path(cfg["out"] or RESULTS_DIR / f"compile-{version}-{doc['date']}{suffix}.json")
    write_text(out, json.dumps(doc, indent=1) + "\n")
    print(summary_md(doc))
    print(f"wrote {out}")
    if cfg["markdown"]:
        md = out.with_suffix(".md")
        write_text(md, report_md(doc))
        print(f"wrote {md}")
    if cfg["update_readme"]:
        docs = newest_reports(out.parent)
        print(f"updated {update_readme(cfg['readme'], docs)}")
    return _verdict(doc, cfg["check"])


def _verdict(doc, check):
    """Print the problems; exit with status 1 when there are any and ``check`` is on."""
    for rec in doc["records"]:
        for p in rec["problems"]:
            print(f"PROBLEM {rec['target']} {rec['kernel']} {_config_text(rec['config'])}: {p}")
    if doc["kernels_not_launched"]:
        print(f"PROBLEM kernels no case launches: {', '.join(doc['kernels_not_launched'])}")
    for o in doc.get("not_in_full_report") or []:
        print(f"PROBLEM {o['target']} {o['kernel']} {o['dtype']} {_config_text(o['config'])}: "
              f"offered by its autotuner but not compiled cleanly in {doc['full_report']} "
              f"(run python -m bench.compile_report)")
    if doc.get("full_report", "") is None:
        print(f"note: no full report for Triton {doc['versions']['triton']} in bench/results; "
              f"only the largest config of each launch was compiled")
    n = (doc["totals"]["with_problems"] + len(doc["kernels_not_launched"])
         + len(doc.get("not_in_full_report") or []))
    if check and n:
        print(f"compile check failed: {n} problems")
        raise SystemExit(1)
    return doc


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog="python -m bench.compile_report", description=DESCRIPTION)
    return run(cfg)


if __name__ == "__main__":
    run_main(main, "python -m bench.compile_report")
