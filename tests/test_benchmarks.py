"""The pytest-benchmark suite (benchmarks/): it runs, and the normal test run leaves it out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_run_once_each():
    pytest.importorskip("pytest_benchmark")  # the test extra; a bare GPU image may lack it
    # --benchmark-disable: each benchmark body runs once, untimed (seconds, not minutes)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q",
                           "--benchmark-disable", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "7 passed" in proc.stdout  # 5 ops, the step in float32 and in bf16


def test_benchmarks_are_outside_the_normal_run():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]
    # no test under tests/ takes the benchmark fixture: `make test` times nothing
    users = [p.name for p in (ROOT / "tests").rglob("test_*.py")
             if p.name != Path(__file__).name and "(benchmark" in p.read_text()]
    assert users == []
