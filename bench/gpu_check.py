"""One command for a machine with an NVIDIA GPU, inside a time budget, keeping every result.

    python -m bench.gpu_check --budget_s=480 --out_dir=/tmp/gpu-check     # on the GPU machine
    python -m bench.gpu_check --smoke=True --budget_s=150 --out_dir=/tmp/x  # CPU: the smoke form (CI)

It needs only what a CUDA image already has (torch, triton, numpy, pytest; matplotlib for the
plots, pytest-xdist to run the tests in parallel, liger_kernel for one more provider): it runs
from a plain checkout and installs nothing. The steps, in order of value, each a separate
process with its own time cap (a step that fails or hangs is stopped at its cap, recorded, and
the next one runs):

1. ``tests``: correctness, the GPU-marked tests (``pytest -m gpu``: every op forward and
   backward in bf16, fp16 and fp32 against its reference, GPT-2 and odd shapes), in parallel
   workers when pytest-xdist is installed, each autotuned kernel at its first listed config
   (``GPT_KERNELS_AUTOTUNE=first``: one compile per launch instead of one per config);
2. ``train``: a GPT-2 124M training step (bf16, T=1024, one micro-batch) on four paths:
   Triton, eager PyTorch + SDPA, ``torch.compile`` of each (``python -m bench.train``);
3. ``attention``: the Triton flash attention against SDPA's flash, cuDNN and memory-efficient
   backends, forward and forward+backward, bf16, causal, GPT-2 small/medium/XL heads at
   T = 1k-8k (``python -m bench.kernels``);
4. ``ops``: LayerNorm, linear+GELU, cross-entropy and the fused linear cross-entropy against
   eager PyTorch, ``torch.compile`` and Liger-Kernel when importable;
5. ``report``: the markdown report and two plots (``python -m bench.report``).

Each step's cap is its share of the time left (``SHARES``), so time a step does not use goes
to the later ones; at its cap a step gets SIGINT, then SIGKILL after a grace period. The
benchmark steps also get a soft budget: they start no new shape once it is spent.

Everything goes into ``--out_dir`` and nowhere else (at most 8 files): ``results.json``
(rewritten atomically after every measurement and every step, so a run killed at any moment
leaves a valid file with every finished measurement), ``junit.xml``, ``tests.jsonl`` (each
test's result as it finishes), ``gpu_check.log``, ``results.md`` and the PNG plots. A step is "ok" only when it exited cleanly and measured
something; a step whose every measurement was skipped is "nothing measured". The exit
status is 0 when every step is ok, 1 otherwise, 130 when interrupted.

Without a CUDA GPU it refuses in one line (exit status 2), unless ``--smoke=True``: every
step on the CPU at tiny sizes, the Triton kernels in Triton's interpreter, and a few CPU
kernel tests in place of the GPU tests (smoke figures are not performance numbers).
"""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from gpt.cli import Opt, UsageError, parse, run_main

REPO_ROOT = Path(__file__).resolve().parent.parent
PROG = "python -m bench.gpu_check"
STEPS = ("tests", "train", "attention", "ops", "report")
# Each step's share of the time left when it starts (value first: correctness, then the
# end-to-end step, then the kernels); see docs/gpu.md for the arithmetic behind them.
SHARES = {"tests": 0.28, "train": 0.34, "attention": 0.20, "ops": 0.13, "report": 0.05}
STEP_OPS = {"attention": ("flash_attention",),
            "ops": ("layer_norm", "linear_gelu", "cross_entropy", "fused_linear_cross_entropy")}
RESULTS, JUNIT, LOG, TEST_LOG = "results.json", "junit.xml", "gpu_check.log", "tests.jsonl"
MAX_FILES = 8
MIN_STEP_S = 5.0  # a step offered less than this is recorded as not run
FINAL_S = 2.0  # kept back at the end for the last write of the results
# the CPU kernel tests the smoke form runs instead of the GPU tests (which skip on a CPU)
SMOKE_TESTS = ["tests/test_layer_norm.py", "-k", "matches_torch_functional or constant_rows or non_contiguous"]

