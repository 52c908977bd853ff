"""train.py --init_from=<GPT-2>: fine-tuning a (small, random, offline) GPT-2 checkpoint."""

import json

import pytest
import torch

import train
from gpt.cli import ConfigError, parse_overrides
from gpt.pretrained import load_hf_state_dict
from tests.test_pretrained import RANKS, hf_model
from tests.test_train import ROOT, corpus, tiny_config  # noqa: F401  (corpus is a fixture)

pytestmark = [
    pytest.mark.skipif(not RANKS.exists(), reason=f"GPT-2's ranks file {RANKS} not present"),
    pytest.mark.filterwarnings("ignore:model loaded without its GPT-2 tokenizer"),
]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A random GPT-2 with GPT-2's vocabulary and a 64-position context, saved by transformers."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf_model(vocab=50257, n_positions=64, n_layer=2, n_head=2, n_embd=32).save_pretrained(folder)
    return folder


def finetune_config(corpus, out, gpt2_dir, **kw):  # noqa: F811
    args = dict(init_from=str(gpt2_dir), gpt2_ranks=str(RANKS),
                n_layer=1, n_embd=16, n_head=1,  # ignored: the checkpoint's sizes win
                block_size=32, max_iters=4, eval_interval=2, eval_iters=2,
                learning_rate=1e-4, decay_lr=False, always_save_checkpoint=True,
                num_samples=0, eval_sample_tokens=0, plot=False)
    return tiny_config(corpus, out, **{**args, **kw})


def test_finetune_starts_from_the_checkpoint_with_gpt2_tokens(corpus, tmp_path, gpt2_dir):  # noqa: F811
    out = tmp_path / "out"
    summary = train.train(finetune_config(corpus, out, gpt2_dir))
    assert json.loads((out / "tokenizer.json").read_text())["type"] == "gpt2"
    assert summary["data_dir"].endswith("-gpt2")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    args = ckpt["model_args"]
    assert (args["n_layer"], args["n_embd"], args["vocab_size"], args["block_size"]) == (2, 32, 50257, 32)
    hf = load_hf_state_dict(gpt2_dir)
    ours = ckpt["model"]
    # the context was cropped to the first 32 of 64 positions
    assert ours["transformer.wpe.weight"].shape == (32, 32)
    # 4 AdamW steps at lr 1e-4 move each weight by at most ~4e-4 (+ decay): it started from GPT-2's
    for name, value in hf.items():
        start = value[:32] if name == "transformer.wpe.weight" else value
        assert (ours[name] - start).abs().max() < 1e-3, name
    moved = sum((ours[n] - hf[n]).abs().sum() for n in hf if n != "transformer.wpe.weight")
    assert moved > 0
    # untrained, a random GPT-2 is near uniform over its 50257 tokens; step 0's loss shows it
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["val_loss"] - torch.log(torch.tensor(50257.0)).item()) < 0.5


def test_resume_a_finetuned_run(corpus, tmp_path, gpt2_dir):  # noqa: F811
    out = tmp_path / "out"
    train.train(finetune_config(corpus, out, gpt2_dir, max_iters=2))
    summary = train.train(finetune_config(corpus, out, gpt2_dir, init_from="resume"))
    assert summary["iter_num"] == 4


@pytest.mark.parametrize("kw, match", [
    (dict(tokenizer="char"), "GPT-2's tokens"),
    (dict(block_size=65), "longer than the context"),
    (dict(causal=False), "causal"),
])
def test_finetune_errors(corpus, tmp_path, gpt2_dir, kw, match):  # noqa: F811
    with pytest.raises(ConfigError, match=match):
        train.train(finetune_config(corpus, tmp_path / "out", gpt2_dir, **kw))


def test_init_from_nonsense_is_a_usage_error(corpus, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="--init_from='gpt5'"):
        train.train(tiny_config(corpus, tmp_path / "out", init_from="gpt5"))


def test_finetune_config_file_is_valid():
    cfg = parse_overrides([str(ROOT / "config" / "finetune_shakespeare.py")], train.OPTIONS)
    assert cfg["init_from"] == "gpt2-xl" and cfg["learning_rate"] == 3e-5 and not cfg["decay_lr"]


def test_check_command_compares_logits_with_transformers(gpt2_dir, capsys):
    from gpt import pretrained

    diff = pretrained.main([f"--model={gpt2_dir}", f"--gpt2_ranks={RANKS}", "--kernels=torch",
                            "--new_tokens=5"])
    out = capsys.readouterr().out
    assert diff < 1e-4 and "OK: same logits" in out


def test_check_command_bad_model_is_one_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "gpt.pretrained", "--model=nowhere"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--model" in proc.stderr
