"""Argument checks shared by the references and the Triton launchers.

One ``check_*`` function per op. Each runs once per call, before any work, and raises a
``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, device, range)
whose message names the argument and says what was expected, so bad input never surfaces as
a Triton compile error or a silently wrong answer.

The references accept any positive head dim and float64; the Triton kernels do not. The
launchers pass ``for_triton=True`` to also enforce ``SUPPORTED_HEAD_DIMS`` and
``TRITON_DTYPES``.
"""

import math
import numbers

import torch
from torch._subclasses.fake_tensor import is_fake

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REDUCTIONS = ("mean", "sum", "none")

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "TRITON_DTYPES",
    "REDUCTIONS",
    "check_attention",
    "check_layer_norm",
    "check_linear_gelu",
    "check_cross_entropy",
    "check_fused_linear_cross_entropy",
]


def _shape(t):
    return tuple(t.shape)


def _tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _floating(name, t, for_triton=False):
    _tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if for_triton and t.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; the Triton kernels take "
            f"{', '.join(str(d) for d in TRITON_DTYPES)} (use the torch backend for others)"
        )


def _rank(name, t, ndim, layout):
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {_shape(t)}")


def _same_device(name, t, ref_name, ref):
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def _same_dtype(name, t, ref_name, ref):
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")


def _positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _vector(name, t, n, ref_name, ref, what):
    """A 1-D parameter of length n on ref's device (weight or bias of a row-wise op)."""
    _floating(name, t)
    if _shape(t) != (n,):
        raise ValueError(f"{name} must have shape ({n},) ({what}), got {_shape(t)}")
    _same_device(name, t, ref_name, ref)


