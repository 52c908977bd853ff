"""The sampling CLI on a checkpoint written by train.py."""

import pytest
import torch

import train
from gpt import sample
from tests.test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run") / "out"
    train.train(tiny_config(corpus, out, max_iters=20, eval_interval=10, num_samples=0))
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
    with pytest.raises(FileNotFoundError, match="ckpt.pt"):
        sample.sample(cfg(tmp_path))
    with pytest.raises(ValueError, match="vocabulary"):
        sample.sample(cfg(trained, start="\u4e2d\u6587"))
    with pytest.raises(ValueError, match="temperature"):
        sample.sample(cfg(trained, temperature=0.0))
    with pytest.raises(ValueError, match="start"):
        sample.sample(cfg(trained, start=""))


def test_checkpoint_loads_with_weights_only(trained):
    model, tok = sample.load_checkpoint(trained)
    assert not model.training and tok.vocab_size == model.config.vocab_size
    ckpt = torch.load(trained / "ckpt.pt", weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "model_args", "config", "iter_num", "best_val_loss", "rng"}
