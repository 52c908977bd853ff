"""The tested Triton range: the compile check with the oldest supported Triton and the newest.

    make compat                     # that is: python -m tools.compile_report.compat
    python -m tools.compile_report.compat --versions=3.2.0,3.6.0,3.9.0
    python -m tools.compile_report.compat --subset=full  # the full compile report per version
    python -m tools.compile_report.compat --versions=none \
        --pythons=/work/venv312/bin/python --targets=sm_90

Each version is installed on its own, next to nothing else, with
``pip install --no-deps --target <dir> triton==X`` (Triton does not depend on torch, and
the installed torch is left alone), into ``~/.cache/gpt-triton/compat/triton-X`` (kept for
the next run). Then ``python -m tools.compile_report`` runs in a fresh process with that
directory first on ``sys.path`` (``PYTHONPATH``), so the kernels are compiled by that
Triton for sm_80 and sm_90, every dtype, every config the autotuners offer. A version
passes when every config compiles, spills nothing and fits in shared memory.

The floor is the ``triton>=`` bound in ``pyproject.toml``; ``IMAGE`` is the Triton of the GPU
image ``bench.gpu_check`` is run on (torch 2.11, CUDA 13); the newest is ``NEWEST``, the
latest release this project was checked with.

``--pythons``: other whole environments (a Python with its own torch, Triton and numpy, e.g.
a twin of a GPU image), each checked as it is, installing nothing: the compile report with its
Triton, then a few kernel tests in its Triton interpreter (``TRITON_INTERPRET=1``), which is
where numpy and interpreter versions clash. Exits with status 1 if any check fails.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from gpt.cli import Opt, parse, run_main
from gpt.errors import UsageError
from tools.compile_report.chips import TARGETS

REPO_ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m tools.compile_report.compat"
NEWEST = "3.9.0"  # the newest Triton release checked; raise it after `make compat` passes
IMAGE = "3.6.0"  # the GPU image's Triton (torch 2.11): bench.gpu_check runs there
# the interpreter check of --pythons: a few kernel tests of each kind (forward, backward,
# attention), seconds in the interpreter
INTERPRETER_TESTS = ["tests/test_layer_norm.py", "tests/test_attention.py", "-k",
                     "matches_torch_functional or constant_rows or test_head_dim_128"]


def floor_version(pyproject=REPO_ROOT / "pyproject.toml"):
    """The oldest supported Triton: the ``triton>=X`` bound of the project's dependencies."""
    m = re.search(r'"triton>=([0-9][0-9.]*)', Path(pyproject).read_text())
    if not m:
        raise UsageError(f"{pyproject} has no triton>= dependency")
    version = m.group(1)
    return version if version.count(".") >= 2 else version + ".0"


OPTIONS = {
    "what": dict(
        versions=Opt((), f"comma-separated Triton versions, or none; default: the floor in "
                         f"pyproject.toml, {IMAGE} and {NEWEST}", item=str),
        pythons=Opt((), "comma-separated Python executables of other environments to check "
                        "as they are (their own torch, Triton, numpy)", item=str),
        subset=Opt("ci", "compile_report subset: ci (GPT-2 small's shapes) or full",
                   choices=("ci", "full")),
        targets=Opt(("sm_80", "sm_90"), "compile_report targets", choices=tuple(TARGETS)),
    ),
    "run": dict(
        install_dir=Opt(str(Path.home() / ".cache" / "gpt-triton" / "compat"),
                        "where each version is installed (triton-X/)"),
        workers=Opt(2, "compiler processes per report", ge=1),
        cache=Opt(False, "let compile_report reuse cached compile results"),
        out_dir=Opt("", "where the reports go; default: install_dir (full reports: "
                        "bench/results)"),
    ),
}
DESCRIPTION = __doc__.split("\n\n")[0]


