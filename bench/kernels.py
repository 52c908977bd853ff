"""Kernel benchmarks: each Triton kernel against PyTorch at GPT-2 shapes.

One file although over 500 lines: one command's cases, providers and measuring loop, a
section each (what it shares with the other benchmarks is in bench/common.py).

    python -m bench.kernels                                   # everything (tens of minutes on an H100)
    python -m bench.kernels --quick=True                      # fewer shapes
    python -m bench.kernels --ops=flash_attention --dtypes=bfloat16 --modes=fwd+bwd
    TRITON_INTERPRET=1 python -m bench.kernels --smoke=True   # CPU: every path once, tiny sizes

Providers (a provider that is missing or fails is recorded as skipped, with the reason):

- ``triton``: the op forced to Triton, ``gpt_kernels.<op>(..., backend="triton")``;
- ``torch``: the plain-PyTorch reference, ``gpt_kernels.reference.<op>`` (eager);
- ``compile``: ``torch.compile`` of that same reference code;
- ``liger``: Liger-Kernel's version of the op (its loss modules and LayerNorm function) when
  ``liger_kernel`` is importable (never required; linear+GELU and attention have none);
- attention only: ``naive`` (nanoGPT's eager attention in the input dtype: QK^T, mask,
  softmax, @V), ``sdpa`` (``scaled_dot_product_attention``, PyTorch's own choice of backend)
  and ``sdpa-flash`` / ``sdpa-efficient`` / ``sdpa-cudnn`` (one backend forced with
  ``torch.nn.attention.sdpa_kernel``).

Results are rewritten (atomically) after every measurement, so a run stopped at any moment
keeps what it finished; a run replaces only the measurements of the kernels it runs, so
``--ops=flash_attention`` then ``--ops=layer_norm`` leaves both in the file. With
``--budget_s`` the shapes not started in time are recorded as not run.

Modes: ``fwd`` is the training forward (inputs require grad, so whatever backward needs is
saved); ``bwd`` is ``out.backward(grad, retain_graph=True)`` on a graph built once; ``fwd+bwd``
is both. Time is ``triton.testing.do_bench``'s median (20th/80th percentiles kept) in ms.
Work: TFLOP/s for attention (4*B*H*Tq*Tk*D forward, halved when causal; backward 2.5x
forward), linear+GELU (2*M*N*K forward, backward 2x) and the fused linear cross-entropy
(2*N*V*C forward, backward 2x); GB/s for LayerNorm and cross-entropy, counting the minimal
bytes (each tensor the pass must read or write, once; ``fwd+bwd`` is the sum of both). Both
also as a fraction of the machine's measured ceilings (``bench.common.measure_ceilings``).
Peak memory: what the timed call allocates on top of what existed before it.

Shapes come from the model presets (``gpt.model.PRESETS``): hidden sizes of GPT-2 small,
medium and XL, vocabulary ``GPTConfig().vocab_size`` (50304), 4k-16k tokens, sequences of
1-8x GPT-2's context of 1024 with head dims 64 and 128. Results go to
``bench/results/<device>-<date>.json`` (section "kernels"); ``python -m bench.report``
summarises them.
"""

import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import common
from gpt.cli import Opt, defaults, parse, run_main
from gpt.hardware import DTYPES
from gpt.model import PRESETS, GPTConfig

PROG = "python -m bench.kernels"
MODES = ("fwd", "bwd", "fwd+bwd")
OPS = ("flash_attention", "layer_norm", "linear_gelu", "cross_entropy",
       "fused_linear_cross_entropy")
