"""Tokenizers: characters, a byte-level BPE trained here, and GPT-2's BPE.

One file although over 500 lines: the three kinds share the special-token and tiktoken
helpers, and `get_tokenizer` / `load_tokenizer` build every kind; each kind is one section.

Every tokenizer has the same small interface:

    tok.name, tok.vocab_size, tok.eot_token (int or None)
    tok.encode(text) -> list[int]        decode(encode(s)) == s for every string s
    tok.decode(ids) -> str               ids: list, np.ndarray or 1-D torch tensor
    tok.save(path)                       JSON; load_tokenizer(path) restores any kind

`get_tokenizer("char" | "bpe" | "gpt2", ...)` builds one by name.

Special tokens: with `special_tokens=True` the char and BPE tokenizers add `<PAD>`, `<BOS>`,
`<EOS>`, `<UNK>` after their ordinary ids (so character and merge ids do not move), as
`tok.pad_token`, `tok.bos_token`, `tok.eos_token`, `tok.unk_token` (the event tokenizer's
names); `eot_token` is then `<EOS>`. They are never read from text (a "<EOS>" typed in a text
is five characters); a prepared corpus puts them around documents (`gpt.data.prepare`). With
them the char tokenizer encodes a character it has not seen as `<UNK>` instead of failing.
GPT-2's tokenizer keeps its one special token, `<|endoftext|>` (50256), as `eos_token`.

The BPE tokenizers encode through `tiktoken`: the trained merges become a
`tiktoken.Encoding` (ranks = merge order), so encoding a megabyte takes a fraction of a
second. GPT-2's regex pre-split pattern is read from `tiktoken_ext.openai_public`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import regex
import tiktoken
import tiktoken.load  # not imported by `import tiktoken`

from gpt.errors import UsageError
from gpt.files import write_bytes, write_json

SPECIAL_TOKENS = ("<PAD>", "<BOS>", "<EOS>", "<UNK>")
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
TOKENIZER_KINDS = ("char", "bpe", "gpt2")
DEFAULT_BPE_VOCAB_SIZE = 1024


def gpt2_pattern() -> str:
    """GPT-2's pre-tokenization regex (tiktoken's `r50k_base` pattern)."""
    from tiktoken_ext import openai_public

    return openai_public.r50k_pat_str


def _as_id_list(ids) -> list[int]:
    """Token ids from a list/tuple, a numpy array or a 1-D torch tensor, as Python ints."""
    if hasattr(ids, "detach"):  # torch.Tensor, without importing torch here
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return ids.astype(np.int64).tolist()
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------------------
# characters


def _special_ids(names, first_id):
    """{name: id} of the special tokens numbered from first_id, and the four roles' ids."""
    ids = {name: first_id + i for i, name in enumerate(names)}
    roles = {role: ids.get(name) for role, name in
             zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIAL_TOKENS)}
    return ids, roles


