"""Prediction tasks on patient timelines: task files, label extraction, MEDS label/prediction files.

A task says when a prediction is made and what counts as the outcome, as ETHOS and MEDS-DEV
tasks do. It is a small TOML file (shipped ones: `gpt/events/tasks/*.toml`):

    name = "metformin_after_high_hba1c"
    description = "metformin started within 90 days of an HbA1c >= 6.5 %"
    trigger = ["LAB//4548-4"]          # code(s) whose events open a prediction
    trigger_min_value = 6.5            # optional: only trigger events with value >= this
    trigger_max_value = nan            # optional: ... and <= this
    occurrence = "first"               # "first" trigger event per subject, or "all" of them
    gap_days = 0                       # prediction_time = trigger time + gap_days
    window_days = 90                   # the outcome window is (prediction_time, + window_days]
    outcome = ["ATC//A10BA02"]         # code(s) whose occurrence in the window is a positive
    exclude = ["ATC//A10BA02"]         # no row if one of these occurs at or before prediction_time
    death_code = "MEDS_DEATH"          # ends a record: no rows after it, a competing event

A code ending in `*` matches every code that starts with the rest: real datasets spell one
kind of event many ways (MIMIC-IV MEDS: `HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM`, ...),
and `HOSPITAL_ADMISSION//*` names them all.

For each subject, each (first, or every) trigger event gives one candidate row with
prediction_time = trigger time + gap. The row is kept when

- the subject is alive at prediction_time (no death_code at or before it);
- no exclusion code occurs at or before prediction_time (data up to and including
  prediction_time is what a model may see: the MEDS label schema's rule);
- no outcome code occurs in the gap (trigger time, prediction_time] (the outcome already
  happened: nothing left to predict);
- the outcome is known: it occurs in the window (label True), or the record is seen through
  the window's end (an event at or after it, label False), or the subject dies in the window
  without it (label False: death is a competing event). A record that stops earlier is
  censored and gives no row.

`extract_labels(timelines, task)` returns the rows, `write_labels` writes them in the MEDS label
schema (`meds.LabelSchema`: subject_id, prediction_time, boolean_value) and `write_predictions`
in the MEDS prediction schema that `meds-evaluation` reads (the label columns plus
`predicted_boolean_value` and `predicted_boolean_probability`). Files are validated by the
schemas before they are written (temporary file + rename); pyarrow and meds load only here.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpt.errors import UsageError
from gpt.files import atomic_path

TASKS_DIR = Path(__file__).parent / "tasks"
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class Task:
    """A binary prediction task (see the module docstring for the meaning of each field)."""

    name: str
    trigger: tuple
    window_days: float
    outcome: tuple
    description: str = ""
    trigger_min_value: float = float("nan")
    trigger_max_value: float = float("nan")
    occurrence: str = "first"
    gap_days: float = 0.0
    exclude: tuple = field(default_factory=tuple)
    death_code: str = "MEDS_DEATH"


def matches(code, patterns):
    """Whether a code is one of `patterns` (exact codes, or prefixes ending in '*')."""
    return any(code == p or (p.endswith("*") and code.startswith(p[:-1])) for p in patterns)


def matching(codes, patterns):
    """The codes of a list that match the patterns."""
    return [c for c in codes if matches(c, patterns)]


def _codes(path, key, value, required=True):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{path}: {key!r} must be a code or a list of codes, got {value!r}")
    if required and not value:
        raise UsageError(f"{path}: {key!r} needs at least one code")
    return tuple(value)


def load_task(spec):
    """A Task from a TOML file path, or from the name of a shipped task (gpt/events/tasks/)."""
    path = Path(spec)
    if not path.is_file():
        shipped = TASKS_DIR / f"{spec}.toml"
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.toml")))
            raise UsageError(f"--task={spec}: not a task file, nor a shipped task ({names})")
        path = shipped
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # Python 3.10: the same parser as a package
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError("reading a task file needs Python 3.11+ (tomllib) or the tomli "
                             "package (pip install tomli)") from None
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not a valid TOML task file ({err})") from None
    known = set(Task.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)}; a task has "
                         f"{', '.join(sorted(known))}")
    for key in ("trigger", "window_days", "outcome"):
        if key not in raw:
            raise UsageError(f"{path}: missing {key!r} (a task needs trigger, window_days, outcome)")
    kw = dict(raw)
    kw.setdefault("name", path.stem)
    kw["trigger"] = _codes(path, "trigger", raw["trigger"])
    kw["outcome"] = _codes(path, "outcome", raw["outcome"])
    kw["exclude"] = _codes(path, "exclude", raw.get("exclude", []), required=False)
    for key in ("window_days", "gap_days", "trigger_min_value", "trigger_max_value"):
        if key in raw:
            if isinstance(raw[key], bool) or not isinstance(raw[key], (int, float)):
                raise UsageError(f"{path}: {key!r} must be a number, got {raw[key]!r}")
            kw[key] = float(raw[key])
    if not kw["window_days"] > 0:
        raise UsageError(f"{path}: 'window_days' must be > 0, got {kw['window_days']}")
    if kw.get("gap_days", 0.0) < 0:
        raise UsageError(f"{path}: 'gap_days' must be >= 0, got {kw['gap_days']}")
    if kw.get("occurrence", "first") not in ("first", "all"):
        raise UsageError(f"{path}: 'occurrence' must be \"first\" or \"all\", got {kw['occurrence']!r}")
    return Task(**kw)


def extract_labels(timelines, task):
    """The task's label rows of a Timelines, as a dict of numpy arrays, one entry per row:
    subject_id (int64), prediction_time (int64 microseconds), boolean_value (bool), patient
    (index into timelines), n_rows (how many of the patient's MEDS rows are at or before
    prediction_time: the history a model may see), trigger_time (int64 microseconds)."""
    vocab = list(timelines.vocab)

    def ids(patterns):
        return np.array([i for i, c in enumerate(vocab) if matches(c, patterns)], dtype=np.int64)

    trig, out, excl = ids(task.trigger), ids(task.outcome), ids(task.exclude)
    death = ids([task.death_code])
    gap = int(round(task.gap_days * DAY_US))
    window = int(round(task.window_days * DAY_US))
    rows = {k: [] for k in ("subject_id", "prediction_time", "boolean_value", "patient", "n_rows",
                            "trigger_time")}
    value = timelines.numeric_value
    is_trig = np.isin(timelines.code, trig) & ~timelines.time_null
    if not math.isnan(task.trigger_min_value):
        is_trig &= value >= task.trigger_min_value  # NaN (no value) compares False: dropped
    if not math.isnan(task.trigger_max_value):
        is_trig &= value <= task.trigger_max_value
    for p in np.unique(np.searchsorted(timelines.offsets, np.flatnonzero(is_trig), side="right") - 1):
        s, e = int(timelines.offsets[p]), int(timelines.offsets[p + 1])
        timed = ~timelines.time_null[s:e]
        t = np.where(timed, timelines.time[s:e], np.iinfo(np.int64).min)  # static rows first
        code = timelines.code[s:e]
        hits = np.flatnonzero(is_trig[s:e])
        if task.occurrence == "first":
            hits = hits[:1]
        dead_at = t[np.isin(code, death) & timed]
        dead_at = int(dead_at[0]) if dead_at.size else None
        last = int(t[-1])
        for h in hits:
            t_trig = int(t[h])
            t_pred = t_trig + gap
            n = int(np.searchsorted(t, t_pred, side="right"))  # rows at or before prediction_time
            if dead_at is not None and dead_at <= t_pred:
                continue
            if excl.size and np.isin(code[:n], excl).any():
                continue
            in_gap = (t > t_trig) & (t <= t_pred)
            if gap and np.isin(code[in_gap], out).any():
                continue
            in_window = (t > t_pred) & (t <= t_pred + window)
            positive = bool(np.isin(code[in_window], out).any())
            seen_through = last >= t_pred + window or (dead_at is not None and dead_at <= t_pred + window)
            if not positive and not seen_through:
                continue  # censored: the record stops inside the window
            for k, v in (("subject_id", timelines.subject_id[p]), ("prediction_time", t_pred),
                         ("boolean_value", positive), ("patient", p), ("n_rows", n),
                         ("trigger_time", t_trig)):
                rows[k].append(v)
    types = dict(subject_id=np.int64, prediction_time=np.int64, boolean_value=bool,
                 patient=np.int64, n_rows=np.int64, trigger_time=np.int64)
    return {k: np.asarray(v, dtype=types[k]) for k, v in rows.items()}


# ----------------------------------------------------------------------------------------
# MEDS label and prediction files


def prediction_schema():
    """The MEDS prediction schema (meds-evaluation's `PredictionSchema`): meds.LabelSchema plus
    the optional columns predicted_boolean_value (bool) and predicted_boolean_probability
    (float32). Declared here with flexible_schema (which meds brings) rather than imported,
    so that writing predictions does not need meds-evaluation and its polars/scikit-learn.
    (flexible_schema reads the class annotations as objects: this module must not use
    `from __future__ import annotations`.)"""
    import meds
    import pyarrow as pa
    from flexible_schema import Optional

    class PredictionSchema(meds.LabelSchema):
        predicted_boolean_value: Optional(pa.bool_())
        predicted_boolean_probability: Optional(pa.float32())

    return PredictionSchema


def _table(labels, extra=None):
    import pyarrow as pa

    cols = {"subject_id": pa.array(labels["subject_id"], pa.int64()),
            "prediction_time": pa.array(labels["prediction_time"], pa.timestamp("us")),
            "boolean_value": pa.array(labels["boolean_value"], pa.bool_())}
    for name, (values, type_) in (extra or {}).items():
        cols[name] = pa.array(values, type_)
    return pa.table(cols)


def _write_parquet(path, table):
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_labels(path, labels):
    """Write label rows (extract_labels) as a parquet file in meds.LabelSchema."""
    import meds

    return _write_parquet(path, meds.LabelSchema.align(_table(labels)))


def write_predictions(path, labels, probability, threshold=0.5):
    """Write label rows with the predicted probability (and probability >= threshold as the
    predicted value) as a parquet file in the MEDS prediction schema."""
    probability = np.asarray(probability, dtype=np.float64)
    if probability.shape != labels["subject_id"].shape:
        raise ValueError(f"probability must have one value per label row "
                         f"({labels['subject_id'].shape}), got {probability.shape}")
    import pyarrow as pa

    table = _table(labels, {"predicted_boolean_value": (probability >= threshold, pa.bool_()),
                            "predicted_boolean_probability": (probability.astype(np.float32),
                                                              pa.float32())})
    return _write_parquet(path, prediction_schema().align(table))


def _read(path, schema, what):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from flexible_schema.exceptions import SchemaValidationError, TableValidationError

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise UsageError(f"{path}: not a readable parquet file ({' '.join(str(err).split())})") from None
    try:
        table = schema.align(table)
    except (SchemaValidationError, TableValidationError, pa.ArrowInvalid) as err:
        raise UsageError(f"{path}: not a MEDS {what} file: {' '.join(str(err).split())}") from None
    if "boolean_value" not in table.column_names:
        raise UsageError(f"{path}: no 'boolean_value' column (binary tasks only)")
    out = {"subject_id": table.column("subject_id").to_numpy(),
           "prediction_time": table.column("prediction_time").cast(pa.int64()).to_numpy(),
           "boolean_value": table.column("boolean_value").to_numpy(zero_copy_only=False).astype(bool)}
    if "predicted_boolean_probability" in table.column_names:
        col = table.column("predicted_boolean_probability")
        out["probability"] = col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    return out


def read_labels(path):
    """subject_id, prediction_time (int64 us), boolean_value of a MEDS label file (validated)."""
    import meds

    return _read(path, meds.LabelSchema, "label")


def read_predictions(path):
    """read_labels' columns plus `probability` (float64) of a MEDS prediction file."""
    out = _read(path, prediction_schema(), "prediction")
    if "probability" not in out:
        raise UsageError(f"{path}: no 'predicted_boolean_probability' column (scores need a probability)")
    return out


def attach(timelines, labels):
    """patient index and n_rows (MEDS rows at or before prediction_time) of each label row of
    a label file read back (read_labels), for the subjects of `timelines`."""
    where = {int(s): i for i, s in enumerate(timelines.subject_id)}
    missing = [int(s) for s in labels["subject_id"] if int(s) not in where]
    if missing:
        raise UsageError(f"label rows name subject {missing[0]} (and {len(missing) - 1} more), "
                         f"not in the MEDS split read; pass the split the labels were made from")
    patient = np.array([where[int(s)] for s in labels["subject_id"]], dtype=np.int64)
    n_rows = np.empty(len(patient), dtype=np.int64)
    for r, (p, t_pred) in enumerate(zip(patient, labels["prediction_time"])):
        s, e = timelines.offsets[p], timelines.offsets[p + 1]
        t = np.where(timelines.time_null[s:e], np.iinfo(np.int64).min, timelines.time[s:e])
        n_rows[r] = np.searchsorted(t, t_pred, side="right")
    return {**labels, "patient": patient, "n_rows": n_rows}
