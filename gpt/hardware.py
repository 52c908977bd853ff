"""What the hardware can do and what the dtypes are called: one table for every tool.

`GPUS` holds vendors' datasheet figures (dense bf16 tensor-core FLOP/s, memory bandwidth):
the trainer's MFU, the scaling-law calculator's GPU-hours and the roofline model read them
here. `cpu_has_bf16` says whether this CPU multiplies bf16 natively (the trainer's default
dtype on a CPU). `DTYPES` maps the names the command lines take to torch dtypes.
"""

from dataclasses import dataclass

import torch

__all__ = ["Gpu", "GPUS", "gpu_named", "peak_bf16_flops", "cpu_has_bf16", "DTYPES",
           "dtype_named"]


@dataclass(frozen=True)
class Gpu:
    """One accelerator by its datasheet: dense bf16 FLOP/s (no sparsity) and bytes/s of HBM."""

    name: str
    bf16_flops: float
    bandwidth: float


GPUS = {
    "H100": Gpu("H100 SXM", 989e12, 3.35e12),
    "H200": Gpu("H200", 989e12, 4.8e12),
    "A100": Gpu("A100 SXM 80GB", 312e12, 2.039e12),
    "L4": Gpu("L4", 121e12, 0.3e12),
    "A10": Gpu("A10", 125e12, 0.6e12),
}


def gpu_named(device_name):
    """The `GPUS` key whose name appears in `device_name` (e.g. torch.cuda.get_device_name()
    'NVIDIA H100 80GB HBM3' -> 'H100'), or None."""
    return next((key for key in GPUS if key in device_name), None)


def peak_bf16_flops(device_name):
    """Datasheet dense bf16 FLOP/s of the GPU called `device_name`, or None if unknown."""
    key = gpu_named(device_name)
    return GPUS[key].bf16_flops if key else None


# The names every --dtype option takes, and the short forms some tools print.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True when this CPU has bf16 dot-product instructions (x86 AVX512-BF16 or AMX-BF16):
    there oneDNN's bf16 matmuls run ~2x float32's (a 768 x 128 x 512 product, one thread of an
    AVX512-BF16 EPYC: 0.52 ms against 1.17 ms). Without them bf16 is emulated and slower than
    float32. Read from /proc/cpuinfo's flags (Linux); False where that cannot be read."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dtype_named(name):
    """torch dtype for 'float32' | 'bfloat16' | 'float16' (or fp32 | bf16 | fp16)."""
    key = _ALIASES.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[key]
