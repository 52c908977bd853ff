"""One command for a machine with an NVIDIA GPU: tests, benchmarks, memory, report.

    make gpu-check                                   # that is: python -m bench.gpu_check
    python -m bench.gpu_check --quick=True           # fewer kernel shapes, no largest-batch search
    python -m bench.gpu_check --smoke=True           # CPU: every step in its smoke form (CI)

The steps, each a separate process, in this order (a failing step is recorded and the next
one still runs; the exit status is 1 if any failed):

1. ``tests``: the GPU-marked tests, ``python -m pytest -m gpu`` (bf16, large shapes);
2. ``kernels``: ``python -m bench.kernels``, each kernel against eager PyTorch,
   ``torch.compile`` and SDPA;
3. ``train``: ``python -m bench.train``, a GPT-2 124M training step per kernel path;
4. ``memory``: ``python -m bench.memory``, when this checkout has that module;
5. ``report``: ``python -m bench.report --update_readme=True``, the markdown tables, plots
   and README results block from the JSON the steps wrote.

The benchmarks write into one results file, ``bench/results/<device>-<date>.json``; this
command adds a ``"gpu_check"`` section to it (each step's command, exit status and seconds).
Without a CUDA GPU it refuses in one line and exits with status 2, unless ``--smoke=True``,
which runs every step on the CPU at tiny sizes with the Triton kernels in Triton's
interpreter, writes ``<...>-smoke.json`` and leaves README.md alone (smoke figures are not
performance numbers).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from gpt.cli import Opt, UsageError, parse, run_main

REPO_ROOT = Path(__file__).resolve().parent.parent
PROG = "python -m bench.gpu_check"
STEPS = ("tests", "kernels", "train", "memory", "report")

OPTIONS = {
    "what": dict(
        smoke=Opt(False, "CPU: every step at tiny sizes, Triton in its interpreter (CI)"),
        steps=Opt(",".join(STEPS), "comma-separated steps to run, of " + ", ".join(STEPS)),
        quick=Opt(False, "fewer kernel shapes and no largest-micro-batch search"),
    ),
    "output": dict(
        out=Opt("", "results JSON; default bench/results/<device>-<date>[-smoke].json"),
        readme=Opt(str(REPO_ROOT / "docs" / "results.md"), "the page whose results block is rewritten"),
    ),
}
DESCRIPTION = __doc__.split("\n\n")[0]


def _step_commands(cfg, out, report_dir):
    """{step: argv after ``python -m``} for a GPU run, or for the CPU smoke form."""
    if cfg["smoke"]:
        # the cheapest invocation of each step that still runs it end to end
        return {
            "tests": ["pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                      "tests/test_layer_norm.py"],
            "kernels": ["bench.kernels", "--smoke=True", f"--out={out}", "--ops=layer_norm",
                        "--providers=triton,torch", "--modes=fwd", "--compile=False"],
            "train": ["bench.train", "--smoke=True", f"--out={out}", "--paths=triton",
                      "--max_batch=False"],
            "memory": ["bench.memory", "--preset=tiny", "--batch_size=2", "--block_size=32",
                       "--paths=triton,torch", "--max_batch=False",
                       f"--out={Path(report_dir) / 'memory-smoke.json'}"],
            "report": ["bench.report", f"--results={out}", "--include_smoke=True",
                       "--plots=False", f"--out_dir={report_dir}"],
        }
    quick = ["--quick=True"] if cfg["quick"] else []
    return {
        "tests": ["pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        "kernels": ["bench.kernels", f"--out={out}", *quick],
        "train": ["bench.train", f"--out={out}"] + (["--max_batch=False"] if cfg["quick"] else []),
        "memory": ["bench.memory"],
        "report": ["bench.report", f"--results={out}", "--update_readme=True",
                   f"--readme={cfg['readme']}"],
    }


def _has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def run_step(name, argv, env):
    """Run one step as ``python -m <argv>`` from the repository root; its record."""
    cmd = [sys.executable, "-m", *argv]
    print(f"\n==> {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode
    seconds = round(time.perf_counter() - t0, 1)
    print(f"<== {name}: exit status {rc} after {seconds} s", flush=True)
    return dict(step=name, command=" ".join(["python", *cmd[1:]]), returncode=rc,
                seconds=seconds, ok=rc == 0)


def _write_section(path, section):
    """Add the ``gpu_check`` section to the results JSON (atomically, keeping the rest)."""
    path = Path(path)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["gpu_check"] = section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def run(cfg):
    steps = [s.strip() for s in cfg["steps"].split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise UsageError(f"--steps must be a comma-separated list of {', '.join(STEPS)}; "
                         f"got {cfg['steps']!r}")
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
    if "report" in steps and not cfg["smoke"] and not Path(cfg["readme"]).is_file():
        raise UsageError(f"--readme: {cfg['readme']} does not exist")

    from bench import common

    device = "cpu" if cfg["smoke"] else "cuda"
    meta = common.metadata(device, cfg["smoke"])
    out = Path(cfg["out"]) if cfg["out"] else common.default_results_path(meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if cfg["smoke"]:
        env["TRITON_INTERPRET"] = "1"  # the Triton kernels on CPU tensors
    commands = _step_commands(cfg, out, out.parent)
    print(f"{PROG} on {meta['device']} ({meta['host']}); results: {out}"
          + (" -- SMOKE RUN: CPU, tiny sizes, not performance numbers" if cfg["smoke"] else ""))

    records, t0 = [], time.perf_counter()
    for name in steps:
        if name == "memory" and not _has_module("bench.memory"):
            records.append(dict(step=name, skipped=True, ok=True,
                                reason="this checkout has no bench/memory.py"))
            print(f"\n==> {name}: skipped ({records[-1]['reason']})")
            continue
        records.append(run_step(name, commands[name], env))
    section = dict(
        smoke=bool(cfg["smoke"]), device=meta["device"], versions=meta["versions"],
        commit=meta["commit"], dirty=meta["dirty"],
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - t0, 1), steps=records,
    )
    _write_section(out, section)
    failed = [r["step"] for r in records if not r["ok"]]
    print(f"\n{PROG}: {len(records) - len(failed)}/{len(records)} steps ok"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; written to {out}")
    if failed:
        raise SystemExit(1)
    return out


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=DESCRIPTION)
    return run(cfg)


if __name__ == "__main__":
    run_main(main, PROG)
