"""The chips the report compiles for, and a stand-in GPU that lets the launchers run without one.

``stand_in_gpu(target, precision)`` is the whole fake GPU: fake CUDA tensors
(``FakeTensorMode``), the target's device properties where the launchers and the autotuners'
pruning read them, row slicing of fake CUDA tensors (``RowSlices``), torch's float32 matmul
precision, and every kernel launch recorded instead of run.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

__all__ = ["Target", "TARGETS", "DTYPES", "RowSlices", "stand_in_gpu"]


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
# dtype label -> (dtype name for gpt.hardware.dtype_named, torch.set_float32_matmul_precision)
DTYPES = {
    "bf16": ("bfloat16", "highest"),
    "fp16": ("float16", "highest"),
    "fp32": ("float32", "highest"),  # IEEE float32 dots (torch's default)
    "fp32-tf32": ("float32", "high"),  # TF32 allowed, as train.py sets on GPUs
}


def _row_slice(t, key):
    """``t[key]`` as ``aten.slice`` over the first dim when ``key`` is a plain ``start:stop``
    slice, else None."""
    if isinstance(key, slice) and key.step in (None, 1):
        stop = t.shape[0] if key.stop is None else key.stop
        return torch.ops.aten.slice(t, 0, key.start or 0, stop)
    return None


class RowSlices(TorchFunctionMode):
    """Python indexing ``x[a:b]`` and ``x[a:b] = y`` of fake CUDA tensors, as ``aten.slice``
    (and ``aten.copy_``).

    Tensor indexing in Python checks the device first, and a CPU-only torch has no CUDA
    device guard: under ``FakeTensorMode`` on torch 2.13 CPU, ``x[2:5]`` of a fake CUDA tensor
    raises "PyTorch is not linked with support for cuda devices" before the fake mode sees an
    op, while ``aten.slice`` on the same tensor gives the right fake view. The launchers only
    index leading-dim slices (the fused linear cross-entropy's chunks), so those go to
    ``aten.slice``; any other key goes to torch as it is. A ``TorchFunctionMode`` sees the
    call before the device check, for the block it is entered in only.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__:
            view = _row_slice(*args)
            if view is not None:
                return view
        elif func is torch.Tensor.__setitem__:
            t, key, value = args
            view = _row_slice(t, key)
            if view is not None:
                torch.ops.aten.copy_(view, value)
                return None
        return func(*args, **(kwargs or {}))


@contextmanager
def stand_in_gpu(target, matmul_precision):
    """Fake CUDA tensors, a device that looks like ``target`` to the launchers and the
    autotuners' pruning, torch's float32 matmul precision, and every kernel launch recorded
    instead of run (``gpt_kernels._library.recording``). Yields the list of recorded launches
    (kernel, grid, args, kwargs), complete when the block ends."""
    from gpt_kernels._library import recording

    props = SimpleNamespace(
        name=f"stand-in for {target.chip}", major=target.capability // 10,
        minor=target.capability % 10, multi_processor_count=target.sms,
        shared_memory_per_block_optin=target.smem, total_memory=80 * 2**30)
    saved_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    # The one patch of torch left: the pruning (gpt_kernels._autotune.device_smem) and
    # LayerNorm's backward grid (layer_norm._backward_programs) read the chip from
    # torch.cuda.get_device_properties(device), which on a CPU-only build raises
    # "AssertionError: Torch not compiled with CUDA enabled" (torch 2.13 CPU, fake CUDA
    # tensor's device, checked 2026-12-05); torch has no public API that declares a device's
    # properties, and FakeTensorMode fakes tensors, not devices.
    try:
        with mock.patch.object(torch.cuda, "get_device_properties",
                               lambda device=None: props), \
                FakeTensorMode(), RowSlices(), recording() as launches:
            yield launches
    finally:
        torch.set_float32_matmul_precision(saved_precision)