def _target(target, n_rows, n_classes, ignore_index, ref_name, ref):
    _tensor("target", target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if _shape(target) != (n_rows,):
        raise ValueError(
            f"target must have shape ({n_rows},) (one class per row of {ref_name}), "
            f"got {_shape(target)}"
        )
    _same_device("target", target, ref_name, ref)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    # Skipped while torch.compile traces (a data-dependent branch would break the graph) and
    # on tensors without data (fake or meta: the memory meter).
    if torch.compiler.is_compiling() or target.is_meta or is_fake(target) or not n_rows:
        return
    bad = ((target < 0) | (target >= n_classes)) & (target != ignore_index)
    if target.device.type not in HOST_CHECKED_DEVICES:
        # On a GPU, bool(bad.any()) would stall the host every step until the GPU caught
        # up. The check stays on the device instead: _assert_async raises (at the next
        # synchronisation) with this message, before any later kernel reads out of bounds
        # -- as PyTorch's own cross-entropy asserts on the device.
        torch._assert_async(~bad.any(), _target_message(n_classes, ignore_index, "one outside it (checked on the device)"))
        return
    if bool(bad.any()):  # on the CPU the data is here: no stall, and a ValueError
        raise ValueError(_target_message(n_classes, ignore_index, target[bad][0].item()))


# Devices whose targets are checked on the host (a ValueError naming the first bad one);
# elsewhere the check is queued on the device, without a host synchronisation.
HOST_CHECKED_DEVICES = ("cpu",)


def _target_message(n_classes, ignore_index, found):
    return (f"target must be in [0, {n_classes}) or equal ignore_index={ignore_index}, "
            f"found {found}")


def _reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_attention(q, k, v, causal=True, sm_scale=None, dropout_p=0.0, *, for_triton=False):
    """q (B, H, Tq, D), k and v (B, H, Tk, D), same dtype and device; Tq <= Tk when causal."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _floating(name, t, for_triton)
    _rank("q", q, 4, "(B, H, Tq, D)")
    _rank("k", k, 4, "(B, H, Tk, D)")
    _rank("v", v, 4, "(B, H, Tk, D)")
    B, H, Tq, D = _shape(q)
    if k.shape[:2] != q.shape[:2] or k.shape[3] != D:
        raise ValueError(
            f"k must have shape (B, H, Tk, D) = ({B}, {H}, Tk, {D}) to match q {_shape(q)}, "
            f"got {_shape(k)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {_shape(k)}, got {_shape(v)}")
    for name, t in (("k", k), ("v", v)):
        _same_device(name, t, "q", q)
        _same_dtype(name, t, "q", q)
    Tk = k.shape[2]
    if D == 0:
        raise ValueError(f"q must have a head dim D > 0, got shape {_shape(q)}")
    if Tk == 0:
        raise ValueError(f"k must hold at least one key (Tk > 0), got shape {_shape(k)}")
    if for_triton and D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"head dim D={D} (q shape {_shape(q)}) is not supported by the Triton attention "
            f"kernel; supported: {SUPPORTED_HEAD_DIMS}"
        )
    if causal not in (True, False):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if causal and Tq > Tk:
        raise ValueError(
            f"causal attention needs Tq <= Tk (the queries are the last Tq of the Tk "
            f"positions), got Tq={Tq}, Tk={Tk}"
        )
    if sm_scale is not None:
        _positive_number("sm_scale", sm_scale)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a real number, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def check_layer_norm(x, weight, bias, eps=1e-5, *, for_triton=False):
    """x (..., C); weight and bias (C,) floating, on x's device (bias may be None).

    weight and bias may have a different floating dtype than x (float32 parameters with half
    activations, as under mixed precision): statistics are float32 either way.
    """
    _floating("x", x, for_triton)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim (..., C), got a 0-D tensor")
    C = x.shape[-1]
    if C == 0:
        raise ValueError(f"x must have a last dim C > 0 to normalise over, got {_shape(x)}")
    _vector("weight", weight, C, "x", x, "x's last dim")
    if bias is not None:
        _vector("bias", bias, C, "x", x, "x's last dim")
    _positive_number("eps", eps)


def check_linear_gelu(x, weight, bias=None, *, for_triton=False):
    """x (..., K), weight (N, K), bias (N,) or None; all one dtype and device."""
    _floating("x", x, for_triton)
    _floating("weight", weight, for_triton)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim (..., K), got a 0-D tensor")
    _rank("weight", weight, 2, "(N, K)")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight must have shape (N, K) with K = x's last dim {x.shape[-1]}, "
            f"got {_shape(weight)}"
        )
    _same_device("weight", weight, "x", x)
    _same_dtype("weight", weight, "x", x)
    if bias is not None:
        _vector("bias", bias, weight.shape[0], "x", x, "weight's rows N")
        _same_dtype("bias", bias, "x", x)


def check_cross_entropy(logits, target, ignore_index=-100, reduction="mean", *,
                        for_triton=False):
    """logits (N, V) floating, target (N,) integer in [0, V) or ignore_index."""
    _floating("logits", logits, for_triton)
    _rank("logits", logits, 2, "(N, V)")
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have at least one class (V > 0), got {_shape(logits)}")
    _reduction(reduction)
    _target(target, logits.shape[0], logits.shape[1], ignore_index, "logits", logits)


def check_fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                                     reduction="mean", *, for_triton=False, cast_to=None):
    """x (N, C), weight (V, C), bias (V,) or None, one dtype and device; target (N,).

    ``cast_to``: the dtype all three will be cast to before the matmuls (autocast's), which
    then replaces the one-dtype rule.
    """
    _floating("x", x, for_triton and cast_to is None)
    _floating("weight", weight, for_triton and cast_to is None)
    _rank("x", x, 2, "(N, C)")
    _rank("weight", weight, 2, "(V, C)")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight must have shape (V, C) with C = x's last dim {x.shape[1]}, "
            f"got {_shape(weight)}"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"weight must have at least one row (V > 0), got {_shape(weight)}")
    _same_device("weight", weight, "x", x)
    if cast_to is None:
        _same_dtype("weight", weight, "x", x)
    if bias is not None:
        _vector("bias", bias, weight.shape[0], "x", x, "weight's rows V")
        if cast_to is None:
            _same_dtype("bias", bias, "x", x)
    _reduction(reduction)
    _target(target, x.shape[0], weight.shape[0], ignore_index, "x", x)
