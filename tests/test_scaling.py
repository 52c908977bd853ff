"""gpt.scaling: counts against the real model, Chinchilla's Table 3, the fits on synthetic
losses, a tiny IsoFLOP sweep end to end (and resumed), one-line CLI errors."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpt import scaling
from gpt.cli import UsageError
from gpt.model import GPT, PRESETS, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def meta_model(cfg):
    """GPT(cfg) on the meta device: shapes without memory, so gpt2-xl builds at once."""
    with torch.device("meta"):
        return GPT(cfg)


# ---------------------------------------------------------------- counting

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_counts_match_the_model_for_every_preset(preset, bias):
    cfg = GPTConfig.from_preset(preset, bias=bias, kernels="torch")
    model = meta_model(cfg)
    counts = scaling.param_counts(cfg)
    assert counts["total"] == model.num_params()
    assert counts["non_embedding"] == model.num_params(non_embedding=True)
    assert scaling.flops_per_token(cfg)["total"] == model.flops_per_token()
    assert scaling.flops_per_token(cfg, 100)["total"] == model.flops_per_token(100)


@pytest.mark.parametrize("n_layer, n_head, n_embd, vocab_size, block_size", [
    (1, 1, 8, 3, 1), (3, 5, 80, 1000, 17), (7, 4, 100, 50257, 257),
])
def test_counts_match_the_model_for_odd_configs(n_layer, n_head, n_embd, vocab_size, block_size):
    for bias in (True, False):
        cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                        block_size=block_size, bias=bias, kernels="torch")
        model = meta_model(cfg)
        assert scaling.param_counts(cfg)["total"] == model.num_params()
        assert scaling.param_counts(cfg)["non_embedding"] == model.num_params(non_embedding=True)


def test_memory_and_throughput_arithmetic():
    mem = scaling.training_memory(1000)
    assert mem["float32"] == {"weights": 4000, "gradients": 4000, "adamw": 8000, "total": 16000}
    assert mem["bfloat16"]["total"] == 8000
    # 1e12 FLOP/s peak at 50% MFU and 1e6 FLOPs per token: 5e5 tokens/s per GPU
    run = scaling.throughput(1e6, tokens=1.8e9, peak_flops=1e12, mfu=0.5, hours=0.5)
    assert run["tokens_per_sec_per_gpu"] == pytest.approx(5e5)
    assert run["gpu_hours"] == pytest.approx(1.0)         # 1.8e9 / 5e5 s = 1 h
    assert run["tokens_per_sec_needed"] == pytest.approx(1e6)
    assert run["gpus_needed"] == pytest.approx(2.0)       # half the time: two GPUs
    assert run["mfu_needed_one_gpu"] == pytest.approx(1.0)


def test_gpu_peaks_agree_with_the_trainer():
    from gpt import trainer

    for name, peak in trainer.PEAK_BF16_FLOPS.items():
        assert scaling.GPU_PEAK_FLOPS[name] == peak


# ---------------------------------------------------------------- Chinchilla

@pytest.mark.parametrize("n, compute, tokens", scaling.CHINCHILLA_TABLE3)
def test_approach1_reproduces_table3(n, compute, tokens):
    # Table 3 reads from the model size: the budget for which it is optimal, and its tokens
    c, d = scaling.approach1_for_params(n)
    assert c == pytest.approx(compute, rel=0.10)
    assert d == pytest.approx(tokens, rel=0.10)
    # and the other way: from the budget to the size and tokens
    n_opt, d_opt = scaling.approach1(compute)
    assert n_opt == pytest.approx(n, rel=0.10)
    assert d_opt == pytest.approx(tokens, rel=0.10)


def test_approach1_constants_are_the_table3_fit():
    n, c, _ = np.array(scaling.CHINCHILLA_TABLE3).T
    slope, log_k = np.polyfit(np.log(c), np.log(n), 1)
    assert slope == pytest.approx(scaling.APPROACH1_A, abs=0.001)
    anchor = np.exp(np.mean(np.log(n) - scaling.APPROACH1_A * np.log(c)))
    assert anchor == pytest.approx(scaling.APPROACH1_K, rel=0.001)


@pytest.mark.parametrize("compute", [1e18, 5.76e23, 1e26])
def test_approach3_optimum_minimises_the_loss_on_the_budget(compute):
    n_opt, d_opt = scaling.approach3(compute)
    assert 6 * n_opt * d_opt == pytest.approx(compute)
    # an independent check of the closed form: a dense scan along 6 N D = C
    n = n_opt * np.geomspace(0.2, 5, 20001)
    losses = scaling.chinchilla_loss(n, compute / (6 * n))
    assert n[np.argmin(losses)] == pytest.approx(n_opt, rel=1e-3)


def test_tokens_per_param_rule():
    n, d = scaling.tokens_per_param_rule(1.2e21, ratio=20)
    assert d == pytest.approx(20 * n)
    assert 6 * n * d == pytest.approx(1.2e21)


@pytest.mark.parametrize("n_target", [10e6, 124e6, 1.3e9, 70e9])
def test_nearest_config_follows_the_rule(n_target):
    cfg = scaling.nearest_config(n_target, vocab_size=50304, block_size=1024)
    total = meta_model(GPTConfig(**{**cfg.to_dict(), "kernels": "torch"})).num_params()
    assert cfg.n_embd // cfg.n_head == 64 and cfg.n_embd % 64 == 0
    assert 32 <= cfg.n_embd / cfg.n_layer <= 128
    # no buildable shape is nearer than the 5% tolerance the rule allows (brute force)
    best = min(
        abs(math.log(scaling.param_counts(SimpleNamespace(
            n_layer=L, n_embd=64 * h, vocab_size=50304, block_size=1024,
            bias=False))["total"] / n_target))
        for L in range(1, 200) for h in range(max(1, L // 2), 2 * L + 1))
    assert abs(math.log(total / n_target)) <= max(best, math.log(1.05)) + 1e-12


def test_nearest_config_of_gpt2_small_is_gpt2_small():
    cfg = scaling.nearest_config(124.4e6, vocab_size=50257, block_size=1024, bias=True)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (12, 12, 768)


def test_plan_and_count_commands(capsys):
    result = scaling.main(["plan", "--gpu_hours=1000", "--gpu=A100", "--mfu=0.5",
                           "--dataset_tokens=1e9"])
    assert result["compute"] == pytest.approx(1000 * 3600 * 312e12 * 0.5)
    rows = {row["rule"].split(" (")[0]: row for row in result["rows"]}
    n1, d1 = scaling.approach1(result["compute"])
    assert rows["Approach 1"]["params"] == pytest.approx(n1)
    assert rows["Approach 1"]["epochs"] == pytest.approx(d1 / 1e9)
    for row in result["rows"]:
        assert row["config_params"] == pytest.approx(row["params"], rel=0.05)
    counted = scaling.main(["count", "--preset=gpt2-xl", "--n_layer=2", "--tokens=1e9"])
    assert counted["config"]["n_layer"] == 2 and counted["config"]["n_embd"] == 1600
    out = capsys.readouterr().out
    assert "Approach 3" in out and "GPU-hours" in out


# ---------------------------------------------------------------- fitting

def test_parabola_fit_flags_what_it_cannot_trust():
    n = [1e3, 1e4, 1e5]
    assert scaling.fit_isoflop_minimum(n, [3.0, 2.0, 3.0])["interior"]
    assert scaling.fit_isoflop_minimum(n, [3.0, 2.0, 3.0])["n_opt"] == pytest.approx(1e4)
    assert scaling.fit_isoflop_minimum(n, [2.0, 3.0, 2.0])["n_opt"] is None   # no minimum
    assert not scaling.fit_isoflop_minimum(n, [3.0, 2.5, 2.2])["interior"]   # beyond the sizes


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_fit_recovers_a_known_exponent(noise):
    """Losses from Chinchilla's parametric law along each budget (plus noise): the
    parabola minima and the power law across budgets recover a = beta / (alpha + beta)."""
    a_true = scaling.CHINCHILLA_BETA / (scaling.CHINCHILLA_ALPHA + scaling.CHINCHILLA_BETA)
    sizes = np.geomspace(1e6, 1e11, 41)  # one grid for every budget, as in a real sweep
    records = []
    for budget in np.geomspace(1e18, 1e21, 4):
        centre = math.sqrt(budget / 120)  # the 20-tokens-per-parameter guess, not the truth
        n = sizes[(sizes > centre / 10) & (sizes < centre * 10)]
        loss = scaling.chinchilla_loss(n, budget / (6 * n)) + noise * np.random.randn(len(n))
        records += [dict(budget=float(budget), params=float(x), val_loss=float(y))
                    for x, y in zip(n, loss)]
    law = scaling.fit_sweep(records)["power_law"]
    assert law["a"] == pytest.approx(a_true, rel=0.05)


def test_power_law_fit_is_exact_on_a_power_law():
    c = np.geomspace(1e15, 1e20, 5)
    law = scaling.fit_power_law(c, 0.3 * c ** 0.37)
    assert law["a"] == pytest.approx(0.37, rel=1e-9) and law["k"] == pytest.approx(0.3, rel=1e-6)


# ---------------------------------------------------------------- the sweep, end to end

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    text = SHARED.read_text()[:40_000] if SHARED.exists() else None
    if text is None:
        from gpt.data import load_text

        text = load_text("shakespeare")[:40_000]
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(text)
    return path


def test_tiny_sweep_end_to_end_and_resumed(corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", f"--out_dir={out}", f"--dataset={corpus}", f"--data_dir={tmp_path / 'data'}",
            "--budgets=2e8,5e8", "--sizes=1x16,1x32,2x32", "--per_budget=3", "--head_dim=16",
            "--batch_size=4", "--block_size=16", "--min_iters=5", "--eval_tokens=1024",
            "--device=cpu", "--progress=False"]
    first = scaling.main(argv)
    assert first["runs_trained_now"] == 6
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 6
    for path in records:
        rec = json.loads(path.read_text())
        assert math.isfinite(rec["val_loss"]) and 0 < rec["val_loss"] < 10
        assert rec["compute"] == pytest.approx(rec["budget"], rel=0.2)  # whole steps only
        assert not (out / "runs" / rec["name"] / "ckpt.pt").exists()   # deleted once evaluated
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["runs"]) == 6 and len(saved["fit"]["per_budget"]) == 2
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # again: every run is skipped, the records are the same
    second = scaling.main(argv)
    assert second["runs_trained_now"] == 0
    assert [r["finished"] for r in second["runs"]] == [r["finished"] for r in first["runs"]]
    # a run that never wrote its record (interrupted) is the only one trained again
    records[0].unlink()
    assert scaling.main(argv)["runs_trained_now"] == 1
    # other trainer settings in the same folder: refused before training anything
    with pytest.raises(UsageError, match="--learning_rate"):
        scaling.main(argv + ["--learning_rate=1e-2"])
    assert "to train" in capsys.readouterr().out


# ---------------------------------------------------------------- user mistakes

@pytest.mark.parametrize("argv, match", [
    (["plan", "--compute=0"], "--compute must be > 0"),
    (["count", "--preset=gpt5"], "--preset='gpt5' is not a preset"),
    (["sweep", "--budgets=1e3,1e4"], "--budgets: 1e\\+03 FLOPs is too small"),
])
def test_cli_errors_are_one_line(argv, match):
    proc = subprocess.run([sys.executable, "-m", "gpt.scaling", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("python -m gpt.scaling: error: ")
    assert re.search(match, lines[0])


@pytest.mark.parametrize("argv, match", [
    (["plan", "--compute=-1e20"], "--compute must be > 0"),
    (["plan", "--compute=1e20", "--gpu_hours=10"], "not both"),
    (["plan", "--compute=1e20", "--mfu=0"], "--mfu must be > 0"),
    (["plan", "--gpu=TPU"], "--gpu must be one of"),
    (["count", "--n_embd=100", "--n_head=3"], "--n_embd=100 must be divisible by --n_head=3"),
    (["count", "--tokens=-5"], "--tokens must be >= 0"),
    (["sweep", "--budgets=1e12"], "at least 2 budgets"),
    (["sweep", "--budgets=1e12,abc"], "--budgets expects comma-separated numbers"),
    (["sweep", "--budgets=0,1e12"], "--budgets must be > 0"),
    (["sweep", "--sizes=2x64,3"], "--sizes expects n_layer x n_embd"),
    (["sweep", "--sizes=2x30,2x32,2x64"], "not a multiple of --head_dim=8"),
    (["sweep", "--sizes=2x32,2x32,2x64"], "at least 3 sizes"),
    (["sweep", "--dataset=no/such/file.txt"], "--dataset="),
    (["sweep", "--per_budget=2"], "--per_budget must be >= 3"),
    ([], "expected a command"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_usage_errors(argv, match):
    with pytest.raises(UsageError, match=match):
        scaling.main(argv)


def test_help_per_command(capsys):
    for command in ("count", "plan", "sweep"):
        with pytest.raises(SystemExit) as exit_:
            scaling.main([command, "--help"])
        assert exit_.value.code == 0
        assert f"usage: python -m gpt.scaling {command}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        scaling.main(["--help"])
    assert exit_.value.code == 0
    assert "count" in capsys.readouterr().out
