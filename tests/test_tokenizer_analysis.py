"""gpt.tokenizer_analysis: compression, frequencies and merges of our BPE at several sizes."""

import json

import pytest

from gpt import tokenizer_analysis as ta
from gpt.cli import UsageError
from gpt.tokenizer import BPETokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 30


def test_smaller_vocabularies_are_prefixes_of_the_largest():
    train = TEXT[: int(0.9 * len(TEXT))]
    big = BPETokenizer.train(train, 340)
    for size in (270, 300):
        assert BPETokenizer.train(train, size).merges == big.merges[: size - 257]


def test_analyze_numbers():
    result = ta.analyze(TEXT, [270, 300, 320], n_shown=3, log=lambda *a: None)
    rows = result["tokenizers"]
    assert [r["name"] for r in rows] == ["char", "bpe", "bpe", "bpe"]
    held = TEXT[int(0.9 * len(TEXT)):]
    assert rows[0]["chars_per_token"] == 1.0 and rows[0]["tokens"] == len(held)
    cpt = [r["chars_per_token"] for r in rows[1:]]
    assert cpt == sorted(cpt) and cpt[0] > 1.0  # more merges, fewer tokens
    for r in rows:
        assert sum(r["frequencies"]) == r["tokens"] == round(len(held) / r["chars_per_token"])
        assert r["frequencies"] == sorted(r["frequencies"], reverse=True)
    assert [m["rank"] for m in result["first_merges"]] == [0, 1, 2]
    first = result["first_merges"][0]
    assert first["left"] + first["right"] == first["token"]
    assert result["last_merges"][-1]["rank"] == 320 - 257 - 1


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    out = tmp_path / "out"
    ta.main([f"--dataset={src}", "--vocab_sizes=300,270", f"--out_dir={out}"])
    md = (out / "tokenizers.md").read_text()
    assert "| bpe | 270 |" in md and "| bpe | 300 |" in md and "First merges" in md
    assert json.loads((out / "tokenizers.json").read_text())["tokenizers"][0]["name"] == "char"
    assert (out / "tokenizers.png").stat().st_size > 1000


@pytest.mark.parametrize("sizes", ["200", "abc", ""])
def test_bad_vocab_sizes(sizes):
    with pytest.raises(UsageError, match="--vocab_sizes"):
        ta.parse_sizes(sizes)
