"""Event datasets for train.py: MEDS folder -> token files -> one-patient-per-row batches.

    --dataset=synthetic_ehr     the built-in synthetic MEDS dataset (generated on first use into
                                data_dir/synthetic_ehr-meds)
    --dataset=meds:<dir>        any MEDS dataset folder

`prepare` validates every split, fits the tokenizer on `train` and writes, into
data_dir/<name>-events/: `{train,val}.bin` (token ids, uint16), `{train,val}_offsets.npy`
(patient boundaries), `{train,val}_starts.npy` (where each patient and each event starts),
`tokenizer.json` and, last, `meta.json`. MEDS's `tuning` split is the validation split; the
`held_out` split is kept for `python -m gpt.events eval`. A prepared folder is reused when
it was made from the same MEDS files (paths, sizes and modification times) and, when given,
with the same tokenizer options.

`PatientDataset.get_batch` never puts two patients in one row: each row is one patient's
tokens, a random crop starting at an event (or at the patient's start) when the patient is
longer than the window, else the whole patient followed by padding whose targets are the
loss's ignore index (gpt.model.IGNORE_INDEX), so padding adds nothing to the loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gpt.errors import UsageError
from gpt.files import atomic_path
from gpt.model import IGNORE_INDEX

SYNTHETIC = "synthetic_ehr"
PREFIX = "meds:"
SPLITS = {"train": "train", "val": "tuning"}  # our split name -> the MEDS split
DEFAULT_OPTIONS = dict(min_count=5, n_value_bins=10, split_codes=False)
SYNTHETIC_SUBJECTS = 10_000


def is_event_dataset(name):
    return name == SYNTHETIC or name.startswith(PREFIX)


def dataset_source(name):
    """(folder name, MEDS folder or "synthetic_ehr") of an events --dataset; checks the folder
    looks like a MEDS dataset (the shards themselves are validated by prepare)."""
    if name == SYNTHETIC:
        return SYNTHETIC, SYNTHETIC
    if not name.startswith(PREFIX) or not name[len(PREFIX):]:
        raise UsageError(f"--dataset={name!r}: expected synthetic_ehr or meds:<folder>")
    from gpt.events.meds_data import find_shards

    path = Path(name[len(PREFIX):]).expanduser()
    if not path.is_dir():
        raise UsageError(f"--dataset={name!r}: {path} is not a folder")
    find_shards(path)
    return path.resolve().name, str(path.resolve())


def synthetic_dir(data_dir, n_subjects=SYNTHETIC_SUBJECTS, seed=0):
    """The synthetic MEDS dataset under data_dir, generated if missing or made otherwise."""
    from gpt.events.synthetic import VERSION, synthetic_info, write_synthetic

    meds_dir = Path(data_dir) / f"{SYNTHETIC}-meds"
    info = synthetic_info(meds_dir) if meds_dir.exists() else None
    wanted = {"version": VERSION, "n_subjects": n_subjects, "seed": seed}
    if info is not None and all(info.get(k) == v for k, v in wanted.items()):
        return meds_dir
    if meds_dir.exists() and any(meds_dir.iterdir()) and info is None:
        raise UsageError(f"{meds_dir} exists but was not written by gpt.events; move it away")
    write_synthetic(meds_dir, n_subjects=n_subjects, seed=seed, force=True)
    return meds_dir


def _write_atomic(path, write):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def prepare(source, out_dir, options=None, force=False, data_dir="data"):
    """Tokenize a MEDS folder (or "synthetic_ehr") into out_dir; returns out_dir.

    options: tokenizer options (min_count, n_value_bins, split_codes); None reuses a prepared
    folder whatever its options, and uses DEFAULT_OPTIONS for a new one. Every split is read
    and validated before anything is written.
    """
    from gpt.events.meds_data import read_dataset
    from gpt.events.synthetic import synthetic_info
    from gpt.events.tokenizer import EventTokenizer

    out_dir = Path(out_dir)
    meds_dir = synthetic_dir(data_dir) if source == SYNTHETIC else Path(source)
    meds_dir = str(meds_dir.resolve())
    meta = _read_meta(out_dir)
    if (not force and meta is not None and meta.get("meds_dir") == meds_dir
            and meta.get("fingerprint") == fingerprint(meds_dir)
            and (options is None or meta.get("options") == {**DEFAULT_OPTIONS, **options})):
        return out_dir
    options = {**DEFAULT_OPTIONS, **(options or {})}
    splits = read_dataset(meds_dir)  # validates every shard: a UsageError leaves nothing behind
    for ours, theirs in SPLITS.items():
        if theirs not in splits or not len(splits[theirs]):
            raise UsageError(f"{meds_dir}: the MEDS {theirs!r} split is empty or missing "
                             f"(train.py needs it as its {ours} split)")
    info = synthetic_info(meds_dir)
    tok = EventTokenizer.fit(splits["train"], source={"meds_dir": meds_dir, "synthetic": info},
                             **options)
    if tok.vocab_size > 65535:
        raise UsageError(f"{tok.vocab_size} tokens do not fit the uint16 token files; raise "
                         f"--min_count")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until the end
    counts = {}
    for ours, theirs in SPLITS.items():
        enc = tok.encode_timelines(splits[theirs])
        starts = np.unique(np.concatenate([enc.offsets[:-1], enc.event_start]))
        _write_atomic(out_dir / f"{ours}.bin", lambda f: f.write(enc.ids.astype(np.uint16).tobytes()))
        _write_atomic(out_dir / f"{ours}_offsets.npy", lambda f: np.save(f, enc.offsets))
        _write_atomic(out_dir / f"{ours}_starts.npy", lambda f: np.save(f, starts))
        counts[ours] = {"patients": len(splits[theirs]), "events": splits[theirs].n_events,
                        "tokens": int(len(enc.ids))}
    tok.save(out_dir / "tokenizer.json")
    meta = {"kind": "events", "meds_dir": meds_dir, "fingerprint": fingerprint(meds_dir),
            "options": options, "synthetic": info,
            "vocab_size": tok.vocab_size, "splits": counts, "dtype": "uint16"}
    _write_atomic(out_dir / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return out_dir


def fingerprint(meds_dir):
    """[path, size, mtime] of every parquet file of a MEDS folder: what a prepared folder was
    made from."""
    root = Path(meds_dir)
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(root.rglob("*.parquet"))]


def _read_meta(out_dir):
    path = Path(out_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if meta.get("kind") == "events" else None


class PatientDataset:
    """One split of a prepared events folder, served as (x, y) windows of single patients."""

    def __init__(self, data_dir, split="train"):
        data_dir = Path(data_dir)
        path = data_dir / f"{split}.bin"
        if _read_meta(data_dir) is None or not path.is_file():
            raise FileNotFoundError(f"{data_dir} holds no prepared events split {split!r}; "
                                    f"prepare it with `python -m gpt.events prepare`")
        self.split = split
        self.data = np.memmap(path, dtype=np.uint16, mode="r") if path.stat().st_size else np.zeros(0, np.uint16)
        self.offsets = np.load(data_dir / f"{split}_offsets.npy")
        self.starts = np.load(data_dir / f"{split}_starts.npy")

    def __len__(self):
        return len(self.data)

    @property
    def n_patients(self):
        return len(self.offsets) - 1

    def windows(self, rows, picks, block_size):
        """Start and end (exclusive) of the window for patients `rows`, from uniform numbers
        `picks` in [0, 1): the patient's start when it fits, else one of its event starts that
        leaves block_size + 1 tokens."""
        first, end = self.offsets[rows], self.offsets[rows + 1]
        lo = np.searchsorted(self.starts, first)
        hi = np.searchsorted(self.starts, end - (block_size + 1), side="right")
        n = np.maximum(hi - lo, 1)
        start = np.where(end - first <= block_size + 1, first,
                         self.starts[np.minimum(lo + (picks * n).astype(np.int64), len(self.starts) - 1)])
        return start, np.minimum(end, start + block_size + 1)

    def get_batch(self, batch_size, block_size, device="cpu"):
        """x, y (B, T) int64: each row one patient (chosen with probability proportional to its
        tokens), y = x shifted by one, padding ([PAD] in x, IGNORE_INDEX in y) after a short
        patient. Draws from torch's global RNG, so a resumed run replays the same batches."""
        token = torch.randint(len(self.data), (batch_size,)).numpy()
        picks = torch.rand(batch_size, dtype=torch.float64).numpy()
        rows = np.searchsorted(self.offsets, token, side="right") - 1
        start, end = self.windows(rows, picks, block_size)
        idx = start[:, None] + np.arange(block_size + 1)
        valid = idx < end[:, None]
        buf = self.data[np.minimum(idx, len(self.data) - 1)].astype(np.int64)
        x = np.where(valid[:, :-1], buf[:, :-1], 0)  # 0 is [PAD]
        y = np.where(valid[:, 1:], buf[:, 1:], IGNORE_INDEX)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        device = torch.device(device)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def load_splits(data_dir):
    """(tokenizer, {"train": PatientDataset, "val": PatientDataset}) of a prepared folder."""
    from gpt.events.tokenizer import EventTokenizer

    tok = EventTokenizer.load(Path(data_dir) / "tokenizer.json")
    return tok, {s: PatientDataset(data_dir, s) for s in SPLITS}
