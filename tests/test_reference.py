"""The PyTorch references against independent formulas, plus validation and dispatch.

The references call torch.nn.functional (SDPA, layer_norm, linear + gelu, cross_entropy), so
the oracle here is the written-out math in float64, sharing no op with them: einsum products,
masks built from absolute positions, explicit mean/variance, log-sum-exp and the tanh GELU.
Gradients of every input are compared with autograd through those formulas, in float64.

One file although over 500 lines: the five ops' references, their shared input validation and
the backend dispatch are one contract (`gpt_kernels/reference.py`), checked section by section.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from torch.utils._python_dispatch import TorchDispatchMode

import gpt_kernels
import gpt_kernels._library
from gpt_kernels import _validate, reference
from tests.helpers import TOL, assert_close

HALF_DTYPES = [torch.float16, torch.bfloat16]


def grads(out, inputs, seed_grad=None):
    """d(sum(out * g))/d(inputs) for a fixed random g (a plain sum hides sign errors)."""
    g = torch.randn_like(out) if seed_grad is None else seed_grad
    return torch.autograd.grad(out, [t for t in inputs if t is not None], g)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


# --------------------------------------------------------------------------- attention

def naive_attention(q, k, v, causal, sm_scale=None):
    """float64 einsum; query i is at absolute position Tk - Tq + i and sees keys j <= it."""
    q, k, v = q.double(), k.double(), v.double()
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    allowed = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        allowed = torch.tensor([[j <= Tk - Tq + i for j in range(Tk)] for i in range(Tq)])
    s = s.masked_fill(~allowed, -1e300)
    e = torch.exp(s - s.amax(dim=-1, keepdim=True)) * allowed
    p = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("bhij,bhjd->bhid", p, v)


def bottom_right_mask(Tq, Tk):
    return torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)


def qkv(B, H, Tq, Tk, D, dtype=torch.float64):
    q = torch.randn(B, H, Tq, D, dtype=dtype)
    k = torch.randn(B, H, Tk, D, dtype=dtype)
    v = torch.randn(B, H, Tk, D, dtype=dtype)
    return q, k, v


SEQ = [(1, 1), (17, 17), (100, 100), (1, 17), (17, 100), (1, 100)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [16, 64])
@pytest.mark.parametrize("Tq, Tk", SEQ)
@pytest.mark.parametrize("B, H", [(1, 1), (3, 5)])
def test_attention_vs_naive(B, H, Tq, Tk, D, causal):
    q, k, v = qkv(B, H, Tq, Tk, D)
    out = reference.flash_attention(q, k, v, causal=causal)
    assert out.dtype == torch.float64 and out.shape == (B, H, Tq, D)
    assert_close(out, naive_attention(q, k, v, causal), 1e-12, "attention")


def test_attention_noncausal_more_queries_than_keys():
    q, k, v = qkv(2, 3, 17, 5, 16)
    out = reference.flash_attention(q, k, v, causal=False, sm_scale=0.3)
    assert_close(out, naive_attention(q, k, v, False, 0.3), 1e-12, "attention")


@pytest.mark.parametrize("sm_scale", [None, 0.05, 1.0])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 17, 100])
def test_attention_float32(T, causal, sm_scale):
    q, k, v = qkv(3, 5, T, T, 32, dtype=torch.float32)
    out = reference.flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    assert out.dtype == torch.float32
    assert_close(out, naive_attention(q, k, v, causal, sm_scale), TOL[torch.float32], "attention")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq, Tk", [(1, 1), (17, 17), (1, 17), (17, 100), (100, 100)])
def test_attention_grads_vs_formula(Tq, Tk, causal):
    q, k, v = leaves(*qkv(2, 3, Tq, Tk, 16))
    out = reference.flash_attention(q, k, v, causal=causal)
    g = torch.randn_like(out)
    got = grads(out, (q, k, v), g)
    q2, k2, v2 = leaves(q, k, v)
    ref_out = naive_attention(q2, k2, v2, causal)
    assert_close(out, ref_out, 1e-12, "out")
    for name, a, b in zip("qkv", got, grads(ref_out, (q2, k2, v2), g)):
        assert_close(a, b, 1e-10, f"d{name}", atol=1e-13)


@pytest.mark.parametrize("Tq, Tk", [(17, 17), (5, 40)])
def test_attention_causal_never_sees_the_future(Tq, Tk):
    q, k, v = qkv(2, 2, Tq, Tk, 16, dtype=torch.float32)
    out = reference.flash_attention(q, k, v, causal=True)
    offset = Tk - Tq
    for p in range(offset + 1, Tk):  # change key/value at absolute position p
        k2, v2 = k.clone(), v.clone()
        k2[:, :, p] += 10.0
        v2[:, :, p] -= 10.0
        out2 = reference.flash_attention(q, k2, v2, causal=True)
        earlier = p - offset  # queries at absolute positions < p
        assert torch.equal(out2[:, :, :earlier], out[:, :, :earlier]), f"position {p} leaked"
        assert not torch.equal(out2[:, :, earlier:], out[:, :, earlier:])


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32])
def test_attention_dtypes(dtype):
    q, k, v = qkv(2, 3, 17, 33, 64, dtype=dtype)
    out = reference.flash_attention(q, k, v, causal=True)
    assert out.dtype == dtype
    assert_close(out, naive_attention(q, k, v, True), TOL[dtype], "attention")


def test_attention_noncontiguous_inputs():
    # the model's layout: (B, T, H, D) views transposed to (B, H, T, D)
    base = torch.randn(2, 17, 3 * 4, 16, dtype=torch.float64)
    q, k, v = (t.transpose(1, 2) for t in base.split(4, dim=2))
    assert not q.is_contiguous()
    out = reference.flash_attention(q, k, v)
    assert_close(out, naive_attention(q, k, v, True), 1e-12, "attention")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_attention_dropout(p):
    # q = k = 0 gives uniform probabilities 1/T; v = I makes the output the probabilities
    B, H, T = 4, 4, 64
    q = torch.zeros(B, H, T, T)
    v = torch.eye(T).expand(B, H, T, T)
    probs = reference.flash_attention(q, q, v, causal=False, dropout_p=p)
    zero_frac = (probs == 0).double().mean().item()
    assert abs(zero_frac - p) < 0.01, zero_frac
    kept = probs[probs != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / T / (1 - p)))
    # E[dropout(P)] = P: row sums average to 1
    assert abs(probs.sum(-1).mean().item() - 1.0) < 0.02
    # and a causal mask stays a mask under dropout
    causal = reference.flash_attention(q, q, v, causal=True, dropout_p=p)
    assert (causal[..., ~bottom_right_mask(T, T)] == 0).all()


def test_attention_dropout_zero_is_deterministic():
    q, k, v = qkv(2, 2, 17, 17, 16)
    a = reference.flash_attention(q, k, v, dropout_p=0.0)
    assert torch.equal(a, reference.flash_attention(q, k, v))


# --------------------------------------------------------------------------- layer norm

LN_SHAPES = [(1, 16), (5, 100), (3, 17, 96), (2, 3, 257)]


def layer_norm_formula(x, w, b, eps=1e-5):
    """(x - mean) / sqrt(biased var + eps) * w + b over the last dim, in float64."""
    x, w = x.double(), w.double()
    C = x.shape[-1]
    mean = x.sum(dim=-1, keepdim=True) / C
    var = ((x - mean) ** 2).sum(dim=-1, keepdim=True) / C
    y = (x - mean) / torch.sqrt(var + eps) * w
    return y if b is None else y + b.double()


def ln_inputs(shape, with_bias, dtype=torch.float64):
    C = shape[-1]
    x = torch.randn(shape, dtype=dtype) * 2.0 + 0.5
    w = 1.0 + 0.1 * torch.randn(C, dtype=dtype)
    b = 0.1 * torch.randn(C, dtype=dtype) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", LN_SHAPES)
def test_layer_norm_vs_formula(shape, with_bias):
    x, w, b = leaves(*ln_inputs(shape, with_bias))
    out = reference.layer_norm(x, w, b, eps=1e-5)
    x2, w2, b2 = leaves(x, w, b)
    ref = layer_norm_formula(x2, w2, b2, eps=1e-5)
    assert_close(out, ref, 1e-12, "layer_norm")
    g = torch.randn_like(out)
    for name, a, r in zip(["dx", "dweight", "dbias"], grads(out, (x, w, b), g),
                          grads(ref, (x2, w2, b2), g)):
        assert_close(a, r, 1e-10, name, atol=1e-13)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layer_norm_eps_and_noncontiguous(eps):
    x = torch.randn(96, 17, dtype=torch.float64).t()  # (17, 96), last-dim stride 17
    w, b = torch.randn(96, dtype=torch.float64), torch.randn(96, dtype=torch.float64)
    assert_close(reference.layer_norm(x, w, b, eps), layer_norm_formula(x, w, b, eps), 1e-12,
                 "layer_norm")


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32])
def test_layer_norm_dtypes(dtype):
    x, w, b = ln_inputs((3, 17, 96), True, dtype)
    out = reference.layer_norm(x, w, b)
    assert out.dtype == dtype
    assert_close(out, layer_norm_formula(x, w, b), TOL[dtype], "layer_norm")


def test_layer_norm_float32_params_with_half_input():
    x, w, b = ln_inputs((4, 100), True, torch.float32)
    out = reference.layer_norm(x.bfloat16(), w, b)
    assert out.dtype == torch.bfloat16
    ref = layer_norm_formula(x.bfloat16(), w, b)
    assert_close(out, ref, TOL[torch.bfloat16], "layer_norm")


# --------------------------------------------------------------------------- linear + GELU

def gelu_tanh_formula(h):
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))


def linear_gelu_formula(x, w, b):
    """gelu_tanh(x @ w^T + b) in float64, the product as an einsum."""
    h = torch.einsum("...k,nk->...n", x.double(), w.double())
    return gelu_tanh_formula(h if b is None else h + b.double())


LG_SHAPES = [((1, 16), 1), ((7, 96), 100), ((2, 17, 100), 384), ((3, 1, 5, 33), 65), ((33,), 8)]


def lg_inputs(x_shape, N, with_bias, dtype=torch.float64):
    K = x_shape[-1]
    x = torch.randn(x_shape, dtype=dtype)
    w = torch.randn(N, K, dtype=dtype) / math.sqrt(K)
    b = 0.5 * torch.randn(N, dtype=dtype) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_shape, N", LG_SHAPES)
def test_linear_gelu_vs_formula(x_shape, N, with_bias):
    x, w, b = leaves(*lg_inputs(x_shape, N, with_bias))
    out = reference.linear_gelu(x, w, b)
    assert out.shape == (*x_shape[:-1], N)
    x2, w2, b2 = leaves(x, w, b)
    ref = linear_gelu_formula(x2, w2, b2)
    assert_close(out, ref, 1e-12, "linear_gelu")
    g = torch.randn_like(out)
    for name, a, r in zip(["dx", "dweight", "dbias"], grads(out, (x, w, b), g),
                          grads(ref, (x2, w2, b2), g)):
        assert_close(a, r, 1e-10, name, atol=1e-13)


def test_linear_gelu_is_tanh_approximation():
    # distinguishes "gelu_new" from the erf GELU: they differ by ~1e-4 near |x| ~ 2
    x = torch.linspace(-4, 4, 81, dtype=torch.float64).unsqueeze(1)
    w = torch.ones(1, 1, dtype=torch.float64)
    out = reference.linear_gelu(x, w).squeeze(1)
    assert_close(out, gelu_tanh_formula(x.squeeze(1)), 1e-14, "gelu")
    assert (out - F.gelu(x.squeeze(1))).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32])
def test_linear_gelu_dtypes(dtype):
    x, w, b = lg_inputs((2, 17, 96), 100, True, dtype)
    out = reference.linear_gelu(x, w, b)
    assert out.dtype == dtype
    assert_close(out, linear_gelu_formula(x, w, b), TOL[dtype], "linear_gelu")


# --------------------------------------------------------------------------- cross-entropy

REDUCTIONS = ["mean", "sum", "none"]
CE_SHAPES = [(1, 1000), (17, 1000), (100, 1000), (8, 50257)]


def cross_entropy_formula(logits, target, ignore_index=-100, reduction="mean"):
    """log(sum_j exp(l_j)) - l_target per row in float64; ignored rows 0; mean over the
    counted rows (0 when there are none)."""
    lg = logits.double()
    valid = target != ignore_index
    m = lg.max(dim=1, keepdim=True).values.detach()  # a shift: exact in value and gradient
    lse = torch.log(torch.exp(lg - m).sum(dim=1)) + m.squeeze(1)
    rows = torch.arange(lg.shape[0])
    picked = lg[rows, torch.where(valid, target, 0).long()]
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / max(int(valid.sum()), 1)


def ce_inputs(N, V, ignore_frac, ignore_index=-100, dtype=torch.float64, scale=3.0):
    logits = torch.randn(N, V, dtype=dtype) * scale
    target = torch.randint(0, V, (N,))
    target[torch.rand(N) < ignore_frac] = ignore_index
    return logits, target


@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("N, V", CE_SHAPES)
def test_cross_entropy_vs_formula(N, V, reduction, ignore_frac):
    logits, target = ce_inputs(N, V, ignore_frac)
    if ignore_frac and N > 1:
        target[0] = -100  # at least one ignored row
        target[-1] = 0  # and one counted row
    (lg,) = leaves(logits)
    out = reference.cross_entropy(lg, target, reduction=reduction)
    (lg2,) = leaves(logits)
    ref = cross_entropy_formula(lg2, target, reduction=reduction)
    assert out.dtype == torch.float64
    assert_close(out, ref, 1e-12, "loss")
    g = torch.randn_like(out)
    assert_close(grads(out, [lg], g)[0], grads(ref, [lg2], g)[0], 1e-10, "dlogits")


def test_cross_entropy_ignore_index_inside_vocab():
    logits, target = ce_inputs(50, 10, 0.0)
    target[::3] = 3
    for reduction in REDUCTIONS:
        out = reference.cross_entropy(logits, target, ignore_index=3, reduction=reduction)
        ref = cross_entropy_formula(logits, target, ignore_index=3, reduction=reduction)
        assert_close(out, ref, 1e-12, f"loss ({reduction})")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_large_logits_stay_finite(reduction):
    logits, target = ce_inputs(64, 1000, 0.2, dtype=torch.float32, scale=1e4)
    (lg,) = leaves(logits)
    out = reference.cross_entropy(lg, target, reduction=reduction)
    assert out.dtype == torch.float32
    (dl,) = grads(out, [lg])
    assert torch.isfinite(out).all() and torch.isfinite(dl).all()
    ref = cross_entropy_formula(logits, target, reduction=reduction)
    assert_close(out, ref, TOL[torch.float32], "loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_all_ignored(reduction):
    (lg,) = leaves(torch.randn(7, 100))
    target = torch.full((7,), -100)
    out = reference.cross_entropy(lg, target, reduction=reduction)
    assert torch.equal(out, torch.zeros_like(out)) and not torch.isnan(out).any()
    assert out.shape == ((7,) if reduction == "none" else ())
    (dl,) = grads(out, [lg])
    assert torch.equal(dl, torch.zeros_like(dl))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_ignored_rows_get_exactly_zero_gradient(reduction):
    logits, target = ce_inputs(40, 300, 0.5)
    target[0], target[1] = -100, 5
    (lg,) = leaves(logits)
    (dl,) = grads(reference.cross_entropy(lg, target, reduction=reduction), [lg])
    ignored = target == -100
    assert torch.equal(dl[ignored], torch.zeros_like(dl[ignored]))
    assert (dl[~ignored] != 0).any(dim=1).all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_half_logits_give_float32_loss(dtype):
    logits, target = ce_inputs(33, 1000, 0.2, dtype=dtype)
    (lg,) = leaves(logits)
    for reduction in REDUCTIONS:
        out = reference.cross_entropy(lg, target, reduction=reduction)
        assert out.dtype == torch.float32
        # same half values, float32 math: only float32 rounding separates them
        ref = cross_entropy_formula(logits, target, reduction=reduction)
        assert_close(out, ref, TOL[torch.float32], f"loss ({reduction})")
    assert grads(reference.cross_entropy(lg, target), [lg])[0].dtype == dtype


def test_cross_entropy_int32_target():
    logits, target = ce_inputs(20, 50, 0.2)
    out = reference.cross_entropy(logits, target.int())
    assert_close(out, cross_entropy_formula(logits, target), 1e-12, "loss")


# --------------------------------------------------------------------------- fused linear CE

FLCE_SHAPES = [(1, 16, 1000), (17, 96, 257), (64, 100, 1000)]


def logits_formula(x, w, b=None):
    """x @ w^T + b in float64, as an einsum."""
    h = torch.einsum("nc,vc->nv", x.double(), w.double())
    return h if b is None else h + b.double()


def flce_inputs(N, C, V, with_bias, dtype=torch.float64):
    x = torch.randn(N, C, dtype=dtype)
    w = torch.randn(V, C, dtype=dtype) / math.sqrt(C) * 2
    b = 0.5 * torch.randn(V, dtype=dtype) if with_bias else None
    target = torch.randint(0, V, (N,))
    target[torch.rand(N) < 0.25] = -100
    return x, w, b, target


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("N, C, V", FLCE_SHAPES)
def test_fused_linear_cross_entropy_vs_formula(N, C, V, reduction, with_bias):
    x, w, b, target = flce_inputs(N, C, V, with_bias)
    x, w, b = leaves(x, w, b)
    out = reference.fused_linear_cross_entropy(x, w, target, bias=b, reduction=reduction)
    x2, w2, b2 = leaves(x, w, b)
    ref = cross_entropy_formula(logits_formula(x2, w2, b2), target, reduction=reduction)
    assert_close(out, ref, 1e-12, "loss")
    g = torch.randn_like(out)
    for name, a, r in zip(["dx", "dweight", "dbias"], grads(out, (x, w, b), g),
                          grads(ref, (x2, w2, b2), g)):
        assert_close(a, r, 1e-10, name, atol=1e-13)


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32])
def test_fused_linear_cross_entropy_dtypes(dtype):
    x, w, b, target = flce_inputs(33, 96, 1000, True, dtype)
    out = reference.fused_linear_cross_entropy(x, w, target, b)
    assert out.dtype == torch.float32
    ref = cross_entropy_formula(logits_formula(x, w, b), target)
    assert_close(out, ref, TOL[torch.float32], "loss")


def test_fused_linear_cross_entropy_ignore_index():
    x, w, b, target = flce_inputs(20, 16, 50, False)
    target = torch.where(target == -100, 7, target)
    target[::2] = 7
    out = reference.fused_linear_cross_entropy(x, w, target, ignore_index=7, reduction="sum")
    ref = cross_entropy_formula(logits_formula(x, w), target, ignore_index=7, reduction="sum")
    assert_close(out, ref, 1e-12, "loss")


# --------------------------------------------------------------------------- validation

def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_q = _t(2, 3, 8, 16)
_x = _t(4, 32)
_w32 = _t(32)
_W = _t(10, 32)
_tgt = torch.randint(0, 10, (4,))

BAD_CALLS = {
    # attention
    "q rank": (lambda: reference.flash_attention(_t(2, 3), _q, _q), ValueError,
               r"q must be 4-D \(B, H, Tq, D\), got shape \(2, 3\)"),
    "k rank": (lambda: reference.flash_attention(_q, _t(3, 8, 16), _q), ValueError,
               r"k must be 4-D"),
    "k heads": (lambda: reference.flash_attention(_q, _t(2, 4, 8, 16), _t(2, 4, 8, 16)),
                ValueError, r"k must have shape \(B, H, Tk, D\) = \(2, 3, Tk, 16\)"),
    "k head dim": (lambda: reference.flash_attention(_q, _t(2, 3, 8, 32), _t(2, 3, 8, 32)),
                   ValueError, r"k must have shape"),
    "v shape": (lambda: reference.flash_attention(_q, _q, _t(2, 3, 9, 16)), ValueError,
                r"v must have the shape of k \(2, 3, 8, 16\), got \(2, 3, 9, 16\)"),
    "qkv dtype": (lambda: reference.flash_attention(_q, _q.half(), _q), TypeError,
                  r"k must have q's dtype torch.float32, got torch.float16"),
    "q integer": (lambda: reference.flash_attention(_q.long(), _q, _q), TypeError,
                  r"q must be a floating-point tensor"),
    "q not tensor": (lambda: reference.flash_attention([1.0], _q, _q), TypeError,
                     r"q must be a torch.Tensor, got list"),
    "causal Tq > Tk": (lambda: reference.flash_attention(_t(2, 3, 9, 16), _q, _q), ValueError,
                       r"Tq <= Tk.*Tq=9, Tk=8"),
    "sm_scale <= 0": (lambda: reference.flash_attention(_q, _q, _q, sm_scale=0.0), ValueError,
                      r"sm_scale must be a finite number > 0, got 0.0"),
    "sm_scale nan": (lambda: reference.flash_attention(_q, _q, _q, sm_scale=float("nan")),
                     ValueError, r"sm_scale"),
    "dropout 1": (lambda: reference.flash_attention(_q, _q, _q, dropout_p=1.0), ValueError,
                  r"dropout_p must be in \[0, 1\), got 1.0"),
    "dropout < 0": (lambda: reference.flash_attention(_q, _q, _q, dropout_p=-0.1), ValueError,
                    r"dropout_p"),
    "head dim triton": (lambda: _validate.check_attention(_t(1, 1, 4, 48), _t(1, 1, 4, 48),
                                                          _t(1, 1, 4, 48), for_triton=True),
                        ValueError, r"head dim D=48 .*supported: \(16, 32, 64, 128\)"),
    "float64 triton": (lambda: _validate.check_attention(_q.double(), _q.double(), _q.double(),
                                                         for_triton=True),
                       TypeError, r"q has dtype torch.float64"),
    # layer norm
    "ln weight shape": (lambda: reference.layer_norm(_x, _t(31), None), ValueError,
                        r"weight must have shape \(32,\) \(x's last dim\), got \(31,\)"),
    "ln bias shape": (lambda: reference.layer_norm(_x, _w32, _t(4, 32)), ValueError,
                      r"bias must have shape \(32,\)"),
    "ln eps 0": (lambda: reference.layer_norm(_x, _w32, None, eps=0.0), ValueError,
                 r"eps must be a finite number > 0"),
    "ln eps negative": (lambda: reference.layer_norm(_x, _w32, None, eps=-1e-5), ValueError,
                        r"eps"),
    "ln integer x": (lambda: reference.layer_norm(_x.int(), _w32, None), TypeError,
                     r"x must be a floating-point tensor, got dtype torch.int32"),
    "ln weight None": (lambda: reference.layer_norm(_x, None, None), TypeError,
                       r"weight must be a torch.Tensor, got NoneType"),
    # linear + gelu
    "lg weight K": (lambda: reference.linear_gelu(_x, _t(10, 31)), ValueError,
                    r"weight must have shape \(N, K\) with K = x's last dim 32, got \(10, 31\)"),
    "lg weight rank": (lambda: reference.linear_gelu(_x, _t(32)), ValueError,
                       r"weight must be 2-D \(N, K\)"),
    "lg bias shape": (lambda: reference.linear_gelu(_x, _W, _t(11)), ValueError,
                      r"bias must have shape \(10,\)"),
    "lg dtype": (lambda: reference.linear_gelu(_x, _W.double()), TypeError,
                 r"weight must have x's dtype"),
    # cross-entropy
    "ce integer logits": (lambda: reference.cross_entropy(_tgt.view(2, 2), _tgt[:2]), TypeError,
                          r"logits must be a floating-point tensor, got dtype torch.int64"),
    "ce logits rank": (lambda: reference.cross_entropy(_t(2, 3, 10), _tgt), ValueError,
                       r"logits must be 2-D \(N, V\), got shape \(2, 3, 10\)"),
    "ce float target": (lambda: reference.cross_entropy(_t(4, 10), _tgt.float()), TypeError,
                        r"target must hold integer class indices, got dtype torch.float32"),
    "ce target length": (lambda: reference.cross_entropy(_t(5, 10), _tgt), ValueError,
                         r"target must have shape \(5,\).*got \(4,\)"),
    "ce target too big": (lambda: reference.cross_entropy(_t(4, 10), torch.tensor([0, 1, 10, 2])),
                          ValueError, r"target must be in \[0, 10\) or equal ignore_index=-100, "
                                      r"found 10"),
    "ce target negative": (lambda: reference.cross_entropy(_t(4, 10), torch.tensor([0, -1, 1, 2])),
                           ValueError, r"found -1"),
    "ce reduction": (lambda: reference.cross_entropy(_t(4, 10), _tgt, reduction="avg"),
                     ValueError, r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
    # fused linear cross-entropy
    "flce x rank": (lambda: reference.fused_linear_cross_entropy(_t(2, 2, 32), _W, _tgt),
                    ValueError, r"x must be 2-D \(N, C\)"),
    "flce weight C": (lambda: reference.fused_linear_cross_entropy(_x, _t(10, 31), _tgt),
                      ValueError, r"weight must have shape \(V, C\) with C = x's last dim 32"),
    "flce bias": (lambda: reference.fused_linear_cross_entropy(_x, _W, _tgt, bias=_t(9)),
                  ValueError, r"bias must have shape \(10,\)"),
    "flce target range": (lambda: reference.fused_linear_cross_entropy(
        _x, _W, torch.tensor([0, 1, 2, 99])), ValueError, r"\[0, 10\).*found 99"),
    "flce reduction": (lambda: reference.fused_linear_cross_entropy(_x, _W, _tgt, reduction=None),
                       ValueError, r"reduction must be one of"),
    "flce integer x": (lambda: reference.fused_linear_cross_entropy(_x.long(), _W, _tgt),
                       TypeError, r"x must be a floating-point tensor"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_validation_errors(case):
    call, exc, pattern = BAD_CALLS[case]
    with pytest.raises(exc, match=pattern):
        call()


PUBLIC_BAD_CALLS = {
    "flash_attention": (lambda: gpt_kernels.flash_attention(_t(2, 3), _q, _q), ValueError,
                        r"q must be 4-D"),
    "layer_norm": (lambda: gpt_kernels.layer_norm(_x, _t(31), None), ValueError,
                   r"weight must have shape \(32,\)"),
    "linear_gelu": (lambda: gpt_kernels.linear_gelu(_x, _t(10, 31)), ValueError,
                    r"weight must have shape \(N, K\)"),
    "cross_entropy": (lambda: gpt_kernels.cross_entropy(_t(4, 10), torch.tensor([0, 1, 10, 2])),
                      ValueError, r"found 10"),
    "fused_linear_cross_entropy": (lambda: gpt_kernels.fused_linear_cross_entropy(_x, _W, _tgt[:3]),
                                   ValueError, r"target must have shape \(4,\)"),
}


@pytest.mark.parametrize("name", list(PUBLIC_BAD_CALLS))
def test_public_functions_validate_too(name, monkeypatch):
    """The dispatching functions reach the same checks (through the reference on CPU)."""
    monkeypatch.delenv("GPT_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    call, exc, pattern = PUBLIC_BAD_CALLS[name]
    with pytest.raises(exc, match=pattern):
        call()


def test_reference_accepts_any_head_dim():
    q, k, v = qkv(1, 2, 5, 7, 48)
    assert_close(reference.flash_attention(q, k, v), naive_attention(q, k, v, True), 1e-12, "out")


def test_target_equal_to_ignore_index_outside_vocab_is_fine():
    out = reference.cross_entropy(_t(4, 10), torch.tensor([0, -5, 1, 2]), ignore_index=-5)
    assert torch.isfinite(out)


# --------------------------------------------------------------------------- dispatch

OPS_ARGS = {
    "flash_attention": lambda: ((_q, _q, _q), {}),
    "layer_norm": lambda: ((_x, _w32, None), {}),
    "add_layer_norm": lambda: ((_x, _x.to(torch.bfloat16), _w32, None), {}),
    "linear_gelu": lambda: ((_x, _W), {}),
    "cross_entropy": lambda: ((_t(4, 10), _tgt), {}),
    "fused_linear_cross_entropy": lambda: ((_x, _W, _tgt), {}),
}


class OpsCalled(TorchDispatchMode):
    """Records the namespaces of the operators that run inside it ("gpt" for our ops)."""

    def __init__(self):
        super().__init__()
        self.namespaces = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


def ran_our_ops(name, args, kwargs, backend="auto"):
    with OpsCalled() as seen:
        out = getattr(gpt_kernels, name)(*args, backend=backend, **kwargs)
    return "gpt" in seen.namespaces, out


@pytest.fixture
def cpu_rules(monkeypatch):
    """The dispatch rules of a CPU machine without TRITON_INTERPRET, whatever this one runs."""
    monkeypatch.setattr(gpt_kernels._library, "INTERPRET", False)
    monkeypatch.delenv("GPT_KERNELS", raising=False)
    return monkeypatch


def test_public_names_are_functions_not_modules():
    for name in gpt_kernels.OP_NAMES:
        fn = getattr(gpt_kernels, name)
        assert callable(fn) and fn.__name__ == name, name


def test_unknown_backend_and_bad_env(cpu_rules):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'triton'\), "
                                         r"got 'nope'"):
        gpt_kernels.layer_norm(_x, _w32, None, backend="nope")
    cpu_rules.setenv("GPT_KERNELS", "cuda")
    with pytest.raises(ValueError, match="GPT_KERNELS"):
        gpt_kernels.layer_norm(_x, _w32, None)


@pytest.mark.parametrize("name", gpt_kernels.OP_NAMES)
def test_auto_on_cpu_uses_the_reference(name, cpu_rules):
    args, kwargs = OPS_ARGS[name]()
    ran, out = ran_our_ops(name, args, kwargs)
    assert not ran
    expected = getattr(reference, name)(*args, **kwargs)
    outs, expected = ((out, expected) if isinstance(out, tuple) else ((out,), (expected,)))
    assert len(outs) == len(expected) and all(map(torch.equal, outs, expected))
    cpu_rules.setenv("GPT_KERNELS", "torch")
    assert not ran_our_ops(name, args, kwargs, backend="auto")[0]


@pytest.mark.parametrize("name", gpt_kernels.OP_NAMES)
def test_triton_where_no_kernel_can_run_raises(name, cpu_rules):
    args, kwargs = OPS_ARGS[name]()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        getattr(gpt_kernels, name)(*args, backend="triton", **kwargs)
    cpu_rules.setenv("GPT_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        getattr(gpt_kernels, name)(*args, **kwargs)


@pytest.mark.skipif(not gpt_kernels._library.INTERPRET, reason="needs TRITON_INTERPRET=1 on CPU")
@pytest.mark.parametrize("name", gpt_kernels.OP_NAMES)
def test_interpreter_on_cpu_runs_our_ops(name, monkeypatch):
    monkeypatch.delenv("GPT_KERNELS", raising=False)
    args, kwargs = OPS_ARGS[name]()
    assert ran_our_ops(name, args, kwargs)[0]  # "auto"
    assert ran_our_ops(name, args, kwargs, backend="triton")[0]
    assert not ran_our_ops(name, args, kwargs, backend="torch")[0]
    monkeypatch.setenv("GPT_KERNELS", "torch")  # steers "auto" only
    assert not ran_our_ops(name, args, kwargs)[0]
    assert ran_our_ops(name, args, kwargs, backend="triton")[0]


def test_use_triton_rules(cpu_rules):
    meta = torch.empty(2, 3, device="meta")
    assert not gpt_kernels.use_triton("auto", _x, None, 1.0)
    assert not gpt_kernels.use_triton("torch", _x)
    assert not gpt_kernels.use_triton("auto", meta)  # what a CPU machine would run
    assert gpt_kernels.use_triton("triton", meta)  # shape-only: no kernel runs, any machine
    with pytest.raises(ValueError, match="backend must be one of"):
        gpt_kernels.use_triton("cuda", _x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", gpt_kernels.OP_NAMES)
def test_auto_on_cuda_runs_our_ops(name, monkeypatch):
    monkeypatch.delenv("GPT_KERNELS", raising=False)
    args, kwargs = OPS_ARGS[name]()
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    assert ran_our_ops(name, args, kwargs)[0]
