"""Compile one Triton kernel launch for a GPU that is not there, and read what the chip would run.

Triton's compiler needs no GPU and no driver: given a target (``GPUTarget("cuda", 90, 32)``
is an H100) it lowers a ``@triton.jit`` function to PTX and, with the ``ptxas`` its wheel
ships, to the cubin the GPU would load. What the kernel costs on the chip can be read from
those files:

- registers per thread and spill bytes: the log of the ``ptxas -v`` that Triton itself runs
  ("Used 168 registers", "N bytes spill stores"); registers and stack frame also from
  ``cuobjdump -res-usage`` on Triton's cubin, as a cross-check;
- shared memory per program: Triton's metadata (``shared``, what a launch asks the driver for);
- tensor-core instructions: SASS opcodes from ``cuobjdump -sass`` (``HMMA`` on sm_80+,
  ``HGMMA`` for Hopper's wgmma).

A launch is compiled with the signature, constexprs and divisibility-by-16 attributes that
Triton's own launcher derives from the real arguments, computed by the same Triton code
(its binder), so what is compiled here is what ``kernel[grid](...)`` compiles on a GPU.
That code changed across Triton releases; ``_specialize`` handles 3.2 through 3.9.
"""

import os
import re
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
import triton

__all__ = ["TRITON_VERSION", "jit_function", "standin", "compile_launch", "spec_key",
           "tool_path", "describe", "rebuild"]

TRITON_VERSION = triton.__version__
_VERSION = tuple(int(x) for x in re.findall(r"\d+", TRITON_VERSION)[:2])
# 16-byte alignment of every buffer: what PyTorch's CUDA caching allocator gives (512 bytes)
_BASE_ALIGN = 512
TENSOR_CORE_OPS = ("HMMA", "HGMMA", "IMMA", "IGMMA")


def jit_function(kernel):
    """The ``JITFunction`` under an ``@triton.autotune`` / ``@triton.heuristics`` stack."""
    while not hasattr(kernel, "params"):
        kernel = kernel.fn
    return kernel


def standin_tensor(dtype, offset):
    """A CPU tensor of ``dtype`` whose data pointer sits ``offset`` elements past a 512-byte
    aligned base, as a view at that storage offset into a fresh CUDA allocation does."""
    base = torch.empty(offset + _BASE_ALIGN, dtype=dtype)
    skew = (-base.data_ptr() % _BASE_ALIGN) // base.element_size()
    return base[skew + offset:]


def standin(arg):
    """A launch argument as Triton's specialisation needs it, on the CPU.

    A (fake CUDA) tensor becomes a CPU tensor of the same dtype at the same offset from an
    aligned base, so Triton derives the same pointer type and the same divisibility-by-16
    attribute a real launch gets. Anything else (ints, floats, bools, None) passes through.
    """
    if isinstance(arg, torch.Tensor):
        return standin_tensor(arg.dtype, arg.storage_offset())
    return arg


def describe(arg):
    """A picklable description of a launch argument (turned back with ``rebuild``)."""
    if isinstance(arg, torch.Tensor):
        return ("tensor", str(arg.dtype).removeprefix("torch."), arg.storage_offset())
    return ("value", arg)


def rebuild(desc):
    kind, *rest = desc
    if kind == "tensor":
        return standin_tensor(getattr(torch, rest[0]), rest[1])
    return rest[0]


def target_of(capability):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", int(capability), 32)


