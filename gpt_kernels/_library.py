"""The Triton launchers as `torch.library` operators (namespace ``gpt``), and when they run.

Each op file registers its forward and backward launchers here with ``define_op`` and wires
the gradient with ``register_autograd``: PyTorch's dispatcher then takes over what a
hand-written registry used to do. ``torch.compile`` sees one opaque node per op (no graph
break), autograd calls the backward op, and fake or meta tensors get the op's fake
implementation, which is the launcher itself run with its kernel launches skipped
(``launch``): it allocates exactly what the real op allocates, so a training step on fake
tensors meters memory exactly (``bench/memory.py``) and opcheck compares fake and real
outputs of the same code.

Which registration:

- ``torch.library.custom_op`` with that fake implementation on machines without CUDA and under
  ``TRITON_INTERPRET=1``: tested here, on CPU, through Triton's interpreter.
- ``torch.library.triton_op`` on CUDA machines whose torch has it (2.6+), with launches
  through ``wrap_triton``, so Inductor sees the kernels inside the op. Its fake implementation
  is the launcher traced on fake tensors. (Under the interpreter it cannot be used: its fake
  implementation would run the interpreter on fake tensors, and opcheck fails.)

``use_triton(backend, *tensors)`` is the one policy on top: the ``backend`` argument of the
public ops ("auto" | "triton" | "torch") and the environment variable ``GPT_KERNELS`` choose
between an op and its plain-PyTorch reference in ``gpt_kernels/reference.py``.
"""

import os
from contextlib import contextmanager

import torch

__all__ = ["NAMESPACE", "INTERPRET", "USE_TRITON_OP", "BACKENDS", "LAUNCHERS", "define_op",
           "launch", "recording", "plain_launches", "use_triton", "env_backend"]

NAMESPACE = "gpt"
BACKENDS = ("auto", "torch", "triton")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
USE_TRITON_OP = (hasattr(torch.library, "triton_op") and torch.cuda.is_available()
                 and not INTERPRET)
_ENV_VAR = "GPT_KERNELS"
# "gpt::op" -> its launcher: the memory meter runs launchers op by op to see their buffers
LAUNCHERS = {}
# While not None (``recording``), a list that every launch is appended to instead of running
_RECORDED = None
# True inside ``plain_launches()``: launch() never goes through wrap_triton
_PLAIN = False


def _shape_only(values):
    """True when a launch would see fake or meta tensors: shapes without data."""
    from torch._subclasses.fake_tensor import is_fake

    return any(isinstance(v, torch.Tensor) and (v.is_meta or is_fake(v)) for v in values)


class _Launch:
    """``kernel[grid](*args)``, skipped on fake / meta tensors (see the module docstring), and
    recorded instead of run inside ``recording()``."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if _RECORDED is not None:
                _RECORDED.append((self.kernel, grid, args, kwargs))
            elif not _shape_only((*args, *kwargs.values())):
                self.kernel[grid](*args, **kwargs)
        return run


def launch(kernel):
    """How a launcher starts a Triton kernel: ``launch(_my_kernel)[grid](*args, **meta)``."""
    if USE_TRITON_OP and _RECORDED is None and not _PLAIN:
        return torch.library.wrap_triton(kernel)
    return _Launch(kernel)


@contextmanager
def plain_launches():
    """Within it, ``launch`` returns the plain launch (skipped on fake tensors) even where
    ops are ``triton_op``s. The memory meter runs the launchers op by op under its own
    dispatch mode, which has no rule for ``wrap_triton``'s higher-order op
    (``triton_kernel_wrapper_mutation``), and on fake tensors no kernel needs to run."""
    global _PLAIN
    saved, _PLAIN = _PLAIN, True
    try:
        yield
    finally:
        _PLAIN = saved


@contextmanager
def recording():
    """Within it, launches run nothing and are appended to the yielded list as
    ``(kernel, grid, args, kwargs)``: the compile report (``tools/compile_report/launches.py``) runs
    the launchers on fake tensors this way to see each launch's exact arguments."""
    global _RECORDED
    saved, _RECORDED = _RECORDED, []
    try:
        yield _RECORDED
    finally:
        _RECORDED = saved


def define_op(name, launcher, mutates_args=()):
    """Register ``launcher`` (typed arguments, tensors out) as the operator ``gpt::name``.

    Returns the op object (call it like the launcher; it is also ``torch.ops.gpt.<name>``).
    """
    qualname = f"{NAMESPACE}::{name}"
    LAUNCHERS[qualname] = launcher
    if USE_TRITON_OP:
        return torch.library.triton_op(qualname, launcher, mutates_args=mutates_args)
    op = torch.library.custom_op(qualname, launcher, mutates_args=mutates_args)
    op.register_fake(launcher)
    return op


def env_backend():
    """The path GPT_KERNELS forces ("torch" or "triton"), or "auto" when it is unset."""
    value = os.environ.get(_ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value not in ("torch", "triton"):
        raise ValueError(f"environment variable {_ENV_VAR} must be 'torch' or 'triton' (or unset), "
                         f"got {os.environ[_ENV_VAR]!r}")
    return value


def use_triton(backend, *tensors):
    """Whether a call with ``backend`` on ``tensors`` runs the Triton op (else the reference).

    "triton" and "torch" are obeyed ("triton" raises where no Triton kernel can run); "auto"
    follows GPT_KERNELS, else the device: CUDA tensors take Triton, CPU tensors take it only
    under TRITON_INTERPRET=1.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = env_backend()
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    runs_here = "cuda" in devices or INTERPRET
    if backend == "auto":
        return runs_here
    # shape-only tensors run no kernel: the memory meter takes the Triton path on any machine
    if backend == "triton" and not (runs_here or _shape_only(tensors)):
        raise RuntimeError(
            f"the Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; "
            f"got tensors on {sorted(devices)} (use backend='torch' or 'auto')")
    return backend == "triton"
