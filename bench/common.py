"""Shared plumbing of the benchmarks: refusing to time where numbers would mean nothing,
machine metadata, the machine's measured ceilings, timing, peak memory and results JSON.

Timing on a GPU is ``triton.testing.do_bench``: the median with the 20th and 80th
percentiles, in milliseconds, after its own warm-up, with the L2 cache flushed between
runs. In smoke mode (``--smoke=True``, CPU, tiny sizes, CI) every path runs once and is
clocked with ``time.perf_counter``: those figures only prove that the path runs and are
never presented as performance (the JSON says ``"smoke": true``).

Results of one machine and one day live in one file, ``bench/results/<device>-<date>.json``;
``bench.kernels`` and ``bench.train`` each replace their own section of it (``"kernels"``,
``"train"``) and leave the other's, so both runs end up side by side.
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import torch

from gpt import files
from gpt.errors import UsageError

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
SECTIONS = ("kernels", "train")
QUANTILES = (0.5, 0.2, 0.8)  # median, 20th, 80th percentile (do_bench's order of return)

GB = 1e9
TFLOP = 1e12


# ----------------------------------------------------------------------------- refusal

def check_can_time(smoke, what="benchmarks"):
    """Raise a UsageError (one line from the command line) unless real timing makes sense
    (CUDA, no Triton interpreter); smoke runs pass. Returns the torch device string."""
    if smoke:
        return "cpu"
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UsageError(
            f"refusing to time the {what}: TRITON_INTERPRET=1 runs the Triton kernels in "
            "Triton's interpreter, whose timings mean nothing. Unset TRITON_INTERPRET, or "
            "pass --smoke=True to only check that every benchmark path runs."
        )
    if not torch.cuda.is_available():
        raise UsageError(
            f"refusing to time the {what}: no CUDA GPU is available "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). The benchmarks "
            "measure GPU kernels; pass --smoke=True to only check on the CPU that every "
            "benchmark path runs (its figures are not performance numbers)."
        )
    return "cuda"


# ----------------------------------------------------------------------------- metadata

def device_name(device):
    """The GPU's name (e.g. 'NVIDIA H100 80GB HBM3'), or "cpu"."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return "cpu"


def host_description():
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch using {torch.get_num_threads()} threads")


def device_slug(device):
    """A file-name-safe device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    if not device.startswith("cuda"):
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def git_commit():
    """(commit hash, dirty?) of the working tree; (None, None) outside a git checkout.

    ``GPT_GIT_COMMIT`` in the environment wins (dirty then None): a copy of a working tree
    can carry a stale ``.git`` whose HEAD is not the tree's commit (seen on a GPU machine)."""
    if os.environ.get("GPT_GIT_COMMIT"):
        return os.environ["GPT_GIT_COMMIT"].strip(), None
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def versions():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def metadata(device, smoke):
    """What identifies a run: device, versions, commit, date; smoke runs say so."""
    commit, dirty = git_commit()
    meta = {
        "schema": SCHEMA_VERSION,
        "smoke": bool(smoke),
        "device": device_name(device),
        "device_slug": device_slug(device),
        "date": date.today().isoformat(),
        "versions": versions(),
        "commit": commit,
        "commit_from": "GPT_GIT_COMMIT" if os.environ.get("GPT_GIT_COMMIT") else "git HEAD",
        "dirty": dirty,
        "host": host_description(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        meta["gpu"] = {"sm_count": props.multi_processor_count,
                       "memory_bytes": props.total_memory,
                       "capability": f"{props.major}.{props.minor}"}
    return meta


# ----------------------------------------------------------------------------- timing

def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn, device, smoke, grad_to_none=None, warmup=25, rep=100):
    """Time ``fn()``: {"ms": median, "ms_p20", "ms_p80"} in milliseconds.

    GPU: ``triton.testing.do_bench`` (``grad_to_none`` tensors get their .grad reset
    between runs so backward does not time gradient accumulation). Smoke: one call under
    ``time.perf_counter`` (the three numbers are equal and mean nothing).
    """
    if smoke:
        for t in grad_to_none or ():
            t.grad = None
        t0 = time.perf_counter()
        fn()
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        return {"ms": ms, "ms_p20": ms, "ms_p80": ms}
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                             quantiles=list(QUANTILES))
    return {"ms": med, "ms_p20": p20, "ms_p80": p80}


def peak_memory(fn, device):
    """Bytes ``fn()`` allocates at its peak on top of what was allocated before it (CUDA's
    ``max_memory_allocated`` after ``reset_peak_memory_stats``); None on the CPU, where
    torch keeps no allocator peak."""
    if not str(device).startswith("cuda"):
        fn()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def median(xs):
    return statistics.median(xs)


