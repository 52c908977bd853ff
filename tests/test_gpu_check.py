"""``make gpu-check`` on the CPU: it refuses in one line without a GPU, and its smoke form runs
every step (tests, kernel and training benchmarks, memory meter when present, report) and
records them in the results JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from gpt.cli import UsageError

ROOT = Path(__file__).resolve().parents[1]
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _gpu_check(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=ROOT,
                          env=env or dict(os.environ), capture_output=True, text=True,
                          timeout=900)


@needs_no_gpu
def test_refuses_without_a_gpu_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = _gpu_check(f"--out={tmp_path / 'r.json'}", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "python -m bench.gpu_check: error: no CUDA GPU here"), proc.stderr
    assert proc.stdout == "" and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv, match", [
    (["--steps=tests,bogus"], "--steps"),
    (["--smoke=maybe"], "--smoke"),
])
def test_usage_errors(argv, match):
    with pytest.raises(UsageError, match=match):
        gpu_check.main(argv)


@needs_no_gpu
def test_smoke_form_runs_every_step(tmp_path):
    out = tmp_path / "results-smoke.json"
    readme = tmp_path / "README.md"
    readme.write_text("untouched\n")
    proc = _gpu_check("--smoke=True", f"--out={out}", f"--readme={readme}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    section = doc["gpu_check"]
    assert section["smoke"] is True
    steps = {s["step"]: s for s in section["steps"]}
    assert list(steps) == list(gpu_check.STEPS)
    for name in ("tests", "kernels", "train", "report"):
        assert steps[name]["ok"] and steps[name]["returncode"] == 0, steps[name]
        assert steps[name]["seconds"] >= 0 and steps[name]["command"].startswith("python -m ")
    memory = steps["memory"]
    if memory.get("skipped"):
        assert "bench/memory.py" in memory["reason"]
    else:
        assert memory["ok"], memory
    # the benchmarks wrote their sections into the same file, marked as smoke
    assert doc["smoke"] is True and doc["kernels"]["measurements"] and doc["train"]["paths"]
    assert (tmp_path / "results-smoke.md").exists()  # the report step ran on that file
    assert readme.read_text() == "untouched\n"  # smoke figures never reach a README