class CharTokenizer:
    """One id per character: the sorted unique characters of the training text, then (with
    special_tokens=True) <PAD>, <BOS>, <EOS>, <UNK>."""

    name = "char"

    def __init__(self, chars: str, special_tokens: bool = False):
        chars = "".join(sorted(set(chars)))
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.has_special_tokens = bool(special_tokens)
        names = SPECIAL_TOKENS if special_tokens else ()
        self.special_tokens, roles = _special_ids(names, len(chars))
        for role, i in roles.items():
            setattr(self, role, i)
        self.eot_token = self.eos_token
        self.itos = list(chars) + list(names)  # id -> its text (a special token's name)

    @classmethod
    def from_text(cls, text: str, special_tokens: bool = False) -> CharTokenizer:
        return cls(text, special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        if self.unk_token is not None:
            unk = self.unk_token
            return [stoi.get(c, unk) for c in text]
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted(set(text) - stoi.keys())
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            noun = "character" if len(missing) == 1 else "characters"
            verb = "is" if len(missing) == 1 else "are"
            raise ValueError(
                f"{noun} {shown}{more} {verb} not in this tokenizer's vocabulary of "
                f"{self.vocab_size} characters"
            ) from None

    def decode(self, ids) -> str:
        ids = _as_id_list(ids)
        itos = self.itos
        bad = [i for i in ids if not 0 <= i < len(itos)]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for vocab_size {self.vocab_size}")
        return "".join([itos[i] for i in ids])

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars, "special_tokens": self.has_special_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"], d.get("special_tokens", False))

    def save(self, path) -> None:
        write_json(path, self.to_dict(), indent=None, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------
# byte-level BPE through tiktoken


class _TiktokenTokenizer:
    """Shared encode/decode for tokenizers backed by a `tiktoken.Encoding`."""

    enc: tiktoken.Encoding
    eot_token: int | None

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str, allowed_special=()) -> list[int]:
        """Token ids of `text`.

        By default special-token strings such as "<|endoftext|>" inside `text` are encoded
        as ordinary text (so any corpus round-trips); `allowed_special="all"` (or a set of
        names) turns them into their special ids.
        """
        if not allowed_special:
            return self.enc.encode_ordinary(text)
        return self.enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def decode(self, ids) -> str:
        ids = _as_id_list(ids)
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range for vocab_size {n}")
        # Byte-level tokens can split a UTF-8 character; "replace" only matters for such
        # partial sequences, a full encoding always decodes back to the original text.
        return self.enc.decode(ids, errors="replace")

    def save(self, path) -> None:
        write_json(path, self.to_dict(), indent=None, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _train_merges(chunk_counts: dict[bytes, int], n_merges: int) -> list[tuple[int, int]]:
    """Learn up to `n_merges` BPE merges over byte chunks weighted by their frequency.

    Returns the merges as (left id, right id) pairs; merge k creates token id 256 + k.
    Pair counts are kept up to date incrementally: a merge only revisits the chunks that
    contain the merged pair (found through `where`), subtracting their old pairs and adding
    their new ones. The most frequent pair comes from a max-heap with lazy deletion; ties go
    to the pair whose token bytes sort first, so training is deterministic.
    """
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    vocab = [bytes([i]) for i in range(256)]  # token id -> its bytes

    counts: dict[tuple[int, int], int] = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            counts[pair] += f
            where.setdefault(pair, set()).add(wi)

    def entry(pair, c):
        return (-c, vocab[pair[0]], vocab[pair[1]], pair)

    heap = [entry(p, c) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    by_bytes: dict[bytes, int] = {b: i for i, b in enumerate(vocab)}
    while len(merges) < n_merges and heap:
        negc, _, _, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -negc:
            continue  # stale entry: the count changed since it was pushed
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = by_bytes.get(merged)
        if new_id is None:
            # Two different pairs can spell the same bytes ("ab"+"c" and "a"+"bc"). Such a
            # merge reuses the existing token, so every id keeps unique bytes (which the
            # tiktoken ranks need) and the vocabulary still grows by exactly one per merge.
            new_id = len(vocab)
            vocab.append(merged)
            by_bytes[merged] = new_id
            merges.append(pair)
        a, b = pair
        changed: dict[tuple[int, int], int] = Counter()
        for wi in where.pop(pair, ()):
            w = words[wi]
            if len(w) < 2:
                continue
            f = freqs[wi]
            out = []
            i, n, hit = 0, len(w), False
            while i < n:
                if i + 1 < n and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                    hit = True
                else:
                    out.append(w[i])
                    i += 1
            if not hit:
                continue  # `where` keeps stale word indices; this word lost the pair earlier
            for p in zip(w, w[1:]):
                changed[p] -= f
            for p in zip(out, out[1:]):
                changed[p] += f
                where.setdefault(p, set()).add(wi)
            words[wi] = out
        for p, d in changed.items():
            if d == 0:
                continue
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
                heapq.heappush(heap, entry(p, c))
            else:  # no chunk holds this pair any more
                counts.pop(p, None)
                where.pop(p, None)
        counts.pop(pair, None)
    return merges


class BPETokenizer(_TiktokenTokenizer):
    """A byte-level BPE (GPT-2 style) trained with `BPETokenizer.train`.

    Ids 0..255 are the single bytes, 256.. the merged tokens in the order they were learned,
    then the special tokens. Encoding runs in tiktoken with the merge order as ranks.
    """

    name = "bpe"

    def __init__(self, merges, pat_str: str | None = None, special_tokens=(GPT2_EOT,)):
        self.pat_str = pat_str if pat_str is not None else gpt2_pattern()
        self.merges = [(int(a), int(b)) for a, b in merges]
        vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise ValueError(f"merge ({a}, {b}) refers to a token that does not exist yet")
            vocab.append(vocab[a] + vocab[b])
        ranks = {tok: rank for rank, tok in enumerate(vocab)}
        if len(ranks) != len(vocab):
            raise ValueError("merges produce duplicate tokens; the merge list is corrupt")
        self.special_tokens = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
        self.enc = tiktoken.Encoding(
            f"bpe{len(vocab) + len(self.special_tokens)}",
            pat_str=self.pat_str,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=len(vocab) + len(self.special_tokens),
        )
        _, roles = _special_ids(tuple(self.special_tokens), len(vocab))
        for role, i in roles.items():
            setattr(self, role, i)
        # <EOS> when the tokenizer has it, else GPT-2's <|endoftext|> (the default)
        self.eot_token = self.eos_token if self.eos_token is not None else \
            self.special_tokens.get(GPT2_EOT)
        if self.eos_token is None:
            self.eos_token = self.eot_token

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens=(GPT2_EOT,),
        pat_str: str | None = None,
    ) -> BPETokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        The text is pre-split with `pat_str` (GPT-2's pattern by default), so merges never
        cross a word/space/punctuation boundary. If the text runs out of pairs to merge
        first, training stops early with a warning and `vocab_size` is smaller.
        """
        special_tokens = tuple(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size <= 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size must be an int > 256 + {len(special_tokens)} special token(s) "
                f"= {256 + len(special_tokens)}, got {vocab_size!r}"
            )
        if not isinstance(text, str) or not text:
            raise ValueError("BPETokenizer.train needs a non-empty training text")
        pat_str = pat_str if pat_str is not None else gpt2_pattern()
        chunk_counts = Counter(regex.findall(pat_str, text))
        byte_counts: dict[bytes, int] = Counter()
        for chunk, c in chunk_counts.items():
            byte_counts[chunk.encode("utf-8")] += c
        n_merges = vocab_size - 256 - len(special_tokens)
        merges = _train_merges(byte_counts, n_merges)
        if len(merges) < n_merges:
            warnings.warn(
                f"the training text only supports {len(merges)} merges; vocab_size is "
                f"{256 + len(merges) + len(special_tokens)} instead of {vocab_size}",
                stacklevel=2,
            )
        return cls(merges, pat_str=pat_str, special_tokens=special_tokens)

    def to_dict(self) -> dict:
        return {
            "type": "bpe",
            "pat_str": self.pat_str,
            "merges": [list(m) for m in self.merges],
            "special_tokens": list(self.special_tokens),
            # informative only (the merges define them): each merged token's bytes as hex
            "tokens_hex": [self.enc.decode_single_token_bytes(256 + i).hex() for i in range(len(self.merges))],
        }

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        return cls(d["merges"], pat_str=d["pat_str"], special_tokens=d["special_tokens"])


# ----------------------------------------------------------------------------------------
# GPT-2


# Where GPT-2's ranks come from when tiktoken cannot download them: the openai-whisper sdist
# on PyPI ships tiktoken's r50k_base file as whisper/assets/gpt2.tiktoken, so `pip download`
# (which works wherever pip install does) brings it. Its sha256 is that of r50k_base.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_RANKS_PIP_SPEC = "openai-whisper==20250625"
GPT2_RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"
GPT2_RANKS_FILE = "r50k_base.tiktoken"  # the cached copy, in default_cache_dir()


def default_cache_dir() -> Path:
    """Where downloads are kept (GPT-2's ranks here, Tiny Shakespeare in gpt.data):
    $GPT_CACHE_DIR, else ~/.cache/gpt-triton."""
    return Path(os.environ.get("GPT_CACHE_DIR") or Path.home() / ".cache" / "gpt-triton")


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _gpt2_encoding(path) -> tiktoken.Encoding:
    """GPT-2's encoding from a ranks file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 ranks file not found: {path}")
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    if len(ranks) != GPT2_EOT_ID:
        raise ValueError(f"{path} has {len(ranks)} ranks; GPT-2's r50k_base file has {GPT2_EOT_ID}")
    return tiktoken.Encoding(
        "gpt2",
        pat_str=gpt2_pattern(),
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def fetch_gpt2_ranks(dest) -> Path:
    """Write GPT-2's ranks to `dest`: `pip download` the openai-whisper sdist into a temporary
    folder, take its gpt2.tiktoken, check its sha256, write it atomically. Raises OSError."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", GPT2_RANKS_PIP_SPEC, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"`pip download {GPT2_RANKS_PIP_SPEC}` failed: {last}")
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise OSError(f"`pip download {GPT2_RANKS_PIP_SPEC}` brought no .tar.gz")
        with tarfile.open(archives[0]) as tar:
            member = next((m for m in tar.getmembers()
                           if m.isfile() and m.name.endswith("/" + GPT2_RANKS_MEMBER)), None)
            if member is None:
                raise OSError(f"{archives[0].name} has no {GPT2_RANKS_MEMBER}")
            data = tar.extractfile(member).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise OSError(f"{GPT2_RANKS_MEMBER} from {GPT2_RANKS_PIP_SPEC} has sha256 {digest}, "
                      f"not r50k_base's {GPT2_RANKS_SHA256}")
    write_bytes(dest, data)
    return dest


def offline_gpt2_ranks(cache_dir=None) -> Path:
    """A local copy of GPT-2's ranks: the one cached in `cache_dir` (default
    default_cache_dir()) if its sha256 is right, else one fetched with pip into it.
    Raises OSError when neither works."""
    path = Path(default_cache_dir() if cache_dir is None else cache_dir) / GPT2_RANKS_FILE
    if path.is_file() and _sha256(path) == GPT2_RANKS_SHA256:
        return path
    return fetch_gpt2_ranks(path)


class GPT2Tokenizer(_TiktokenTokenizer):
    """GPT-2's BPE (50257 tokens, <|endoftext|> = 50256) through tiktoken.

    With `ranks_path=None` this is `tiktoken.get_encoding("gpt2")`, which downloads the
    ranks once (then caches them). When tiktoken cannot download them, the copy cached in
    `default_cache_dir()` is used, and when there is none, it is fetched there with
    pip (`offline_gpt2_ranks`). Or pass the path of a `gpt2.tiktoken` / `r50k_base.tiktoken`
    ranks file.
    """

    name = "gpt2"

    def __init__(self, ranks_path=None):
        self.ranks_path = None if ranks_path is None else str(ranks_path)
        if ranks_path is not None:
            self.enc = _gpt2_encoding(ranks_path)
        else:
            try:
                self.enc = tiktoken.get_encoding("gpt2")
            except Exception as tiktoken_err:  # requests' and OSError's many kinds, offline
                try:
                    self.enc = _gpt2_encoding(offline_gpt2_ranks())
                except OSError as err:
                    raise UsageError(
                        f"GPT-2's BPE ranks are not on this machine: tiktoken could not "
                        f"download them ({type(tiktoken_err).__name__}) and {err}; pass "
                        f"--gpt2_ranks=/path/to/r50k_base.tiktoken (from Python: "
                        f"ranks_path=...)") from None
        self.eot_token = self.eos_token = GPT2_EOT_ID
        self.pad_token = self.bos_token = self.unk_token = None  # byte-level: nothing unknown

    def to_dict(self) -> dict:
        return {"type": "gpt2", "ranks_path": self.ranks_path}

    @classmethod
    def from_dict(cls, d: dict) -> GPT2Tokenizer:
        return cls(d.get("ranks_path"))


def gpt2_tokenizer(ranks_path=None) -> GPT2Tokenizer:
    return GPT2Tokenizer(ranks_path)


# ----------------------------------------------------------------------------------------
# factory and loading

_TYPES = {"char": CharTokenizer, "bpe": BPETokenizer, "gpt2": GPT2Tokenizer}


def load_tokenizer(path):
    """Restore a tokenizer written by `tok.save(path)` (any kind, patient events included)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "events":  # imported here: text users never load the events package
        from gpt.events.tokenizer import EventTokenizer

        return EventTokenizer.from_dict(d)
    if kind not in _TYPES:
        raise ValueError(f"{path}: unknown tokenizer type {kind!r}; expected one of "
                         f"{[*_TYPES, 'events']}")
    return _TYPES[kind].from_dict(d)


def get_tokenizer(kind: str, text: str | None = None, vocab_size: int | None = None, ranks_path=None,
                  special_tokens: bool = False):
    """Build a tokenizer by name.

    "char": the characters of `text`; "bpe": a BPE trained on `text` with `vocab_size`
    (default 1024); "gpt2": GPT-2's BPE (`ranks_path` for an offline ranks file).
    special_tokens: char and bpe get <PAD>, <BOS>, <EOS>, <UNK> (bpe: instead of
    <|endoftext|>); GPT-2's keeps <|endoftext|> as its end of document.
    """
    if kind == "char":
        if not text:
            raise ValueError("the char tokenizer needs a non-empty text to build its vocabulary")
        return CharTokenizer.from_text(text, special_tokens)
    if kind == "bpe":
        if not text:
            raise ValueError("the bpe tokenizer needs a non-empty text to train on")
        return BPETokenizer.train(text, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size,
                                  special_tokens=SPECIAL_TOKENS if special_tokens else (GPT2_EOT,))
    if kind == "gpt2":
        return GPT2Tokenizer(ranks_path)
    raise ValueError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