# ----------------------------------------------------------------------------- ceilings

def measure_ceilings(device, smoke):
    """The machine's measured ceilings: a large device-to-device copy (GB/s, bytes read +
    written) and a large bf16 matmul (TFLOP/s). The kernels' GB/s and TFLOP/s are reported
    as fractions of these. Smoke: tiny sizes on the CPU, marked as such."""
    copy_bytes = (1 << 20) if smoke else (1 << 30)  # 1 GiB on the GPU, far beyond any L2
    n = 256 if smoke else 8192
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy = time_ms(lambda: dst.copy_(src), device, smoke)
    del src, dst
    dtype = torch.float32 if smoke else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = time_ms(lambda: torch.mm(a, b), device, smoke)
    del a, b
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "copy_gbps": 2 * copy_bytes / (copy["ms"] * 1e-3) / GB,
        "copy_bytes": copy_bytes,
        "copy_ms": copy["ms"],
        "matmul_tflops": 2 * n ** 3 / (mm["ms"] * 1e-3) / TFLOP,
        "matmul_shape": [n, n, n],
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_ms": mm["ms"],
        "smoke": bool(smoke),
    }


# ----------------------------------------------------------------------------- failures

def failure_reason(err):
    """A one-line reason for a skipped measurement."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(err).splitlines()[0][:200]
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:300]}"


def free_memory(device):
    import gc

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- results

def default_results_path(meta):
    """bench/results/<device>-<date>.json; smoke runs go to <...>-smoke.json so that a CPU
    check never overwrites (or passes for) a GPU result."""
    suffix = "-smoke" if meta["smoke"] else ""
    return RESULTS_DIR / f"{meta['device_slug']}-{meta['date']}{suffix}.json"


def unique_path(path):
    """``path``, or ``<stem>-2<suffix>``, ``-3``, ... when it exists: a new result never
    replaces an older one (such as a result committed to the repository)."""
    path = Path(path)
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (temporary file + rename); return the path."""
    return files.write_text(path, text)


def write_json(path, doc):
    """Write ``doc`` as indented JSON, atomically (temporary file + rename)."""
    return write_text(path, json.dumps(doc, indent=2) + "\n")


def replace_block(text, block, start, end):
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by
    ``block`` (UsageError when the README has no such block)."""
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise UsageError(f"the README has no {start} ... {end} block to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"


def cpu_peak_bytes(step, op_scratch=True):
    """Peak live bytes of torch's CPU allocations during step(), relative to its start, from
    the profiler's records.

    With ``profile_memory=True`` the profiler keeps one record per allocation and per free
    (size negative) with its time; in time order their running sum is the live bytes and its
    maximum the peak. The records are read from the raw event tree (a private but long-lived
    torch API): the summary events charge a free to the op that encloses it, out of time order.
    No Python stacks are recorded: with the interpreter they would cost minutes.

    ``op_scratch=False`` leaves out ops' scratch: memory an op's own kernel allocates and
    frees before the op returns, not through an op below it (oneDNN's workspace inside a
    bfloat16 ``aten::mm`` on the CPU, the CPU's counterpart of the cuBLAS workspace). A
    dispatch mode sees an op's outputs, never that, so it is what to compare a
    dispatch-mode meter against.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records, scratch = [], set()
    todo = list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        node = todo.pop()
        todo.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            f = node.extra_fields
            records.append((node.start_time_ns, f.alloc_size, f.ptr))
        elif not op_scratch and node.tag == _EventType.TorchOp:
            allocs = [(c.start_time_ns, c.extra_fields.alloc_size, c.extra_fields.ptr)
                      for c in node.children if c.tag == _EventType.Allocation]
            freed = {ptr for _, size, ptr in allocs if size < 0}
            made = {ptr for _, size, ptr in allocs if size > 0}
            # an allocation both made and freed by this op itself (not by an op below it)
            scratch |= {a for a in allocs if a[2] in made & freed}
    live = peak = 0
    for record in sorted(records):
        if record in scratch:
            continue
        live += record[1]
        peak = max(peak, live)
    return peak


def write_results(path, meta, section, payload, ceilings=None):
    """Put ``payload`` under ``section`` of the results file at ``path`` and write it
    atomically (temporary file + rename). A file from the same device and smoke-ness keeps
    its other sections; anything else there is replaced."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    path = Path(path)
    doc = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("device") == meta["device"] and old.get("smoke") == meta["smoke"]:
            doc = old
    doc.update(meta)
    doc["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if ceilings is not None:
        doc["ceilings"] = ceilings
    doc.setdefault("ceilings", None)
    doc[section] = payload
    return files.write_json(path, doc, indent=1)


def log(*args):
    print(*args, flush=True)
    sys.stdout.flush()