def install(version, install_dir):
    """The directory holding Triton ``version`` alone (installed there on first use)."""
    target = Path(install_dir).expanduser() / f"triton-{version}"
    if (target / "triton" / "__init__.py").exists():
        return target
    tmp = target.with_name(target.name + ".partial")
    print(f"installing triton=={version} into {target}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(tmp), f"triton=={version}"], check=True)
    os.replace(tmp, target)
    return target


def check_version(version, cfg, out):
    """Run the compile report under Triton ``version``; a summary dict."""
    path = install(version, cfg["install_dir"])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(path), str(REPO_ROOT)])
    cmd = [sys.executable, "-m", "tools.compile_report", f"--subset={cfg['subset']}",
           f"--targets={','.join(cfg['targets'])}", f"--workers={cfg['workers']}",
           f"--cache={cfg['cache']}", f"--out={out}"]
    print(f"\n==> triton {version}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode
    rec = dict(version=version, returncode=rc, seconds=round(time.perf_counter() - t0, 1))
    if Path(out).exists():
        doc = json.loads(Path(out).read_text())
        rec.update(doc["totals"], ran_with=doc["versions"]["triton"])
        if rec["ran_with"] != version:  # the path did not win over the installed Triton
            rec["returncode"] = rc or 1
    return rec


def check_python(python, cfg, out):
    """The compile report and the interpreter tests in another environment; a summary dict."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    probe = subprocess.run([python, "-c", "import sys, torch, triton, numpy; print("
                            "sys.version.split()[0], torch.__version__, triton.__version__, "
                            "numpy.__version__)"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        return dict(version=python, returncode=probe.returncode, seconds=0.0,
                    error=probe.stderr.strip().splitlines()[-1:])
    py, torch_v, triton_v, numpy_v = probe.stdout.split()
    label = f"{triton_v} (python {py}, torch {torch_v}, numpy {numpy_v})"
    cmd = [python, "-m", "tools.compile_report", f"--subset={cfg['subset']}",
           f"--targets={','.join(cfg['targets'])}", f"--workers={cfg['workers']}",
           f"--cache={cfg['cache']}", f"--out={out}"]
    print(f"\n==> {label}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode
    rec = dict(version=label, returncode=rc)
    if Path(out).exists():
        rec.update(json.loads(Path(out).read_text())["totals"])
    tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *INTERPRETER_TESTS]
    print(f"\n==> {label}, interpreter: TRITON_INTERPRET=1 {' '.join(tests[1:])}", flush=True)
    rc = subprocess.run(tests, cwd=REPO_ROOT, env=dict(env, TRITON_INTERPRET="1")).returncode
    rec["interpreter"] = "pass" if rc == 0 else "FAIL"
    rec["returncode"] = rec["returncode"] or rc
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def run(cfg):
    versions = list(cfg["versions"]) or [floor_version(), IMAGE, NEWEST]
    if versions == ["none"]:
        versions = []
    pythons = list(cfg["pythons"])
    missing = [p for p in pythons if not os.access(p, os.X_OK)]
    if missing:
        raise UsageError(f"--pythons: not an executable: {', '.join(missing)}")
    bad = [v for v in versions if not re.fullmatch(r"\d+\.\d+(\.\d+)?", v)]
    if bad:
        raise UsageError(f"--versions must be release numbers like 3.2.0; got {', '.join(bad)}")
    from datetime import date

    out_dir = Path(cfg["out_dir"] or (REPO_ROOT / "bench" / "results" if cfg["subset"] == "full"
                                      else Path(cfg["install_dir"]).expanduser()))
    suffix = "" if cfg["subset"] == "full" else f"-{cfg['subset']}"
    results = [check_version(v, cfg, out_dir / f"compile-{v}-{date.today()}{suffix}.json")
               for v in versions]
    results += [check_python(p, cfg, out_dir / f"compile-python{i}-{date.today()}{suffix}.json")
                for i, p in enumerate(pythons)]
    print("\n| triton | result | compiles | failed | spill | over smem | interpreter | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        verdict = "pass" if r["returncode"] == 0 else "FAIL"
        print(f"| {r['version']} | {verdict} | {r.get('compiles', '-')} | {r.get('failed', '-')} "
              f"| {r.get('spilling', '-')} | {r.get('over_smem', '-')} "
              f"| {r.get('interpreter', '-')} | {r['seconds']:.0f} |")
    if any(r["returncode"] for r in results):
        raise SystemExit(1)
    return results


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=DESCRIPTION)
    return run(cfg)


if __name__ == "__main__":
    run_main(main, PROG)
