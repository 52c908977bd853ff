"""The trainer (gpt.trainer, and train.py around it): config overrides, the typed config, LR
schedule, a short run whose loss falls, exact resume, DDP."""

import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import train
from gpt import trainer
from gpt.cli import ConfigError, parse, parse_overrides
from gpt.train_config import TrainConfig, as_config
from tests.ddp_common import make_model_and_batches

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~60k characters of Shakespeare (the shared test copy, else the embedded corpus)."""
    if SHARED.exists():
        text = SHARED.read_text()[:60_000]
    else:
        from gpt.data import load_text

        text = load_text("shakespeare")[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(text)
    return path


def tiny_config(corpus, out_dir, **kw):
    cfg = dict(trainer.DEFAULTS)
    cfg.update(dataset=str(corpus), data_dir=str(out_dir.parent / "data"), out_dir=str(out_dir),
               n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=60,
               lr_decay_iters=60, warmup_iters=5, eval_interval=30, eval_iters=5, log_interval=10,
               learning_rate=3e-3, kernels="torch", progress=False, num_samples=1, sample_tokens=20,
               device="cpu")
    cfg.update(kw)
    return cfg


# ---------------------------------------------------------------- config overrides

def test_overrides_parse_types():
    d = dict(a=1, b=0.5, c="x", d=True)
    cfg = parse_overrides(["--a=3", "--b=1e-3", "--c=hello", "--d=False"], d)
    assert cfg == dict(a=3, b=1e-3, c="hello", d=False)
    assert d == dict(a=1, b=0.5, c="x", d=True)  # defaults untouched


@pytest.mark.parametrize("argv, match", [
    (["--nope=1"], "unknown option --nope"),
    (["--aa=1"], r"did you mean --a\?"),
    (["--a=1.5"], "--a expects an int"),
    (["--b=fast"], "--b expects a float"),
    (["--d=maybe"], "--d expects a bool"),
    (["--a"], "--a needs a value"),
    (["-a=1"], "expected --name=value"),
    (["missing_file.py"], "does not exist"),
])
def test_overrides_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides(argv, dict(a=1, b=0.5, c="x", d=True))


def test_config_file_then_overrides(tmp_path):
    f = tmp_path / "c.py"
    f.write_text('# a comment\n"""doc"""\na = 7\nb = 2\nc = "file"\n')
    assert parse_overrides([str(f), "--a=9"], dict(a=1, b=0.5, c="x")) == dict(a=9, b=2.0, c="file")
    f.write_text("a = 'seven'\n")
    with pytest.raises(ConfigError, match="a expects an int"):
        parse_overrides([str(f)], dict(a=1))
    f.write_text("import os\nos.system('echo hi')\n")
    with pytest.raises(ConfigError, match="only `name = value`"):
        parse_overrides([str(f)], dict(a=1))


def test_repo_config_file_is_valid():
    cfg = parse_overrides([str(ROOT / "config" / "train_shakespeare_char.py")], trainer.DEFAULTS)
    assert cfg["n_layer"] == 6 and cfg["block_size"] == 256 and cfg["dropout"] == 0.2


def test_options_are_the_typed_config_fields():
    # one declaration: --help's table, the defaults and the dataclass are the same names,
    # in the same order, each default of its field's type
    names = [name for group in trainer.OPTIONS.values() for name in group]
    assert names == list(trainer.DEFAULTS) == list(TrainConfig.__dataclass_fields__)
    assert TrainConfig().to_dict() == trainer.DEFAULTS
    for name, f in TrainConfig.__dataclass_fields__.items():
        assert type(trainer.DEFAULTS[name]) is f.type, name


def test_a_dict_and_a_train_config_are_the_same_config():
    argv = ["--max_iters=7", "--learning_rate=2e-3", "--bias=True", "--dataset=x.txt"]
    from_cli = as_config(parse(argv, trainer.OPTIONS))
    assert from_cli == TrainConfig(max_iters=7, learning_rate=2e-3, bias=True, dataset="x.txt")
    assert as_config({"max_iters": 7}).max_iters == 7  # missing names keep their defaults
    assert isinstance(as_config({"learning_rate": 1}).learning_rate, float)  # int -> float
    with pytest.raises(ConfigError, match="did you mean --max_iters"):
        as_config({"max_iter": 7})
    with pytest.raises(ConfigError, match="--n_layer must be >= 1"):
        as_config(TrainConfig(n_layer=0))


def test_train_script_is_the_library_behind_a_command_line():
    # train.py holds no trainer of its own: it parses the library's options and calls it
    assert train.train is trainer.train and train.OPTIONS is trainer.OPTIONS


def test_main_rejects_unknown_names():
    with pytest.raises(ConfigError, match="unknown option --nonsense"):
        train.main(["--nonsense=1"])


@pytest.mark.parametrize("kw, match", [
    (dict(init_from="gpt2-xxl"), "init_from"),
    (dict(dtype="float8"), "dtype"),
    (dict(batch_size=0), "batch_size"),
    (dict(kernels="numpy"), "kernels"),
    (dict(dtype="float16"), "float16 needs a CUDA device"),
    (dict(dataset="no/such/file.txt"), "neither a named dataset"),
    (dict(n_embd=100, n_head=3), "divisible by --n_head"),
    (dict(learning_rate=-1.0), "learning_rate must be > 0"),
    (dict(max_iters="ten"), "max_iters expects an int"),
    (dict(max_iter=10), "did you mean --max_iters"),
])
def test_bad_train_config(corpus, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        trainer.train(tiny_config(corpus, tmp_path / "out", **kw))


def test_resume_without_checkpoint_is_an_error(corpus, tmp_path):
    with pytest.raises(ConfigError, match="ckpt.pt"):
        trainer.train(tiny_config(corpus, tmp_path / "out", init_from="resume"))
    assert not (tmp_path / "out").exists()  # a user error writes nothing


# ---------------------------------------------------------------- LR schedule

def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(decay_lr=True, learning_rate=1.0, min_lr=0.1, warmup_iters=10,
                      lr_decay_iters=110)
    lrs = [trainer.get_lr(i, cfg) for i in range(130)]
    assert lrs[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # linear warmup
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == 0.1
    assert trainer.get_lr(50, TrainConfig(learning_rate=1.0, decay_lr=False)) == 1.0


# ---------------------------------------------------------------- training runs

def test_short_training_run_loss_falls(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    summary = trainer.train(tiny_config(corpus, out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 30, 60]
    # a short sample at every evaluation (eval_sample_tokens), different as training goes on
    assert all(len(r["sample"]) > 20 for r in evals) and evals[0]["sample"] != evals[-1]["sample"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 0.5
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == [10, 20, 30, 40, 50, 60]
    assert all(r["tokens_per_sec"] > 0 and r["ms_per_iter"] > 0 for r in steps)
    for name in ["ckpt.pt", "loss.png", "tokenizer.json", "metrics.jsonl"]:
        assert (out / name).exists(), name
    assert not list(out.glob("*.tmp"))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    best = min(evals[1:], key=lambda r: r["val_loss"])  # saved only when val improves
    assert ckpt["iter_num"] == best["iter"] and ckpt["best_val_loss"] == pytest.approx(best["val_loss"])
    assert summary["samples"] and len(summary["samples"][0]) > 10
    printed = capsys.readouterr().out
    assert "val loss" in printed and "tok/s" in printed and summary["samples"][0] in printed
    assert "  sample: " in printed


def test_resume_continues_bit_exactly(corpus, tmp_path):
    common = dict(max_iters=20, lr_decay_iters=20, eval_interval=10, always_save_checkpoint=True,
                  dropout=0.1, num_samples=0, gradient_accumulation_steps=2, plot=False)
    straight = tmp_path / "straight"
    trainer.train(tiny_config(corpus, straight, **common))
    split = tmp_path / "split"
    trainer.train(tiny_config(corpus, split, **{**common, "max_iters": 10}))
    assert torch.load(split / "ckpt.pt", weights_only=True)["iter_num"] == 10
    trainer.train(tiny_config(corpus, split, **{**common, "init_from": "resume"}))

    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(split / "ckpt.pt", weights_only=True)
    assert a["iter_num"] == b["iter_num"] == 20
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["best_val_loss"] == b["best_val_loss"]
    # the resumed run appended to the metrics log
    iters = [json.loads(x)["iter"] for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert iters[-1] == 20 and 10 in iters
    assert not (straight / "loss.png").exists() and not (split / "loss.png").exists()  # plot=False


def test_eval_only(corpus, tmp_path):
    summary = trainer.train(TrainConfig(**tiny_config(corpus, tmp_path / "out", eval_only=True)))
    assert summary["iter_num"] == 0 and "val_loss" in summary


def test_gradient_accumulation_matches_one_big_batch():
    model, batches = make_model_and_batches()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    it = iter(batches)
    trainer.forward_backward(model, lambda: next(it), 4, nullcontext(), scaler)
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model(x, y)[1].backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(accumulated[n], p.grad, rtol=1e-5, atol=1e-7)


def _torchrun(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_ddp_two_processes_match_single_process_gradients(tmp_path):
    _torchrun([str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "grads.pt")], tmp_path)
    ddp_grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    model, batches = make_model_and_batches()
    it = iter(batches)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer.forward_backward(model, lambda: next(it), 4, nullcontext(), scaler)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-5, atol=1e-7)


def test_train_script_under_torchrun(corpus, tmp_path):
    out = tmp_path / "out"
    args = [f"--{k}={v}" for k, v in tiny_config(corpus, out, max_iters=10, eval_interval=10,
                                                  gradient_accumulation_steps=2).items()]
    res = _torchrun([str(ROOT / "train.py"), *args], tmp_path)
    assert "processes=2" in res.stdout
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 10
