"""GPT-2's hot ops: hand-written Triton kernels, plain-PyTorch references, and dispatch.

Public ops (same signatures in ``kernels.reference``)::

    flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0)
    layer_norm(x, weight, bias, eps=1e-5)
    linear_gelu(x, weight, bias=None)
    cross_entropy(logits, target, ignore_index=-100, reduction="mean")
    fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100, reduction="mean")

Dispatch ("auto"): the environment variable ``GPT_KERNELS=torch|triton`` forces a path;
otherwise CUDA tensors take Triton and CPU tensors take the reference, unless
``TRITON_INTERPRET=1``, where CPU tensors run the Triton kernels in Triton's interpreter.
An op without a registered Triton kernel falls back to the reference in "auto" mode and
raises ``NotImplementedError`` when Triton is forced.

``ops(backend)`` binds the five ops to a backend once ("auto", "torch" or "triton"); an
explicit "torch"/"triton" there wins over ``GPT_KERNELS``, which only steers "auto".

Triton implementations live one op per module (``kernels/layer_norm.py``, ...). Each calls
``register_triton("layer_norm", fn)`` at import time; this package imports every public
submodule on import (a module whose ``import triton`` fails is skipped).
"""

import functools
import importlib
import os
import pkgutil
import types
from typing import Callable

import torch

from kernels import reference
from kernels._validate import REDUCTIONS, SUPPORTED_HEAD_DIMS

__all__ = [
    "flash_attention",
    "layer_norm",
    "linear_gelu",
    "cross_entropy",
    "fused_linear_cross_entropy",
    "ops",
    "register_triton",
    "triton_available",
    "backend_for",
    "BACKENDS",
    "OP_NAMES",
    "SUPPORTED_HEAD_DIMS",
    "REDUCTIONS",
    "reference",
]

BACKENDS = ("auto", "torch", "triton")
OP_NAMES = (
    "flash_attention",
    "layer_norm",
    "linear_gelu",
    "cross_entropy",
    "fused_linear_cross_entropy",
)
_ENV_VAR = "GPT_KERNELS"

# op name -> Triton implementation with the reference's signature; filled by register_triton
_TRITON_IMPLS: dict[str, Callable] = {}
# kernel module -> why importing it failed (triton missing or too old); shown in errors
_SKIPPED_MODULES: dict[str, str] = {}


def _check_op_name(name):
    if name not in OP_NAMES:
        raise ValueError(f"unknown op {name!r}; ops are {OP_NAMES}")


def register_triton(name, fn=None):
    """Make ``fn`` the Triton implementation of op ``name``; usable as a decorator.

    ``fn`` takes the reference's signature and validates its own arguments (with
    ``for_triton=True``). Registering again replaces the previous implementation.
    """
    _check_op_name(name)
    if fn is None:
        return functools.partial(register_triton, name)
    if not callable(fn):
        raise TypeError(f"register_triton({name!r}, fn): fn must be callable, got {fn!r}")
    _TRITON_IMPLS[name] = fn
    return fn


def triton_available(name):
    """True when op ``name`` has a registered Triton implementation."""
    _check_op_name(name)
    return name in _TRITON_IMPLS


