"""MEDS datasets in and out: find the shards, validate them, read them as patient timelines.

A MEDS dataset (https://github.com/Medical-Event-Data-Standard/meds) is a folder whose
`data/` holds parquet shards with one row per event: `subject_id` (int64), `time`
(timestamp[us], null for static facts), `code` (string), `numeric_value` (float32, may be
null; the column may be missing), extra columns allowed. Each subject's rows sit in one shard,
contiguous and sorted by time (static rows first). The splits are the subfolders
`data/train`, `data/tuning`, `data/held_out` (what MEDS-Transforms writes), or, without them,
`metadata/subject_splits.parquet`.

    shards = find_shards("my_meds")                  # {"train": [...], "tuning": [...], ...}
    tl = read_split("my_meds", "train")              # Timelines, validated
    times, codes, values = tl.patient(0)

Every shard is checked against `meds.DataSchema` (the schema of the `meds` package): a
missing column, a type that does not cast to the schema's without loss, a null subject_id or
code, a subject split over two shards or rows out of time order raise a one-line `UsageError`
naming the file and the column. `pyarrow` and `meds` are imported only when a dataset is read.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt.errors import UsageError

SPLITS = ("train", "tuning", "held_out")
REQUIRED = ("subject_id", "time", "code")


@dataclass
class Timelines:
    """Events of many patients, flat: patient i's rows are offsets[i]:offsets[i + 1], in time
    order with its static rows (null time) first."""

    subject_id: np.ndarray  # (P,) int64, one per patient
    offsets: np.ndarray  # (P + 1,) int64
    time: np.ndarray  # (N,) int64 microseconds since 1970 (0 where time_null)
    time_null: np.ndarray  # (N,) bool: static rows
    code: np.ndarray  # (N,) int32 index into `vocab`
    vocab: np.ndarray  # (C,) object: the distinct code strings
    numeric_value: np.ndarray  # (N,) float64, NaN where there is none

    def __len__(self):
        return len(self.subject_id)

    @property
    def n_events(self):
        return int(self.offsets[-1])

    def patient(self, i):
        """(times, codes, values) of patient i: int64 microseconds (static rows: time_null),
        code strings, floats with NaN for no value."""
        s, e = self.offsets[i], self.offsets[i + 1]
        return self.time[s:e], self.vocab[self.code[s:e]], self.numeric_value[s:e]

    def static(self, i):
        return self.time_null[self.offsets[i]:self.offsets[i + 1]]

    def select(self, patients):
        """A Timelines of the given patient indices (in that order)."""
        patients = np.asarray(patients, dtype=np.int64)
        lengths = self.offsets[patients + 1] - self.offsets[patients]
        rows = (np.repeat(self.offsets[patients] - np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                          lengths) + np.arange(int(lengths.sum())))
        return Timelines(self.subject_id[patients], np.concatenate([[0], np.cumsum(lengths)]),
                         self.time[rows], self.time_null[rows], self.code[rows], self.vocab,
                         self.numeric_value[rows])

    @classmethod
    def from_columns(cls, subject_id, time, time_null, code, numeric_value):
        """From flat columns (code as strings), rows already grouped by subject in time order."""
        vocab, inverse = np.unique(np.asarray(code, dtype=object).astype(str), return_inverse=True)
        subject_id = np.asarray(subject_id, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, subject_id[1:] != subject_id[:-1]])
        return cls(subject_id[starts], np.r_[starts, len(subject_id)].astype(np.int64),
                   np.asarray(time, dtype=np.int64), np.asarray(time_null, dtype=bool),
                   inverse.astype(np.int32), vocab.astype(object),
                   np.asarray(numeric_value, dtype=np.float64))


# ----------------------------------------------------------------------------------------
# finding and reading shards


def find_shards(meds_dir):
    """{split: [parquet paths]} of a MEDS folder, by split subfolders or subject_splits.parquet.

    In the subject_splits layout every split maps to all shards (`read_split` filters rows).
    """
    root = Path(meds_dir)
    data = root / "data"
    if not data.is_dir():
        raise UsageError(f"{root} is not a MEDS dataset: it has no data/ folder of parquet shards")
    by_folder = {s: sorted((data / s).rglob("*.parquet")) for s in SPLITS if (data / s).is_dir()}
    if by_folder.get("train"):
        return by_folder
    if (root / "metadata" / "subject_splits.parquet").is_file():
        shards = sorted(data.rglob("*.parquet"))
        if shards:
            return {s: shards for s in SPLITS}
    raise UsageError(f"{root} has no training shards: expected data/train/*.parquet, or data/*.parquet "
                     f"with metadata/subject_splits.parquet")


def _compatible(kind, arrow_type):
    """Whether a column's type casts to the MEDS type without changing what it means."""
    import pyarrow as pa

    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if kind == "subject_id":
        return pa.types.is_integer(t)
    if kind == "time":
        return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_null(t)
    if kind == "code":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "numeric_value":
        return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)
    return True