OPTIONS = {
    "what": dict(
        smoke=Opt(False, "CPU: every step at tiny sizes, Triton in its interpreter (CI)"),
        steps=Opt(STEPS, "comma-separated steps to run, or all", choices=STEPS),
        budget_s=Opt(480.0, "the whole run ends within this many seconds", gt=0),
        workers=Opt(0, "pytest-xdist workers for the tests (0: min(8, CPU cores); 1: none)",
                    ge=0),
    ),
    "output": dict(
        out_dir=Opt("", "an empty or new folder for everything the run writes (required)"),
    ),
}
DESCRIPTION = __doc__.split("\n\n")[0]


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop the current step, record it, write, exit 130."""


def _has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def step_commands(cfg, out_dir, child_budget):
    """{step: argv after ``python -m``}: the GPU form, or the CPU smoke form.
    ``child_budget(step)`` is the soft budget in seconds a benchmark step is given."""
    res, smoke = str(Path(out_dir) / RESULTS), cfg["smoke"]
    # each test's result as it finishes (bench.pytest_progress, GPT_TEST_LOG): the junit XML
    # is written only at the end, and a step stopped at its cap leaves none
    junit = ["-p", "no:cacheprovider", "-p", "bench.pytest_progress",
             f"--junitxml={Path(out_dir) / JUNIT}", "-o", "junit_family=xunit2"]
    workers = cfg["workers"] or min(8, os.cpu_count() or 1)
    xdist = ["-n", str(workers)] if workers > 1 and _has_module("xdist") and not smoke else []
    kernels = ["bench.kernels", f"--out={res}", "--compile=" + str(not smoke)]
    if smoke:
        kernels += ["--smoke=True", "--dtypes=float32"]
    else:
        kernels += ["--dtypes=bfloat16", "--warmup=10", "--rep=40"]
    return {
        "tests": (["pytest", "-q", *junit, *SMOKE_TESTS] if smoke
                  else ["pytest", "-q", "-m", "gpu", "-rfE", "--continue-on-collection-errors",
                        *junit, *xdist, "tests"]),
        "train": (["bench.train", "--smoke=True", f"--out={res}", "--paths=triton,torch",
                   "--max_batch=False"] if smoke
                  else ["bench.train", f"--out={res}", "--max_batch=False", "--warmup=3",
                        "--steps=10", "--paths=triton,torch,compile,compile-triton"]),
        "attention": kernels + [
            "--ops=flash_attention", "--head_dims=" + ("16" if smoke else "64"),
            "--providers=triton,sdpa-flash,sdpa-cudnn,sdpa-efficient", "--modes=fwd,fwd+bwd",
            f"--budget_s={child_budget('attention'):.0f}"],
        "ops": kernels + [
            "--ops=" + ",".join(STEP_OPS["ops"]), "--providers=triton,torch,compile,liger",
            "--modes=fwd+bwd", "--quick=True", f"--budget_s={child_budget('ops'):.0f}"],
        "report": ["bench.report", f"--results={res}", f"--out_dir={out_dir}",
                   f"--include_smoke={smoke}", "--dtype=" + ("float32" if smoke else "bfloat16"),
                   "--mode=fwd+bwd"],
    }


def measured(step, out_dir):
    """How many measurements step ``step`` left in ``out_dir`` (tests: tests that ran, not
    skipped), and a note; None when there is nothing to count from."""
    out_dir = Path(out_dir)
    if step == "tests":
        try:
            root = ET.parse(out_dir / JUNIT).getroot()
        except (OSError, ET.ParseError):
            return _test_log(out_dir / TEST_LOG)
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        count = {k: sum(int(s.get(k, 0)) for s in suites)
                 for k in ("tests", "failures", "errors", "skipped")}
        return count["tests"] - count["skipped"], (
            f"{count['tests']} tests: {count['failures']} failed, {count['errors']} errors, "
            f"{count['skipped']} skipped")
    if step == "report":
        found = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".md", ".png"))
        return len(found), ", ".join(found) or "no report written"
    doc = read_results(out_dir)
    if step == "train":
        rows = (doc.get("train") or {}).get("paths", [])
        ran = [r["path"] for r in rows if not r.get("skipped")]
        return len(ran), f"paths measured: {', '.join(ran) or 'none'} of {len(rows)}"
    rows = [r for r in (doc.get("kernels") or {}).get("measurements", [])
            if r.get("kernel") in STEP_OPS[step]]
    ran = sum(not r.get("skipped") for r in rows)
    return ran, f"{ran} of {len(rows)} measurements ran, {len(rows) - ran} skipped"


def _test_log(path):
    """(tests that ran, note) from bench.pytest_progress's lines, when pytest left no junit."""
    try:
        lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    except (OSError, ValueError):
        return None, "no junit XML and no test log"
    count = {k: sum(r["outcome"] == k for r in lines)
             for k in ("passed", "failed", "error", "skipped")}
    return count["passed"] + count["failed"], (
        f"{len(lines)} tests finished before the stop (no junit XML): {count['passed']} passed, "
        f"{count['failed']} failed, {count['error']} errors, {count['skipped']} skipped")


