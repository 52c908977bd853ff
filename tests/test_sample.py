"""The sampling CLI on a checkpoint written by train.py."""

import pytest
import torch

from gpt import checkpoint as gckpt
from gpt import sample, trainer
from gpt.cli import UsageError
from tests.test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run") / "out"
    trainer.train(tiny_config(corpus, out, max_iters=20, eval_interval=10, num_samples=0))
    return out


def cfg(out, **kw):
    return {**sample.DEFAULTS, "out_dir": str(out), "device": "cpu", **kw}


def test_sample_cli_prints_continuations(trained, capsys):
    sample.main([f"--out_dir={trained}", "--start=ROMEO:", "--num_samples=2",
                 "--max_new_tokens=30", "--device=cpu"])
    out = capsys.readouterr().out
    assert out.count("ROMEO:") >= 2 and out.count("---------------") == 2


def test_same_seed_same_text_and_top_k_one_is_deterministic(trained):
    a = sample.sample(cfg(trained, start="First", max_new_tokens=25, num_samples=1))
    b = sample.sample(cfg(trained, start="First", max_new_tokens=25, num_samples=1))
    assert a == b and a[0].startswith("First") and len(a[0]) == len("First") + 25
    g1 = sample.sample(cfg(trained, start="First", top_k=1, seed=1, num_samples=1))
    g2 = sample.sample(cfg(trained, start="First", top_k=1, seed=2, num_samples=1))
    assert g1 == g2


def test_start_from_file(trained, tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("KING:\n")
    (text,) = sample.sample(cfg(trained, start=f"FILE:{p}", max_new_tokens=5, num_samples=1))
    assert text.startswith("KING:\n")


def test_sample_errors(trained, tmp_path):
    with pytest.raises(UsageError, match="--out_dir=.*no ckpt.pt"):
        sample.sample(cfg(tmp_path))
    with pytest.raises(UsageError, match="--start=FILE:.*no such file"):
        sample.sample(cfg(trained, start=f"FILE:{tmp_path / 'nope.txt'}"))
    with pytest.raises(UsageError, match="--greedy=True and --num_beams"):
        sample.sample(cfg(trained, greedy=True, num_beams=2))
    with pytest.raises(ValueError, match="vocabulary"):
        sample.sample(cfg(trained, start="\u4e2d\u6587"))
    with pytest.raises(ValueError, match="temperature"):
        sample.sample(cfg(trained, temperature=0.0))
    with pytest.raises(ValueError, match="start"):
        sample.sample(cfg(trained, start=""))


def test_checkpoint_loads_with_weights_only(trained):
    model, tok = gckpt.load_checkpoint(trained)
    assert not model.training and tok.vocab_size == model.config.vocab_size
    ckpt = torch.load(trained / "ckpt.pt", weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "model_args", "config", "iter_num", "best_val_loss", "rng"}


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(top_p=0.9, top_k=0), dict(num_beams=3),
                                dict(temperature=1.2, top_k=5, top_p=0.8), dict(use_cache=False)])
def test_every_strategy_from_the_cli(trained, kw):
    (text,) = sample.sample(cfg(trained, start="KING:", max_new_tokens=12, num_samples=1, **kw))
    assert text.startswith("KING:") and len(text) == len("KING:") + 12


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(num_beams=2)])
def test_deterministic_strategies_print_one_text(trained, capsys, kw):
    args = [f"--out_dir={trained}", "--start=KING:", "--num_samples=3", "--max_new_tokens=8",
            "--device=cpu"] + [f"--{k}={v}" for k, v in kw.items()]
    texts = sample.main(args)
    captured = capsys.readouterr()
    assert len(texts) == 1 and captured.out.count("---------------") == 1
    assert "deterministic: one text, not --num_samples=3" in captured.err


def test_greedy_cli_same_with_and_without_cache(trained):
    a = sample.sample(cfg(trained, start="KING:", max_new_tokens=40, greedy=True, num_samples=1))
    b = sample.sample(cfg(trained, start="KING:", max_new_tokens=40, greedy=True, num_samples=1,
                          use_cache=False))
    assert a == b


def test_prompt_longer_than_block_size_and_no_eot(trained):
    with pytest.raises(ValueError, match="block_size"):
        sample.sample(cfg(trained, start="a" * 100))  # the tiny model's block_size is 32
    with pytest.raises(ValueError, match="end-of-text"):
        sample.sample(cfg(trained, stop_at_eot=True))
    with pytest.raises(ValueError, match="top_p"):
        sample.sample(cfg(trained, top_p=1.5))