def _align(path, table):
    """The table cast to meds.DataSchema, or a one-line UsageError naming the column."""
    import meds
    from flexible_schema.exceptions import SchemaValidationError, TableValidationError

    names = table.column_names
    for col in REQUIRED:
        if col not in names:
            raise UsageError(f"{path}: missing column {col!r} (a MEDS data shard needs "
                             f"subject_id, time, code; numeric_value is optional)")
    want = {f.name: f.type for f in meds.DataSchema.schema()}
    for col in (*REQUIRED, "numeric_value"):
        if col in names and not _compatible(col, table.schema.field(col).type):
            raise UsageError(f"{path}: column {col!r} has type {table.schema.field(col).type}; "
                             f"MEDS wants {want[col]}")
    for col in ("subject_id", "code"):
        nulls = table.column(col).null_count
        if nulls:
            row = int(np.flatnonzero(table.column(col).is_null().to_numpy(zero_copy_only=False))[0])
            raise UsageError(f"{path}: column {col!r} has {nulls} null value(s), the first at row "
                             f"{row}; MEDS allows nulls only in time and numeric_value")
    keep = [c for c in names if c in (*REQUIRED, "numeric_value")]
    try:
        return meds.DataSchema.align(table.select(keep))
    except (SchemaValidationError, TableValidationError) as err:
        raise UsageError(f"{path}: {' '.join(str(err).split())}") from None
    except Exception as err:  # pyarrow's cast errors (e.g. an out-of-range timestamp)
        import pyarrow as pa

        if isinstance(err, (pa.ArrowInvalid, pa.ArrowNotImplementedError)):
            raise UsageError(f"{path}: cannot cast to the MEDS schema: {' '.join(str(err).split())}") from None
        raise


def _check_order(path, subject, time_us, null):
    """Each subject's rows contiguous, static (null time) rows first, then times non-decreasing."""
    starts = np.r_[0, np.flatnonzero(subject[1:] != subject[:-1]) + 1]
    uniq, counts = np.unique(subject[starts], return_counts=True)
    if (counts > 1).any():
        sid = uniq[counts > 1][0]
        rows = np.flatnonzero(subject == sid)
        k = np.flatnonzero(np.diff(rows) > 1)[0]
        raise UsageError(f"{path}: column 'subject_id' is not grouped: subject {sid} has rows "
                         f"{rows[k]} and {rows[k + 1]} with other subjects between; MEDS keeps each "
                         f"subject's rows together, sorted by time")
    cont = np.ones(len(subject), dtype=bool)
    cont[starts] = False  # row i continues the subject of row i - 1
    back = np.zeros(len(subject), dtype=bool)
    back[1:] = cont[1:] & ((null[1:] & ~null[:-1])
                           | (~null[1:] & ~null[:-1] & (time_us[1:] < time_us[:-1])))
    if back.any():
        row = int(np.flatnonzero(back)[0])

        def show(i):
            return "null" if null[i] else str(np.datetime64(int(time_us[i]), "us"))

        raise UsageError(f"{path}: column 'time' is not sorted: subject {subject[row]}'s row {row} "
                         f"({show(row)}) follows row {row - 1} ({show(row - 1)}); MEDS wants each "
                         f"subject's rows in time order, static rows (null time) first")