def read_results(out_dir):
    try:
        return json.loads((Path(out_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return {}


def write_section(out_dir, meta, section):
    """Put the ``gpu_check`` section into results.json, keeping what the steps wrote."""
    from bench import common

    doc = read_results(out_dir)
    if not doc:
        doc = dict(meta)
    doc["gpu_check"] = section
    common.write_json(Path(out_dir) / RESULTS, doc)


class Tee:
    """Lines to stdout and to the log file."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, line):
        with self.lock:
            sys.stdout.write(line)
            sys.stdout.flush()
            self.file.write(line)


def run_child(argv, env, cap, tee):
    """Run ``python -m <argv>`` in its own process group, output teed; stop it at ``cap``
    seconds (SIGINT to the group, SIGKILL after a grace period). Returns (exit status,
    how it ended: "exited" | "timed out" | "interrupted")."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    reader = threading.Thread(target=lambda: [tee(line) for line in proc.stdout], daemon=True)
    reader.start()
    how = "exited"
    try:
        proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        how = "timed out"
    except Interrupted:
        how = "interrupted"
    if how != "exited":
        grace = min(10.0, max(1.0, 0.05 * cap))
        _signal_group(proc, signal.SIGINT)  # pytest then writes its junit XML, benchmarks stop
        try:
            proc.wait(timeout=grace)
        except (subprocess.TimeoutExpired, Interrupted):
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    return proc.returncode, how


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def check_out_dir(text):
    if not text:
        raise UsageError("--out_dir is required: an empty or new folder for the results, "
                         "junit XML, log and report (e.g. --out_dir=/tmp/gpu-check)")
    out_dir = Path(text)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"--out_dir={text}: exists and is not an empty folder; give a new one")
    return out_dir


def run(cfg):
    steps = list(cfg["steps"])  # checked by parse()
    out_dir = check_out_dir(cfg["out_dir"])
    t0 = time.monotonic()
    deadline = t0 + cfg["budget_s"] - FINAL_S
    import torch

    if not cfg["smoke"]:
        if not torch.cuda.is_available():
            raise UsageError(f"no CUDA GPU here (torch {torch.__version__}: "
                             "torch.cuda.is_available() is False); this command times the "
                             "kernels on an NVIDIA GPU. On a CPU, `make test` checks them, and "
                             "--smoke=True runs every step of this one at tiny sizes")
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise UsageError("TRITON_INTERPRET=1 is set: the kernels would run in Triton's "
                             "interpreter and every timing would be meaningless; unset it")
    from bench import common

    out_dir.mkdir(parents=True, exist_ok=True)
    meta = common.metadata("cpu" if cfg["smoke"] else "cuda", cfg["smoke"])
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    if cfg["smoke"]:
        env["TRITON_INTERPRET"] = "1"  # the Triton kernels on CPU tensors
    tee = Tee(out_dir / LOG)
    tee(f"{PROG} on {meta['device']} ({meta['host']}), torch {meta['versions']['torch']}, "
        f"triton {meta['versions']['triton']}, budget {cfg['budget_s']:g} s; writing to "
        f"{out_dir}" + (" -- SMOKE RUN: CPU, tiny sizes, not performance numbers\n"
                        if cfg["smoke"] else "\n"))

    records = {s: dict(step=s, status="pending", ok=False) for s in steps}
    section = dict(smoke=bool(cfg["smoke"]), budget_s=cfg["budget_s"], device=meta["device"],
                   versions=meta["versions"], commit=meta["commit"], dirty=meta["dirty"],
                   started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   shares={s: SHARES[s] for s in steps}, complete=False,
                   steps=list(records.values()))

    def save():
        section["seconds"] = round(time.monotonic() - t0, 1)
        section["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_section(out_dir, meta, section)

    caps = {}
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        save()
        for i, name in enumerate(steps):
            rec = records[name]
            left = deadline - time.monotonic()
            caps[name] = cap = left * SHARES[name] / sum(SHARES[s] for s in steps[i:])
            if cap < MIN_STEP_S:
                rec.update(status="not run", reason=f"{left:.0f} s of the budget left")
                tee(f"\n==> {name}: not run ({rec['reason']})\n")
                continue
            argv = step_commands(cfg, out_dir, lambda s: max(1.0, 0.75 * caps.get(s, 0.0) - 10))[name]
            rec.update(status="running", cap_s=round(cap, 1),
                       command=shlex.join(["python", "-m", *argv]))
            save()
            tee(f"\n==> {name} (cap {cap:.0f} s): {rec['command']}\n")
            start = time.monotonic()
            env_step = env if name != "tests" else dict(
                env, GPT_KERNELS_AUTOTUNE="first", GPT_TEST_LOG=str(out_dir / TEST_LOG))
            rc, how = run_child(argv, env_step, cap, tee)
            count, note = measured(name, out_dir)
            rec.update(returncode=rc, seconds=round(time.monotonic() - start, 1),
                       measured=count, note=note)
            if how != "exited":
                rec["status"] = how
            elif rc != 0:
                rec["status"] = "failed"
            elif not count:
                rec["status"] = "nothing measured"
            else:
                rec["status"] = "ok"
            rec["ok"] = rec["status"] == "ok"
            save()
            tee(f"<== {name}: {rec['status']} after {rec['seconds']} s; {note}\n")
            if how == "interrupted":
                interrupted = True
                break
    except Interrupted:
        interrupted = True
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    for rec in records.values():
        if rec["status"] in ("pending", "running"):
            rec["status"] = "interrupted" if interrupted else "not run"
    section["complete"] = not interrupted
    save()
    for stale in out_dir.glob("*.tmp*"):
        stale.unlink()  # a temporary file of a step killed while writing
    files = sorted(p.name for p in out_dir.iterdir())
    section["files"] = files
    save()
    ok = [s for s, r in records.items() if r["ok"]]
    tee(f"\n{PROG}: {len(ok)}/{len(records)} steps ok ("
        + "; ".join(f"{s}: {r['status']}" for s, r in records.items())
        + f") in {time.monotonic() - t0:.0f} s of {cfg['budget_s']:g}; {len(files)} files in "
        f"{out_dir}\n")
    if len(files) > MAX_FILES:
        tee(f"{PROG}: more than {MAX_FILES} files in {out_dir}: {', '.join(files)}\n")
    if interrupted:
        raise SystemExit(130)
    if len(ok) < len(records) or len(files) > MAX_FILES:
        raise SystemExit(1)
    return out_dir


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=DESCRIPTION)
    return run(cfg)


if __name__ == "__main__":
    run_main(main, PROG)