def _specialize(fn, args, kwargs, target):
    """(ASTSource, options) for launching ``fn(*args, **kwargs)`` on ``target``, derived as
    Triton's launcher derives them (its binder on the same arguments)."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    if _VERSION < (3, 3):  # 3.2: signature without constexprs, an AttrsDescriptor
        bound, sig_and_spec, _, _, _ = binder(*args, **kwargs)
        options = backend.parse_options(kwargs)
        bound_vals = tuple(bound.values())
        non_constexpr = [p for p in fn.params if not p.is_constexpr]
        sigvals = sig_and_spec[:len(non_constexpr)]
        signature = {p.name: ("*i8" if v == "none" else v) for p, v in zip(non_constexpr, sigvals)}
        attrs = backend.get_attrs_descriptor(fn.params, bound_vals)
        specialised = attrs.get_constants()
        constants = {p.name: v for v, p in zip(bound_vals, fn.params)
                     if p.is_constexpr or p.num in specialised or v is None}
        return ASTSource(fn, signature, constants, attrs), options
    bound, specialization, binder_options = binder(*args, **kwargs)
    if hasattr(fn, "_pack_args"):  # 3.5 and later
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                              specialization, binder_options)
    else:  # 3.3, 3.4: the same steps, inline in JITFunction.run
        from triton._utils import find_paths_if, get_iterable_path

        options = backend.parse_options(kwargs)
        sigvals = [x[0] for x in specialization]
        signature = {p.name: v for p, v in zip(fn.params, sigvals)}
        paths = find_paths_if(sigvals, lambda _, val: val == "constexpr")
        constexprs = {p: get_iterable_path(list(bound.values()), p) for p in paths}
        attrvals = [x[1] for x in specialization]
        paths = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
        attrs = {p: backend.parse_attr(get_iterable_path(attrvals, p)) for p in paths}
    return ASTSource(fn, signature, constexprs, attrs), options


def spec_key(fn, arg_descs, kwargs, capability):
    """A string that is equal for two launches exactly when Triton compiles the same binary
    (source of the kernel and its callees, signature, constexprs, attributes, options, target)."""
    src, options = _specialize(fn, [rebuild(d) for d in arg_descs], dict(kwargs),
                               target_of(capability))
    opts = {k: v for k, v in sorted(options.__dict__.items()) if k != "extern_libs"}
    return f"{TRITON_VERSION}|sm_{capability}|{src.hash()}|{opts}"


def tool_path(name):
    """A CUDA tool (ptxas, cuobjdump) from the Triton wheel, or from PATH / TRITON_<NAME>_PATH."""
    override = os.environ.get(f"TRITON_{name.upper()}_PATH")
    if override:
        return override
    shipped = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(shipped) if shipped.exists() else name


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)


class _PtxasTap:
    """Triton's NVIDIA backend runs ``ptxas -v`` (registers, spills) and throws the log
    away; standing in for its ``subprocess`` module, this keeps the command and the log.

    A patch, because no public Triton API gives them without a GPU (Triton 3.9, read
    2026-12-05): ``make_cubin`` writes the log to a temporary file and deletes it; the knob
    ``TRITON_DUMP_PTXAS_LOG`` only prints it to stdout, without the command line the report
    records; and ``CompiledKernel.n_regs`` / ``n_spills`` come from the driver's
    ``load_binary``, which needs a GPU (Triton's own comment there: "TODO: n_regs, n_spills
    should be metadata generated when calling `ptxas`"). Without the tap the log is
    ``_ptxas_again``'s own ptxas run, recorded as ``ptxas_log_from="rerun"``.
    """

    def __init__(self, real):
        self._real = real
        self.logs = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def run(self, cmd, *args, **kwargs):
        result = self._real.run(cmd, *args, **kwargs)
        log = kwargs.get("stderr")
        if cmd and "ptxas" in Path(str(cmd[0])).name and hasattr(log, "name"):
            self.logs.append(([str(c) for c in cmd], Path(log.name).read_text()))
        return result


@contextmanager
def ptxas_tap(target):
    """Catch the ``ptxas -v`` logs of the compiles for ``target`` inside the block
    (``tap.logs``), by standing in for the ``subprocess`` its backend's ``make_cubin`` uses."""
    from triton.compiler import make_backend

    names = type(make_backend(target)).make_cubin.__globals__
    tap = _PtxasTap(names["subprocess"])
    names["subprocess"] = tap
    try:
        yield tap
    finally:
        names["subprocess"] = tap._real


def _ptx_arch(ptx):
    return re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M).group(1)