def _env_backend():
    """The path forced by GPT_KERNELS ("torch" or "triton"), or "auto" when it is unset."""
    value = os.environ.get(_ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value not in ("torch", "triton"):
        raise ValueError(
            f"environment variable {_ENV_VAR} must be 'torch' or 'triton' (or unset), "
            f"got {os.environ[_ENV_VAR]!r}"
        )
    return value


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def backend_for(*tensors, backend="auto"):
    """The path ("torch" or "triton") a call on ``tensors`` takes under ``backend``.

    Explicit "torch"/"triton" is returned as is; "auto" follows GPT_KERNELS, then the
    device: CUDA -> "triton", CPU -> "triton" only under TRITON_INTERPRET=1, else "torch".
    Non-tensor arguments (None, numbers) are ignored.
    """
    _check_backend(backend)
    if backend != "auto":
        return backend
    forced = _env_backend()
    if forced != "auto":
        return forced
    devices = [t.device.type for t in tensors if isinstance(t, torch.Tensor)]
    if "cuda" in devices:
        return "triton"
    if devices and all(d == "cpu" for d in devices) and os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "torch"


def _missing_triton(name, why):
    skipped = "".join(f"; kernels/{mod}.py was skipped: {err}"
                      for mod, err in _SKIPPED_MODULES.items())
    return NotImplementedError(
        f"kernels.{name} has no Triton kernel yet ({why}); use the torch backend "
        f"(GPT_KERNELS=torch, kernels='torch') or 'auto', which falls back to the reference"
        + skipped
    )


def _triton_impl(name, why):
    fn = _TRITON_IMPLS.get(name)
    if fn is None:
        raise _missing_triton(name, why)
    return fn


def _select(name, tensors):
    """The implementation of op ``name`` for an "auto" call on ``tensors``."""
    path = backend_for(*tensors)
    if path == "torch":
        return getattr(reference, name)
    fn = _TRITON_IMPLS.get(name)
    if fn is not None:
        return fn
    if _env_backend() == "triton":
        raise _missing_triton(name, f"forced by {_ENV_VAR}=triton")
    return getattr(reference, name)


# The public ops: pick a path, then hand over. Validation happens once, inside the chosen
# implementation (the reference or the Triton launcher), not here.

def flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0):
    """Attention (B, H, Tq, D) x (B, H, Tk, D) -> (B, H, Tq, D); see reference.flash_attention."""
    fn = _select("flash_attention", (q, k, v))
    if (fn is not reference.flash_attention and _env_backend() == "auto"
            and isinstance(q, torch.Tensor) and q.dim() == 4 and q.shape[-1] not in SUPPORTED_HEAD_DIMS):
        # "auto" picks what works: the kernel has head dims 16..128 only; forced Triton raises
        fn = reference.flash_attention
    return fn(q, k, v, causal=causal, sm_scale=sm_scale, dropout_p=dropout_p)


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dim; see reference.layer_norm."""
    return _select("layer_norm", (x, weight, bias))(x, weight, bias, eps=eps)


def linear_gelu(x, weight, bias=None):
    """gelu_tanh(x @ weight.T + bias); see reference.linear_gelu."""
    return _select("linear_gelu", (x, weight, bias))(x, weight, bias)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Cross-entropy of (N, V) logits; see reference.cross_entropy."""
    fn = _select("cross_entropy", (logits, target))
    return fn(logits, target, ignore_index=ignore_index, reduction=reduction)


def fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                               reduction="mean"):
    """Cross-entropy of x @ weight.T (+ bias); see reference.fused_linear_cross_entropy."""
    fn = _select("fused_linear_cross_entropy", (x, weight, target, bias))
    return fn(x, weight, target, bias=bias, ignore_index=ignore_index, reduction=reduction)


_AUTO = {name: globals()[name] for name in OP_NAMES}


def _forced_triton(name):
    """Op ``name`` bound to Triton; looked up per call, so later registrations count."""
    ref = getattr(reference, name)

    @functools.wraps(ref)
    def call(*args, **kwargs):
        return _triton_impl(name, "backend 'triton' was requested")(*args, **kwargs)

    return call


def ops(backend="auto"):
    """The five ops bound to ``backend``: "auto" (dispatch per call), "torch" (the
    references) or "triton" (the Triton kernels; an op without one raises when called).

    Returns a namespace with attributes ``flash_attention``, ``layer_norm``, ``linear_gelu``,
    ``cross_entropy``, ``fused_linear_cross_entropy`` and ``backend``.
    """
    _check_backend(backend)
    if backend == "torch":
        table = {name: getattr(reference, name) for name in OP_NAMES}
    elif backend == "triton":
        table = {name: _forced_triton(name) for name in OP_NAMES}
    else:
        _env_backend()  # a bad GPT_KERNELS fails here, when the model is built
        table = dict(_AUTO)
    return types.SimpleNamespace(backend=backend, **table)


def _import_triton_modules():
    """Import every public submodule so its register_triton calls run.

    Only a missing ``triton`` (or a missing part of it, in an older release) is forgiven:
    the module is skipped and the reason shows up when Triton is forced. Any other error in a
    kernel module propagates, so a broken kernel never silently falls back to the reference.
    """
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "reference":
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except ModuleNotFoundError as err:
            if err.name != "triton" and not (err.name or "").startswith("triton."):
                raise
            _SKIPPED_MODULES[info.name] = str(err)


_import_triton_modules()
# Importing kernels/layer_norm.py binds the *module* to the package attribute `layer_norm`;
# put the public functions back over the modules that share their names.
globals().update(_AUTO)