def read_shard(path):
    """One validated shard as numpy columns: subject_id, time (us), time_null, code (str), value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise UsageError(f"{path}: not a readable parquet file ({' '.join(str(err).split())})") from None
    table = _align(path, table)
    subject = table.column("subject_id").to_numpy()
    time_col = table.column("time")
    null = time_col.is_null().to_numpy(zero_copy_only=False)
    time_us = time_col.cast(pa.int64()).fill_null(0).to_numpy()
    _check_order(path, subject, time_us, null)
    code = table.column("code").to_numpy(zero_copy_only=False)
    value = table.column("numeric_value").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    return dict(subject_id=subject, time=time_us, time_null=null, code=code, numeric_value=value)


def _subject_splits(meds_dir):
    import pyarrow.parquet as pq

    path = Path(meds_dir) / "metadata" / "subject_splits.parquet"
    table = pq.read_table(path)
    for col in ("subject_id", "split"):
        if col not in table.column_names:
            raise UsageError(f"{path}: missing column {col!r}")
    return (table.column("subject_id").to_numpy().astype(np.int64),
            np.asarray(table.column("split").to_numpy(zero_copy_only=False), dtype=object))


def read_split(meds_dir, split, shards=None):
    """The validated Timelines of one split (an empty one if the split has no shards)."""
    shards = find_shards(meds_dir) if shards is None else shards
    parts = [read_shard(p) for p in shards.get(split, [])]
    seen = {}
    for path, part in zip(shards.get(split, []), parts):
        for sid in np.unique(part["subject_id"]):
            if sid in seen:
                raise UsageError(f"{path}: column 'subject_id': subject {sid} is also in {seen[sid]}; "
                                 f"MEDS keeps each subject in one shard")
            seen[sid] = path
    if not parts:
        parts = [dict(subject_id=np.zeros(0, np.int64), time=np.zeros(0, np.int64),
                      time_null=np.zeros(0, bool), code=np.zeros(0, object),
                      numeric_value=np.zeros(0))]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not (Path(meds_dir) / "data" / split).is_dir() and len(cols["subject_id"]):
        ids, names = _subject_splits(meds_dir)
        mine = np.isin(cols["subject_id"], ids[names == split])
        cols = {k: v[mine] for k, v in cols.items()}
    return Timelines.from_columns(**cols)


def read_dataset(meds_dir, splits=SPLITS):
    """{split: Timelines} of every split present, all shards validated; a subject in two splits
    is an error (it would leak between training and evaluation)."""
    shards = find_shards(meds_dir)
    out = {s: read_split(meds_dir, s, shards) for s in splits if shards.get(s)}
    names = list(out)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.intersect1d(out[a].subject_id, out[b].subject_id)
            if both.size:
                raise UsageError(f"{meds_dir}: column 'subject_id': subject {both[0]} is in both the "
                                 f"{a} and the {b} split")
    return out


# ----------------------------------------------------------------------------------------
# writing


def write_dataset(out_dir, splits, dataset_name, codes=None, extra_metadata=None,
                  shard_size=5000, force=False):
    """Write {split: Timelines} as a MEDS dataset folder, all at once: the files go to a
    temporary folder that is renamed to out_dir at the end.

    codes: optional {code: (description, parent codes)} for metadata/codes.parquet.
    extra_metadata: {file name: dict} written as JSON into metadata/ (e.g. generator settings).
    """
    import meds
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir} exists and is not empty (pass --force=True to replace it)")
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        split_rows = []
        for split, tl in splits.items():
            folder = tmp / "data" / split
            folder.mkdir(parents=True)
            for n, first in enumerate(range(0, max(len(tl), 1), shard_size)):
                part = tl.select(np.arange(first, min(first + shard_size, len(tl))))
                table = pa.table({
                    "subject_id": pa.array(np.repeat(part.subject_id, np.diff(part.offsets)), pa.int64()),
                    "time": pa.array(part.time, pa.timestamp("us"), mask=part.time_null),
                    "code": pa.array(part.vocab[part.code].astype(str), pa.string()),
                    "numeric_value": pa.array(part.numeric_value, pa.float32(),
                                              mask=np.isnan(part.numeric_value)),
                })
                pq.write_table(meds.DataSchema.align(table), folder / f"{n}.parquet")
            split_rows += [(int(s), split) for s in tl.subject_id]
        meta = tmp / "metadata"
        meta.mkdir(parents=True)
        pq.write_table(pa.table({"subject_id": pa.array([s for s, _ in split_rows], pa.int64()),
                                 "split": pa.array([p for _, p in split_rows], pa.string())}),
                       meta / "subject_splits.parquet")
        if codes:
            table = pa.table({"code": list(codes), "description": [d for d, _ in codes.values()],
                              "parent_codes": pa.array([list(p) for _, p in codes.values()],
                                                       pa.list_(pa.string()))})
            pq.write_table(meds.CodeMetadataSchema.align(table), meta / "codes.parquet")
        info = {"dataset_name": dataset_name, "etl_name": "gpt.events",
                "meds_version": meds.__version__}
        (meta / "dataset.json").write_text(json.dumps(info, indent=2))
        for name, obj in (extra_metadata or {}).items():
            (meta / name).write_text(json.dumps(obj, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
