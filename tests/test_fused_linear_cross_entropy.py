"""Fused linear cross-entropy against F.cross_entropy(x @ W.T + b) in float64.

Every matmul is one of the module's Triton kernels (the logits kernel with its log-sum-exp
epilogue, dgrad and wgrad forming dlogits in their operand loads), run in Triton's
interpreter on CPU: float32, float16, and bfloat16 (the kernels upcast bfloat16 dot operands
there, where tl.dot on bfloat16 is wrong). Small shapes, with the chunk size forced down
where the point is many ragged chunks.
"""

import importlib

from functools import partial

import pytest
import torch
import torch.nn.functional as F
import triton

import gpt_kernels
from gpt_kernels import _autotune
from tests.helpers import TOL, assert_close

flce_mod = importlib.import_module("gpt_kernels.fused_linear_cross_entropy")
flce = partial(flce_mod.fused_linear_cross_entropy, backend="triton")  # the kernel, whatever GPT_KERNELS says

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
IGNORE = -1  # what the model passes


def make_inputs(N, C, V, dtype, bias=True, p_ignore=0.3, device="cpu", x_scale=1.0,
                w_scale=None):
    """Activations ~ N(0, 1) (post-LayerNorm) and a weight scaled so logits have std ~ 2."""
    w_scale = 2.0 / C ** 0.5 if w_scale is None else w_scale
    x = (torch.randn(N, C, device=device) * x_scale).to(dtype)
    w = (torch.randn(V, C, device=device) * w_scale).to(dtype)
    b = (torch.randn(V, device=device) * 0.5).to(dtype) if bias else None
    target = torch.randint(0, V, (N,), device=device)
    target[torch.rand(N, device=device) < p_ignore] = IGNORE
    return x, w, b, target


def upstream(loss, reduction):
    if reduction == "none":
        return torch.randn_like(loss)
    return torch.full_like(loss, 3.0)  # "loss x 3"


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def f64_reference(x, w, b, target, reduction, grad_out, ignore_index=IGNORE):
    """Loss and grads of F.cross_entropy(x @ w.T + b) on float64 copies (independent of kernels)."""
    xd, wd, bd = leaves(*(t.double() if t is not None else None for t in (x, w, b)))
    logits = xd @ wd.t()
    if bd is not None:
        logits = logits + bd
    loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction=reduction)
    if reduction == "mean" and not (target != ignore_index).any():
        loss = logits.sum() * 0.0  # torch: NaN for an all-ignored mean; ours (by design): 0
    loss.backward(grad_out.double())
    return loss.detach(), [t.grad if t is not None else None for t in (xd, wd, bd)]


def run_flce(x, w, b, target, reduction, grad_out=None, ignore_index=IGNORE):
    xl, wl, bl = leaves(x, w, b)
    loss = flce(xl, wl, target, bl, ignore_index=ignore_index, reduction=reduction)
    g = upstream(loss, reduction) if grad_out is None else grad_out
    loss.backward(g)
    return loss, [t.grad if t is not None else None for t in (xl, wl, bl)], g


def check_against_reference(x, w, b, target, reduction, tol=None):
    tol = TOL[x.dtype] if tol is None else tol
    loss, grads, g = run_flce(x, w, b, target, reduction)
    ref_loss, ref_grads = f64_reference(x, w, b, target, reduction, g)
    assert loss.dtype == torch.float32
    # the logits are a matmul in x's dtype here, so the loss carries that dtype's rounding
    assert_close(loss, ref_loss, tol, "loss", atol=1e-7)
    for name, t, got, ref in zip(("x", "weight", "bias"), (x, w, b), grads, ref_grads):
        if t is None:
            continue
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert_close(got, ref, tol, f"grad {name}", atol=1e-7)


# --------------------------------------------------------------------------- correctness

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_vs_f64(dtype, reduction, monkeypatch):
    monkeypatch.setattr(flce_mod, "chunk_rows", lambda N, V, C, *_: 16)  # 5 chunks, ragged last
    check_against_reference(*make_inputs(71, 100, 1000, dtype), reduction)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N, C, V", [(1, 96, 1000), (7, 100, 1871), (423, 96, 1000),
                                     (3, 64, 50257)])