def _ptxas_again(ptx, workdir):
    """``ptxas -v`` on the PTX ourselves, for when Triton's own log was not caught: the first
    of the wheel's ptxas builds that accepts the PTX's version."""
    src = Path(workdir) / "kernel.ptx"
    src.write_text(ptx)
    last = None
    for name in ("ptxas", "ptxas-blackwell"):
        cmd = [tool_path(name), "-v", "-lineinfo", f"--gpu-name={_ptx_arch(ptx)}", str(src),
               "-o", str(Path(workdir) / "ptxas.cubin")]
        try:
            return cmd, _run(cmd).stderr
        except (OSError, subprocess.CalledProcessError) as err:
            last = err
    raise RuntimeError(f"no ptxas accepted the PTX: {last}")


def parse_ptxas_log(log):
    """(registers, spill store bytes, spill load bytes, stack frame bytes) from ``ptxas -v``."""
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                  log)
    stack, stores, loads = (int(x) for x in m.groups())
    return regs, stores, loads, stack


def cubin_usage(cubin, workdir):
    """(registers, stack bytes, SASS opcode counts) of Triton's cubin, from cuobjdump."""
    path = Path(workdir) / "kernel.cubin"
    path.write_bytes(cubin)
    res = _run([tool_path("cuobjdump"), "-res-usage", str(path)]).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", res)
    sass = _run([tool_path("cuobjdump"), "-sass", str(path)]).stdout
    ops = Counter(op.split(".")[0] for op in re.findall(
        r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M))
    return int(m.group(1)), int(m.group(2)), ops


def _error_text(err):
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: " + " | ".join(lines[:6])[:800]


def compile_launch(module, name, arg_descs, kwargs, capability):
    """Compile kernel ``module.name`` for ``sm_<capability>`` with the given launch
    arguments (``describe``d) and keyword arguments (constexprs, num_warps, num_stages).

    Returns a dict: ok, error (its first lines), compile_s, shared (bytes), registers,
    spill_stores / spill_loads / stack (bytes per thread), tensor-core instruction counts.
    """
    import importlib

    fn = jit_function(getattr(importlib.import_module(module), name))
    args = [rebuild(d) for d in arg_descs]
    t0 = time.perf_counter()
    try:
        src, options = _specialize(fn, args, dict(kwargs), target_of(capability))
        with warnings.catch_warnings(), ptxas_tap(target_of(capability)) as tap:
            warnings.simplefilter("ignore")  # e.g. 3.9's notice about its fp-fusion default
            kernel = triton.compile(src, target=target_of(capability), options=options.__dict__)
    except Exception as err:  # noqa: BLE001 - a failed compile is a result, not a crash
        return {"ok": False, "compile_s": round(time.perf_counter() - t0, 3),
                "error": _error_text(err)}
    rec = {"ok": True, "compile_s": round(time.perf_counter() - t0, 3)}
    meta = kernel.metadata
    rec["shared"] = int(meta["shared"] if isinstance(meta, dict) else meta.shared)
    ptx = kernel.asm["ptx"]
    try:
        with tempfile.TemporaryDirectory(prefix="gpt-triton-ptxas-") as tmp:
            cmd, log = tap.logs[-1] if tap.logs else _ptxas_again(ptx, tmp)
            regs, stores, loads, stack = parse_ptxas_log(log)
            cubin_regs, cubin_stack, ops = cubin_usage(kernel.asm["cubin"], tmp)
    except Exception as err:  # noqa: BLE001 - a binary we cannot read is a failed check
        return {**rec, "ok": False, "error": "reading the binary: " + _error_text(err)}
    rec.update(
        arch=_ptx_arch(ptx),
        ptxas=" ".join([Path(cmd[0]).name] + [c for c in cmd[1:] if c.startswith("-")]),
        ptxas_log_from="triton" if tap.logs else "rerun",
        registers=regs, cubin_registers=cubin_regs, spill_stores=stores, spill_loads=loads,
        stack=stack, cubin_stack=cubin_stack,
        tensor_core={op: ops[op] for op in TENSOR_CORE_OPS if ops.get(op)},
        wgmma_ptx=len(re.findall(r"\bwgmma\.mma_async", ptx)),
        sass_instructions=sum(ops.values()))
    return rec