COMMON_PROVIDERS = ("triton", "torch", "compile", "liger")
ATTENTION_PROVIDERS = ("naive", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")
HEAD_DIMS = (64, 128)  # attention head dims timed by default (GPT-2's heads are all 64 wide)
OPTIONS = {
    "what": dict(
        ops=Opt(OPS, "comma-separated kernels, or all", choices=OPS),
        providers=Opt(COMMON_PROVIDERS + ATTENTION_PROVIDERS, "comma-separated, or all",
                      choices=COMMON_PROVIDERS + ATTENTION_PROVIDERS),
        modes=Opt(MODES, "comma-separated, or all", choices=MODES),
        dtypes=Opt((), "comma-separated; empty: each kernel's own", item=str,
                   choices=tuple(DTYPES)),
        compile=Opt(True, "include the torch.compile provider (slow to compile on a CPU)"),
        quick=Opt(False, "fewer shapes"),
        head_dims=Opt(HEAD_DIMS, "comma-separated attention head dims (GPT-2's are all 64 "
                      "wide)", choices=(16, 32, 64, 128)),
    ),
    "timing": dict(
        warmup=Opt(25, "do_bench warm-up, ms", ge=0),
        rep=Opt(100, "do_bench repetition time, ms", gt=0),
        smoke=Opt(False, "CPU, tiny sizes, every path once: checks the code, times nothing"),
        budget_s=Opt(0.0, "start no new shape after this many seconds (0: no limit); the "
                     "shapes left are recorded as not run", ge=0),
    ),
    "output": dict(
        out=Opt("", "results JSON; empty: bench/results/<device>-<date>.json"),
    ),
}
DEFAULTS = defaults(OPTIONS)

# float32 where it matters: the residual stream LayerNorm reads is float32 under autocast, and
# logits are often upcast before the loss
KERNEL_DTYPES = {
    "flash_attention": ("bfloat16", "float16"),
    "layer_norm": ("bfloat16", "float16", "float32"),
    "linear_gelu": ("bfloat16", "float16"),
    "cross_entropy": ("bfloat16", "float16", "float32"),
    "fused_linear_cross_entropy": ("bfloat16", "float16"),
}

# ---- shapes, from the model presets
MODEL_SIZES = ("gpt2", "gpt2-medium", "gpt2-xl")
HIDDEN = {name: PRESETS[name]["n_embd"] for name in MODEL_SIZES}  # 768, 1024, 1600
VOCAB = GPTConfig().vocab_size  # 50304: GPT-2's 50257 padded to a multiple of 64
CONTEXT = PRESETS["gpt2"]["block_size"]  # 1024
SEQ_LENS = tuple(CONTEXT * m for m in (1, 2, 4, 8))  # 1k .. 8k
TOKENS = tuple(4 * CONTEXT * m for m in (1, 2, 4))  # 4k, 8k, 16k tokens per batch
MLP_RATIO = 4  # c_fc is (4C, C)


class Skip(Exception):
    """A provider that cannot run this case; the message is the recorded reason."""


@dataclass
class Case:
    """One kernel at one shape and dtype."""

    op: str
    dtype: str
    shape: dict
    label: str  # short text for tables
    size: str = ""  # the model size the shape comes from, when it comes from one
    make: object = None  # device -> (args, kwargs); tensors that need grad have requires_grad
    work: object = None  # mode -> (metric "tflops" | "gbps", amount in FLOP or bytes)


def _elt(dtype):
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def _randn(shape, dtype, device, scale=1.0, grad=True):
    t = torch.randn(shape, dtype=torch.float32, device=device) * scale
    return t.to(DTYPES[dtype]).requires_grad_(grad)


# ----------------------------------------------------------------------------- cases

def attention_case(B, H, T, D, dtype, size=""):
    def make(device):
        q, k, v = (_randn((B, H, T, D), dtype, device) for _ in range(3))
        return (q, k, v), dict(causal=True)

    def work(mode):
        fwd = 4 * B * H * T * T * D / 2  # causal: half the score matrix
        return "tflops", {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]

    return Case("flash_attention", dtype, dict(B=B, H=H, T=T, D=D),
                f"B={B} H={H} T={T} D={D}", size, make, work)


def layer_norm_case(N, C, dtype, size=""):
    e = _elt(dtype)

    def make(device):
        x = _randn((N, C), dtype, device)
        w = (1.0 + 0.1 * torch.randn(C, device=device)).to(DTYPES[dtype]).requires_grad_()
        b = (0.1 * torch.randn(C, device=device)).to(DTYPES[dtype]).requires_grad_()
        return (x, w, b), {}

    def work(mode):
        fwd = 2 * N * C * e + 2 * C * e  # read x, write y; read weight, bias
        bwd = 3 * N * C * e + 3 * C * e  # read x, dy, write dx; read weight, write dw, db
        return "gbps", {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    return Case("layer_norm", dtype, dict(N=N, C=C), f"N={N} C={C}", size, make, work)


def linear_gelu_case(M, K, dtype, size=""):
    N = MLP_RATIO * K

    def make(device):
        x = _randn((M, K), dtype, device)
        w = _randn((N, K), dtype, device, scale=1.0 / math.sqrt(K))
        b = _randn((N,), dtype, device, scale=0.1)
        return (x, w, b), {}

    def work(mode):
        fwd = 2 * M * N * K
        return "tflops", {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[mode]

    return Case("linear_gelu", dtype, dict(M=M, N=N, K=K), f"M={M} N={N} K={K}", size,
                make, work)


def cross_entropy_case(N, V, dtype, size=""):
    e = _elt(dtype)

    def make(device):
        logits = _randn((N, V), dtype, device, scale=2.0)
        target = torch.randint(0, V, (N,), device=device)
        return (logits, target), {}

    def work(mode):
        fwd = N * V * e + 8 * N + 4  # read logits and targets, write the loss
        bwd = 2 * N * V * e + 8 * N  # read logits (and targets), write dlogits
        return "gbps", {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    return Case("cross_entropy", dtype, dict(N=N, V=V), f"N={N} V={V}", size, make, work)


def flce_case(N, C, V, dtype, size=""):
    def make(device):
        x = _randn((N, C), dtype, device)
        w = _randn((V, C), dtype, device, scale=1.0 / math.sqrt(C))
        target = torch.randint(0, V, (N,), device=device)
        return (x, w, target), {}

    def work(mode):
        fwd = 2 * N * V * C  # the lm_head matmul; backward is dx and dW, 2x
        return "tflops", {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[mode]

    return Case("fused_linear_cross_entropy", dtype, dict(N=N, C=C, V=V),
                f"N={N} C={C} V={V}", size, make, work)


def build_cases(ops, dtypes_override, smoke, quick, head_dims=HEAD_DIMS):
    """Every (kernel, shape, dtype) to run, shapes from the presets (tiny ones in smoke)."""
    cases = []
    for op in ops:
        dtypes = dtypes_override or KERNEL_DTYPES[op]
        if smoke:
            dtypes = dtypes[:1]  # one dtype is enough to prove the path runs
        for dtype in dtypes:
            if smoke:
                cases += {
                    "flash_attention": [attention_case(1, 2, 32, 16, dtype)],
                    "layer_norm": [layer_norm_case(32, 64, dtype)],
                    "linear_gelu": [linear_gelu_case(32, 32, dtype)],
                    "cross_entropy": [cross_entropy_case(32, 256, dtype)],
                    "fused_linear_cross_entropy": [flce_case(32, 32, 256, dtype)],
                }[op]
                continue
            sizes = MODEL_SIZES[:2] if quick else MODEL_SIZES
            tokens = TOKENS[1:2] if quick else TOKENS
            if op == "flash_attention":
                seq_lens = SEQ_LENS[::2] if quick else SEQ_LENS
                for size in sizes:
                    for D in head_dims:
                        if HIDDEN[size] % D:
                            continue  # e.g. GPT-2 XL's 1600 has no 128-wide heads
                        for T in seq_lens:
                            B = max(1, TOKENS[-1] // T)  # 16k tokens a batch
                            cases.append(attention_case(B, HIDDEN[size] // D, T, D, dtype, size))
            elif op == "cross_entropy":
                cases += [cross_entropy_case(N, VOCAB, dtype) for N in tokens]
            else:
                for size in sizes:
                    for N in tokens:
                        C = HIDDEN[size]
                        cases.append({"layer_norm": lambda: layer_norm_case(N, C, dtype, size),
                                      "linear_gelu": lambda: linear_gelu_case(N, C, dtype, size),
                                      "fused_linear_cross_entropy":
                                          lambda: flce_case(N, C, VOCAB, dtype, size)}[op]())
    return cases


# ----------------------------------------------------------------------------- providers

def naive_attention(q, k, v, causal=True, sm_scale=None, dropout_p=0.0):
    """nanoGPT's eager attention, in the input dtype: (B, H, T, T) scores in memory."""
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    att = (q @ k.transpose(-2, -1)) * scale
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(Tk - Tq + 1)
        att = att.masked_fill(mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ v


def sdpa_attention(backend=None):
    """F.scaled_dot_product_attention, with one backend forced (or PyTorch's choice)."""
    from torch.nn.attention import sdpa_kernel

    def attention(q, k, v, causal=True, sm_scale=None, dropout_p=0.0):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)

    return attention


def _sdpa_backend(name):
    from torch.nn.attention import SDPBackend

    attr = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
            "sdpa-cudnn": "CUDNN_ATTENTION"}[name]
    if not hasattr(SDPBackend, attr):
        raise Skip(f"this torch ({torch.__version__}) has no SDPBackend.{attr}")
    return getattr(SDPBackend, attr)


def liger_op(op):
    """Liger-Kernel's version of ``op`` with our reference's signature, through its loss
    modules and its LayerNorm function (the APIs that kept their signatures across releases);
    Skip when ``liger_kernel`` is not importable or has no such op."""
    if op not in ("layer_norm", "cross_entropy", "fused_linear_cross_entropy"):
        raise Skip(f"Liger-Kernel has no {op}")
    try:
        import liger_kernel.transformers as liger
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    except ImportError as err:
        raise Skip(f"liger_kernel is not importable ({err}); pip install liger-kernel") from None

    def first(out):
        return out[0] if isinstance(out, tuple) else out  # some releases add the z-loss

    if op == "layer_norm":
        def layer_norm(x, weight, bias, eps=1e-5):
            return LigerLayerNormFunction.apply(x, weight, bias, eps)
        return layer_norm
    if op == "cross_entropy":
        def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
            loss = liger.LigerCrossEntropyLoss(ignore_index=ignore_index, reduction=reduction)
            return first(loss(logits, target))
        return cross_entropy

    def flce(x, weight, target, bias=None, ignore_index=-100, reduction="mean"):
        loss = liger.LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index,
                                                      reduction=reduction)
        return first(loss(weight, x, target, bias))
    return flce


def providers_for(op):
    return COMMON_PROVIDERS + (ATTENTION_PROVIDERS if op == "flash_attention" else ())


def make_provider(name, op, device):
    """The callable for provider ``name`` of kernel ``op``; raises Skip when unavailable."""
    import gpt_kernels

    if name == "triton":
        if gpt_kernels.TRITON_MISSING is not None:
            raise Skip(f"no Triton: {gpt_kernels.TRITON_MISSING}")
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise Skip("Triton needs a GPU, or TRITON_INTERPRET=1 (set before start) on the CPU")
        return functools.partial(getattr(gpt_kernels, op), backend="triton")
    if name == "torch":
        return getattr(gpt_kernels.reference, op)
    if name == "compile":
        torch._dynamo.reset()  # a fresh cache: no recompile limit, no stale graphs
        return torch.compile(getattr(gpt_kernels.reference, op), dynamic=False)
    if name == "liger":
        return liger_op(op)
    if name == "naive":
        return naive_attention
    if name == "sdpa":
        return sdpa_attention()
    if name.startswith("sdpa-"):
        return sdpa_attention(_sdpa_backend(name))
    raise ValueError(f"unknown provider {name!r}")


# ----------------------------------------------------------------------------- running

def _grad_like(out):
    if out.dim() == 0:
        return torch.ones_like(out)
    return torch.randn_like(out)


def _clear_grads(tensors):
    for t in tensors:
        t.grad = None


def measure_provider(case, provider, modes, device, args, kwargs, ceilings, cfg, smoke):
    """Time one provider on one case in each mode; a failure is a skipped record."""
    base = dict(kernel=case.op, provider=provider, dtype=case.dtype, shape=case.shape,
                label=case.label, size=case.size)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    try:
        fn = make_provider(provider, case.op, device)
        out = fn(*args, **kwargs)  # first call: compiles (Triton autotune, torch.compile)
        grad = _grad_like(out)
        out.backward(grad)
        common.sync(device)
        del out
    except Exception as err:  # noqa: BLE001 - any failure of a provider is recorded
        reason = err.args[0] if isinstance(err, Skip) else common.failure_reason(err)
        _clear_grads(leaves)
        common.free_memory(device)
        return [dict(base, mode=m, skipped=True, reason=reason) for m in modes]

    records = []
    for mode in modes:
        try:
            if mode == "fwd":
                def step():
                    return fn(*args, **kwargs)
                state = None
            elif mode == "bwd":
                state = fn(*args, **kwargs)

                def step(state=state):
                    state.backward(grad, retain_graph=True)
            else:
                def step():
                    fn(*args, **kwargs).backward(grad)
                state = None
            timing = common.time_ms(step, device, smoke, grad_to_none=leaves,
                                    warmup=cfg["warmup"], rep=cfg["rep"])
            _clear_grads(leaves)
            peak = common.peak_memory(step, device)
            del state, step
            _clear_grads(leaves)
            metric, amount = case.work(mode)
            value = amount / (timing["ms"] * 1e-3) / (common.TFLOP if metric == "tflops" else common.GB)
            ceiling = ceilings["matmul_tflops" if metric == "tflops" else "copy_gbps"]
            records.append(dict(base, mode=mode, skipped=False, **timing, metric=metric,
                                value=value, **{metric: value},
                                fraction_of_ceiling=value / ceiling if ceiling else None,
                                peak_mem_bytes=peak))
        except Exception as err:  # noqa: BLE001
            records.append(dict(base, mode=mode, skipped=True, reason=common.failure_reason(err)))
        finally:
            _clear_grads(leaves)
            common.free_memory(device)
    return records


def _fmt(rec, smoke):
    head = f"{rec['kernel']:<27} {rec['label']:<26} {rec['dtype']:<9} {rec['mode']:<8} {rec['provider']:<15}"
    if rec["skipped"]:
        return f"{head} skipped: {rec['reason']}"
    if smoke:
        return f"{head} ran (smoke: no timing shown)"
    unit = "TFLOP/s" if rec["metric"] == "tflops" else "GB/s"
    frac = rec["fraction_of_ceiling"]
    mem = rec["peak_mem_bytes"]
    return (f"{head} {rec['ms']:9.3f} ms {rec['value']:8.1f} {unit:<7}"
            + (f" ({frac:4.0%} of ceiling)" if frac is not None else "")
            + (f" peak {mem / 2**20:9.1f} MiB" if mem is not None else ""))


def run(cfg):
    smoke = cfg["smoke"]
    ops, modes, dtypes = cfg["ops"], cfg["modes"], cfg["dtypes"]  # tuples, checked by parse()
    wanted, head_dims = cfg["providers"], cfg["head_dims"]
    device = common.check_can_time(smoke, "kernel benchmarks")
    if not cfg["compile"]:
        wanted = tuple(p for p in wanted if p != "compile")
    import torch._functorch.config as functorch_config

    # the "bwd" mode calls backward twice on one graph (retain_graph=True), which
    # torch.compile's donated buffers forbid; the setting is restored at the end
    donated = getattr(functorch_config, "donated_buffer", None)
    if donated is not None:
        functorch_config.donated_buffer = False
    try:
        return _run(cfg, smoke, device, ops, modes, dtypes, wanted, head_dims)
    finally:
        if donated is not None:
            functorch_config.donated_buffer = donated


def _others(path, meta, ops):
    """The measurements already in the results file at ``path`` of kernels this run does not
    run (kept), or [] when the file is another device's or smoke-ness's."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    if doc.get("device") != meta["device"] or doc.get("smoke") != meta["smoke"]:
        return []
    return [r for r in (doc.get("kernels") or {}).get("measurements", [])
            if r.get("kernel") not in ops]


def _run(cfg, smoke, device, ops, modes, dtypes, wanted, head_dims):
    t_start = time.perf_counter()
    meta = common.metadata(device, smoke)
    common.log(f"kernel benchmarks on {meta['device']} ({meta['host']}), torch "
               f"{meta['versions']['torch']}, triton {meta['versions']['triton']}"
               + (" -- SMOKE RUN: tiny sizes, one call each, not performance numbers" if smoke else ""))
    ceilings = common.measure_ceilings(device, smoke)
    common.log(f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s (read + write), "
               f"{ceilings['matmul_dtype']} matmul {ceilings['matmul_tflops']:.1f} TFLOP/s")

    out = cfg["out"] or common.default_results_path(meta)
    kept = _others(out, meta, ops)
    cases = build_cases(ops, dtypes, smoke, cfg["quick"], head_dims)
    records, t0 = [], time.perf_counter()

    def save(done):
        payload = dict(
            config={k: v for k, v in cfg.items() if k != "out"},
            seconds=time.perf_counter() - t0, complete=done,
            providers={op: [p for p in providers_for(op) if p in wanted] for op in ops},
            compile_skipped=None if cfg["compile"] else "torch.compile provider left out (--compile=False)",
            measurements=kept + records,
        )
        return common.write_results(out, meta, "kernels", payload, ceilings)

    path = save(False)
    for i, case in enumerate(cases):
        if cfg["budget_s"] and time.perf_counter() - t_start > cfg["budget_s"]:
            reason = f"not run: --budget_s={cfg['budget_s']:g} ran out"
            for late in cases[i:]:
                records += [dict(kernel=late.op, provider=p, dtype=late.dtype, shape=late.shape,
                                 label=late.label, size=late.size, mode=m, skipped=True,
                                 reason=reason)
                            for p in providers_for(late.op) if p in wanted for m in modes]
            common.log(f"{len(cases) - i} of {len(cases)} shapes {reason}")
            break
        torch.manual_seed(0)
        args, kwargs = case.make(device)
        for provider in providers_for(case.op):
            if provider not in wanted:
                continue
            for rec in measure_provider(case, provider, modes, device, args, kwargs,
                                        ceilings, cfg, smoke):
                records.append(rec)
                common.log(_fmt(rec, smoke))
            path = save(False)  # a run stopped now keeps every finished measurement
        del args, kwargs
        common.free_memory(device)

    path = save(True)
    n_skip = sum(r["skipped"] for r in records)
    common.log(f"{len(records)} measurements ({n_skip} skipped) written to {path}"
               + ("" if smoke else "; summarise with: python -m bench.report"))
    return path


def main(argv=None):
    return run(parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    run_main(main, PROG)