def test_odd_shapes_default_chunking(N, C, V, bias):
    check_against_reference(*make_inputs(N, C, V, torch.float32, bias=bias), "mean")


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_chunk_sizes_agree(rows, monkeypatch):
    monkeypatch.setattr(flce_mod, "chunk_rows", lambda N, V, C, *_: rows)
    check_against_reference(*make_inputs(37, 32, 300, torch.float32), "sum")


def test_chunk_rows_rule():
    rule = flce_mod.chunk_rows
    # GPT-2 training, bf16: 4 chunks of 2048 rows (206 MB each) within the 256 MiB budget
    assert rule(8192, 50304, 768, 2) == 2048
    assert rule(8192, 50304, 768, 4) == 1216  # float32: 7 equal chunks, a multiple of 64
    assert rule(5, 50304, 768, 2) == 5
    assert rule(100000, 1000, 768, 2) == 100000  # all logits fit the budget: one chunk
    assert rule(8192, 50304, 768, 2, budget=8192 * 50304 * 2) == 8192
    assert rule(8192, 50304, 768, 2, budget=1) == 64  # never below 64 rows
    for N, V, C, size in [(1, 7, 3, 4), (423, 1000, 96, 2), (8192, 50257, 1600, 2),
                          (70001, 50304, 768, 2), (3000, 50257, 768, 4)]:
        rows = rule(N, V, C, size)
        assert 1 <= rows <= N
        assert rows * V * size <= flce_mod.CHUNK_BUDGET_BYTES or rows == 64
        chunks = -(-N // rows)
        assert chunks == -(-N // max(64, flce_mod.CHUNK_BUDGET_BYTES // (V * size))) or rows == N


def test_backward_with_and_without_retain_graph_agree():
    # the saved gradients are scaled into new tensors either way: the same numbers
    x, w, b, target = make_inputs(20, 32, 300, torch.float32)
    grads = []
    for retain in (True, False):
        xl, wl, bl = leaves(x, w, b)
        loss = flce(xl, wl, target, bl, ignore_index=IGNORE, reduction="mean")
        grads.append(torch.autograd.grad(loss, (xl, wl, bl), torch.tensor(0.5),
                                         retain_graph=retain))
    for a, c in zip(*grads):
        assert torch.equal(a, c)


def test_large_logits_stay_finite():
    # logits ~ 1e4 in float32: the loss and every gradient stay finite and close
    x, w, b, target = make_inputs(19, 32, 1000, torch.float32, x_scale=30.0, w_scale=30.0)
    loss, grads, g = run_flce(x, w, b, target, "mean")
    assert torch.isfinite(loss).all() and all(torch.isfinite(t).all() for t in grads)
    ref_loss, _ = f64_reference(x, w, b, target, "mean", g)
    assert_close(loss, ref_loss, 1e-5, "loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored_gives_zero_not_nan(reduction):
    x, w, b, _ = make_inputs(9, 32, 300, torch.float32)
    target = torch.full((9,), IGNORE)
    loss, grads, _ = run_flce(x, w, b, target, reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    for t in grads:
        assert torch.equal(t, torch.zeros_like(t))


def test_default_ignore_index():
    x, w, b, target = make_inputs(23, 32, 300, torch.float32)
    target[target == IGNORE] = -100
    xl, wl, bl = leaves(x, w, b)
    loss = flce(xl, wl, target, bl)
    loss.backward()
    ref_loss, ref_grads = f64_reference(x, w, b, target, "mean", torch.tensor(1.0), -100)
    assert_close(loss, ref_loss, 1e-5, "loss")
    assert_close(xl.grad, ref_grads[0], 1e-5, "grad x")


@pytest.mark.parametrize("layout", ["x_transposed", "weight_slice", "strided_target"])
def test_non_contiguous_inputs(layout):
    x, w, b, target = make_inputs(29, 48, 500, torch.float32)
    if layout == "x_transposed":
        x = x.t().contiguous().t()
    elif layout == "weight_slice":
        w = torch.cat([w, torch.randn(500, 5)], dim=1)[:, :48]
    else:
        target = torch.stack([target, target], dim=1)[:, 0]
    assert not (x.is_contiguous() and w.is_contiguous() and target.is_contiguous())
    check_against_reference(x, w, b, target, "mean")


def test_autocast_casts_like_linear_and_returns_float32_grads():
    # x and weight float32 under bf16 autocast: the matmuls run in bf16 (as F.linear would),
    # the grads come back float32 (the parameters' dtype), from float32 accumulators
    x, w, b, target = make_inputs(45, 64, 700, torch.float32)
    xl, wl, bl = leaves(x, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = flce(xl, wl, target, bl, ignore_index=IGNORE)
    loss.backward(torch.tensor(3.0))
    bf = [t.to(torch.bfloat16) for t in (x, w, b)]
    ref_loss, ref_grads = f64_reference(*bf, target, "mean", torch.tensor(3.0))
    assert loss.dtype == torch.float32
    assert_close(loss, ref_loss, TOL[torch.bfloat16], "loss")
    for name, got, ref in zip(("x", "weight", "bias"), (xl.grad, wl.grad, bl.grad), ref_grads):
        assert got.dtype == torch.float32, name
        assert_close(got, ref, TOL[torch.bfloat16], f"grad {name}")


# --------------------------------------------------------------------------- autograd contract

@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_callers_tensors_unchanged(reduction):
    x, w, b, target = make_inputs(33, 32, 300, torch.float16)
    xl, wl, bl = leaves(x, w, b)
    before = [t.detach().clone() for t in (xl, wl, bl, target)]
    loss = flce(xl, wl, target, bl, ignore_index=IGNORE, reduction=reduction)
    loss.backward(upstream(loss, reduction))
    for t, ref in zip((xl, wl, bl, target), before):
        assert torch.equal(t.detach(), ref)


def test_no_grad_and_inputs_without_grad():
    x, w, b, target = make_inputs(40, 32, 300, torch.float32)
    ref_loss, _ = f64_reference(x, w, b, target, "mean", torch.tensor(1.0))
    with torch.no_grad():
        out = flce(*leaves(x, w), target, leaves(b)[0], ignore_index=IGNORE)
    assert not out.requires_grad
    assert_close(out, ref_loss, 1e-5, "loss (no_grad)")
    out = flce(x, w, target, b, ignore_index=IGNORE)
    assert not out.requires_grad
    assert_close(out, ref_loss, 1e-5, "loss (no requires_grad)")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("trained", [0, 2], ids=["x", "bias"])
def test_only_some_inputs_require_grad(reduction, trained):
    # a frozen lm_head (only x gets a gradient), or a frozen weight with a trained bias
    # (wgrad runs for the bias alone, no grad_weight)
    inputs = list(make_inputs(30, 32, 300, torch.float32))
    inputs[trained] = leaf = inputs[trained].clone().requires_grad_(True)
    x, w, b, target = inputs
    loss = flce(x, w, target, b, ignore_index=IGNORE, reduction=reduction)
    g = upstream(loss, reduction)
    loss.backward(g)
    _, ref_grads = f64_reference(*(t.detach() for t in (x, w, b)), target, reduction, g)
    assert all(t.grad is None for t in (x, w, b) if t is not leaf)
    assert_close(leaf.grad, ref_grads[trained], 1e-5, f"grad {['x', 'w', 'bias'][trained]}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_twice_with_retain_graph(reduction):
    x, w, b, target = make_inputs(20, 32, 300, torch.float32)
    xl, wl, bl = leaves(x, w, b)
    loss = flce(xl, wl, target, bl, ignore_index=IGNORE, reduction=reduction)
    g = torch.ones_like(loss)
    first = torch.autograd.grad(loss, (xl, wl, bl), g, retain_graph=True)
    second = torch.autograd.grad(loss, (xl, wl, bl), g)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_rerun_is_bit_identical(reduction, monkeypatch):
    # fixed chunk order, per-row kernel programs, no atomics: reruns agree bit for bit
    monkeypatch.setattr(flce_mod, "chunk_rows", lambda N, V, C, *_: 8)
    x, w, b, target = make_inputs(50, 32, 300, torch.float32)
    g = torch.randn(50) if reduction == "none" else torch.tensor(3.0)
    (l1, g1, _), (l2, g2, _) = (run_flce(x, w, b, target, reduction, g) for _ in range(2))
    assert torch.equal(l1, l2)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)


# --------------------------------------------------------------------------- bad input

def _bad(**change):
    args = dict(x=torch.randn(4, 8), weight=torch.randn(10, 8),
                target=torch.zeros(4, dtype=torch.long), bias=None)
    args.update(change)
    return args


@pytest.mark.parametrize("args, exc, name", [
    (_bad(x=torch.randint(0, 3, (4, 8))), TypeError, "x"),
    (_bad(x=torch.randn(4, 8, dtype=torch.float64),
          weight=torch.randn(10, 8, dtype=torch.float64)), TypeError, "x"),
    (_bad(x=torch.randn(32)), ValueError, "x"),
    (_bad(weight=torch.randn(10, 9)), ValueError, "weight"),
    (_bad(weight=torch.randn(10, 8, dtype=torch.float16)), TypeError, "weight"),
    (_bad(bias=torch.randn(11)), ValueError, "bias"),
    (_bad(target=torch.zeros(5, dtype=torch.long)), ValueError, "target"),
    (_bad(target=torch.tensor([0, 1, 10, 2])), ValueError, "target"),
    (_bad(target=torch.zeros(4)), TypeError, "target"),
])
def test_bad_input_raises(args, exc, name):
    with pytest.raises(exc, match=f"^{name} "):
        flce(args["x"], args["weight"], args["target"], args["bias"])


def test_bad_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        flce(**_bad(), reduction="avg")


# --------------------------------------------------------------------------- slow

@pytest.mark.slow
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gpt2_sizes_in_the_interpreter(reduction, monkeypatch):
    """GPT-2's lm_head (C=768, V=50304) over three token chunks, float32 (make test-all;
    minutes in Triton's interpreter, which runs the fused matmuls at ~2 s per token row)."""
    monkeypatch.setattr(flce_mod, "chunk_rows", lambda N, V, C, *_: 16)  # 3 chunks, ragged
    check_against_reference(*make_inputs(40, 768, 50304, torch.float32), reduction)


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_gpt2_sizes_vs_f64(dtype, reduction):
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 path: IEEE matmuls
    check_against_reference(*make_inputs(4096, 768, 50257, dtype, device="cuda"), reduction)


@pytest.mark.gpu
def test_gpu_autocast_bf16():
    x, w, b, target = make_inputs(2048, 768, 50304, torch.float32, device="cuda")
    xl, wl, bl = leaves(x, w, b)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = flce(xl, wl, target, bl, ignore_index=IGNORE)
    loss.backward()
    ref_loss, ref_grads = f64_reference(*(t.to(torch.bfloat16) for t in (x, w, b)), target,
                                        "mean", torch.tensor(1.0, device="cuda"))
    assert_close(loss, ref_loss, TOL[torch.bfloat16], "loss")
    for name, got, ref in zip(("x", "weight", "bias"), (xl.grad, wl.grad, bl.grad), ref_grads):
        assert got.dtype == torch.float32
        assert_close(got, ref, TOL[torch.bfloat16], f"grad {name}")


@pytest.mark.gpu
def test_gpu_peak_memory_below_unfused():
    # GPT-2 training sizes in bf16: the fused path must not hold (N, V) logits
    N, C, V = 8192, 768, 50304
    x, w, _, target = make_inputs(N, C, V, torch.bfloat16, bias=False, device="cuda")

    def peak(fn):
        xl, wl = leaves(x, w)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(xl, wl).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    unfused = peak(lambda a, c: F.cross_entropy((a @ c.t()).float(), target, ignore_index=IGNORE))
    fused = peak(lambda a, c: flce(a, c, target, ignore_index=IGNORE))
    logits_bytes = N * V * 2  # 824 MB of bf16 logits that the fused path never holds
    assert fused < logits_bytes < unfused and 4 * fused < unfused, (fused, unfused)


@pytest.mark.gpu
def test_gpu_rerun_is_bit_identical():
    x, w, b, target = make_inputs(4096, 768, 50304, torch.bfloat16, device="cuda")
    g = torch.tensor(3.0, device="cuda")
    (l1, g1, _), (l2, g2, _) = (run_flce(x, w, b, target, "mean", g) for _ in range(2))
    assert torch.equal(l1, l2)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)


# --------------------------------------------------------------------------- the kernels one by one

def _chunk_buffers(n, V):
    T = -(-V // flce_mod.STAT_N)
    return torch.full((n, T), float("nan")), torch.full((n,), float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_logits_kernel_statistics(dtype):
    # per (row, 128-column tile): the tile's log-sum-exp and the softmax within the tile,
    # exp(logit - tile lse), in x's dtype; the target's logit. V = 300: a ragged last tile
    n, C, V = 21, 40, 300
    x, w, b, target = make_inputs(n, C, V, dtype)
    tile_lse, target_logit = _chunk_buffers(n, V)
    e = torch.empty(n, V, dtype=dtype)
    flce_mod.flce_logits(x, w, b, target, e, tile_lse, target_logit)
    logits = x.double() @ w.double().t() + b.double()
    tiles = logits.split(flce_mod.STAT_N, dim=1)
    ref_tile_lse = torch.stack([t.logsumexp(1) for t in tiles], dim=1)
    ref_e = torch.cat([t.softmax(1) for t in tiles], dim=1)
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # the logits are a matmul in x's dtype
    assert_close(tile_lse, ref_tile_lse, tol, "tile lse")
    assert_close(e, ref_e, tol, "exp(logit - tile lse)")
    valid = target != IGNORE
    assert_close(target_logit[valid], logits[valid, target[valid]], tol, "target logit")
    lse, loss = torch.empty(n), torch.empty(n)
    flce_mod.flce_lse(tile_lse, target, target_logit, IGNORE, lse, loss)
    ref_lse = logits.logsumexp(1)
    assert_close(lse, ref_lse, tol, "lse")
    assert torch.equal(loss[~valid], torch.zeros(int((~valid).sum())))
    assert_close(loss[valid], ref_lse[valid] - logits[valid, target[valid]], tol, "loss")


def test_wgrad_overwrites_then_accumulates():
    # the first chunk's wgrad stores without reading (the accumulators start as NaN here:
    # nothing is zero-filled), a later chunk's adds into them; rows scaled per row
    n, C, V = 19, 48, 260
    x, w, b, target = make_inputs(n, C, V, torch.float32)
    tile_lse, target_logit = _chunk_buffers(n, V)
    e, lse, loss = torch.empty(n, V), torch.empty(n), torch.empty(n)
    flce_mod.flce_logits(x, w, b, target, e, tile_lse, target_logit)
    flce_mod.flce_lse(tile_lse, target, target_logit, IGNORE, lse, loss)
    scale = torch.randn(n)
    gw, gb = torch.full((V, C), float("nan")), torch.full((V,), float("nan"))
    flce_mod.flce_grad_weight(e, tile_lse, lse, target, scale, IGNORE, x, gw, gb, False)
    logits = x.double() @ w.double().t() + b.double()
    valid = (target != IGNORE).double()
    onehot = F.one_hot(target.clamp(min=0), V).double()
    dlogits = (logits.softmax(1) - onehot) * (scale.double() * valid)[:, None]
    assert_close(gw, dlogits.t() @ x.double(), 1e-5, "grad_weight, first chunk")
    assert_close(gb, dlogits.sum(0), 1e-5, "grad_bias, first chunk")
    flce_mod.flce_grad_weight(e, tile_lse, lse, target, scale, IGNORE, x, gw, gb, True)
    assert_close(gw, 2 * dlogits.t() @ x.double(), 1e-5, "grad_weight, accumulated")
    assert_close(gb, 2 * dlogits.sum(0), 1e-5, "grad_bias, accumulated")
    gx = torch.full((n, C), float("nan"))
    flce_mod.flce_grad_x(e, tile_lse, lse, target, scale, IGNORE, w, gx)
    assert_close(gx, dlogits @ w.double(), 1e-5, "grad_x")


def test_every_tile_fits_the_statistics_tiles():
    """The logits kernel's vocabulary tile is one statistics tile (its epilogue writes that
    tile's log-sum-exp) and the gradient kernels' tiles divide it (each looks up one tile's
    statistic): a table entry breaking this would compile and give wrong gradients on a GPU,
    where the interpreter's single tile never tries it."""
    for kind, tiles in flce_mod._LOGITS_TILES.items():
        assert all(t[1] == flce_mod.STAT_N for t in tiles), ("logits", kind)
    for table in (flce_mod._DX_TILES, flce_mod._DW_TILES):
        for kind, tiles in table.items():
            assert all(flce_mod.STAT_N % t[1] == 0 for t in tiles), kind
    assert all(t[1] == flce_mod.STAT_N or flce_mod.STAT_N % t[1] == 0
               for t in flce_mod._INTERPRET_TILES.values())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("rows", [32, 24])  # chunks 32 + 8 and 24 + 16: a ragged last chunk
def test_autotuning_never_replays_an_accumulating_launch(rows, device, monkeypatch):
    """On a GPU the autotuner benchmarks a new key on the launch's real arguments, many times.
    A wgrad launch that adds into the gradients (every chunk after the first) must never be
    the one benchmarked, or its chunk is added once per timing run. In the interpreter only
    one config is offered, so here each kernel gets the real Triton autotuner with two tiles
    and a timer that launches three times, as Triton's do_bench does hundreds of times (on a
    GPU too: there the test suite's GPT_KERNELS_AUTOTUNE=first would otherwise skip timing)."""
    launches = []

    def timer(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
            launches.append(1)
        return [1.0, 1.0, 1.0]

    monkeypatch.setattr(_autotune, "bench", timer)
    for name in ("_flce_logits", "_flce_dx", "_flce_dw"):
        kernel = getattr(flce_mod, name)
        tiles = [triton.Config({"BLOCK_M": m, "BLOCK_N": flce_mod.STAT_N, "BLOCK_K": k,
                                "GROUP_M": 4}, num_warps=4, num_stages=1)
                 for m, k in ((16, 32), (32, 64))]
        monkeypatch.setattr(flce_mod, name, _autotune.autotune(tiles, kernel.keys)(kernel.fn))
    x, w, b, target = make_inputs(40, 48, 300, torch.float32, device=device)
    _, grads = f64_reference(x, w, b, target, "sum", torch.tensor(1.0, device=device))
    _, *ours = flce_mod.flce_pass(x, w, b, target, IGNORE, need_x=True, need_weight=True,
                                  need_bias=True, rows=rows)
    assert launches, "the autotuner did not benchmark"
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), ours, grads):
        assert_close(got, want, 1e-5 if device == "cpu" else 1e-2, name)  # TF32 on a GPU


@pytest.mark.parametrize("size", [1.0, 1e-5])
def test_float16_none_with_small_upstream_gradients(size):
    """Reduction "none" under float16 autocast, each row's loss weighted by a gradient of
    ``size``: 1e-5 is what ``loss.mean()`` over ~10^5 rows hands back. Weighting the float16
    dlogits directly flushed softmax * 1e-5 to zero (0.06-0.4 relative error); against float64
    the gradients must be as good as for gradients of order one."""
    x, w, b, target = make_inputs(16, 32, 256, torch.float32, w_scale=0.05)
    grad_out = (torch.rand(16) + 0.5) * size
    _, want = f64_reference(x, w, b, target, "none", grad_out)
    xl, wl, bl = leaves(x, w, b)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = flce(xl, wl, target, bl, ignore_index=IGNORE, reduction="none")
    loss.backward(grad_out)
    for name, got, ref in zip(("grad_x", "grad_weight", "grad_bias"), (xl.grad, wl.grad, bl.grad), want):
        assert_close(got, ref, TOL[torch.float16], name)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16_without_bias(reduction, monkeypatch):
    monkeypatch.setattr(flce_mod, "chunk_rows", lambda N, V, C, *_: 24)  # 2 chunks, ragged
    check_against_reference(*make_inputs(41, 72, 700, torch.float16, bias=False), reduction)


def test_ignore_index_inside_the_vocabulary():
    # rows whose target equals an ignore_index that is also a column are ignored
    x, w, b, target = make_inputs(33, 32, 300, torch.float32, p_ignore=0.0)
    target[::3] = 7
    loss, grads, g = run_flce(x, w, b, target, "mean", ignore_index=7)
    ref_loss, ref_grads = f64_reference(x, w, b, target, "mean", g, ignore_index=7)
    assert_close(loss, ref_loss, 1e-5, "loss")
    for name, got, ref in zip(("x", "weight", "bias"), grads, ref_grads):
        assert_close(got, ref, 1e-5, f"grad {name}")


def test_no_gradient_no_chunk_buffer(monkeypatch):
    # the loss alone (no_grad, evaluation, the "none" forward) never allocates the (rows, V)
    # buffer of exponentials: only the float32 tile statistics
    x, w, b, target = make_inputs(40, 32, 3000, torch.float16)
    sizes = []
    real_empty = torch.empty

    def empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(flce_mod.torch, "empty", empty)
    flce_mod.flce_pass(x, w, b, target, IGNORE)
    assert max(sizes) < 40 * 3000 // 10
    sizes.clear()
    flce_mod.flce_pass(x, w, b, target, IGNORE, need_x=True)
    assert max(sizes) == 40 * 3000
