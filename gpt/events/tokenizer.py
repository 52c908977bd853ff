"""Patient timelines -> tokens -> timelines: the event tokenizer.

A timeline becomes one token sequence, as ETHOS writes them:

    [BOS]  static codes  [TIMELINE]  code(s) [value]  [time] code(s) [value]  [time] ...  [EOS]

The static rows (null time: sex, ...) come first; `[TIMELINE]` starts the clock at the first
timed event, and each later event is preceded by the time since the one before.

- One token per code (`LAB//4548-4`, `ATC//A10BA02`, `MEDS_BIRTH`): the codes seen at least
  `min_count` times in the training split; the others are `[UNK]`. With `split_codes=True`
  the codes of a hierarchical system are two tokens, its category and the rest:
  `ICD10CM//E11.9` -> `ICD10CM//E11` `ICD10CM//+.9` (ICD-10 category = 3 characters),
  `ATC//A10BA02` -> `ATC//A10` `ATC//+BA02` (ATC levels 1-2, the therapeutic subgroup, then
  levels 3-5), so rare codes share their category's statistics and new combinations encode.
- Time-interval tokens between consecutive timed events: a gap under 5 minutes gets none (the
  same moment), a gap up to a year one of 13 bins (`TIME//5m-15m` ... `TIME//6mo-1y`), and a
  longer gap first spends `TIME//+5y` and `TIME//+1y` tokens on its whole years (age after
  MEDS_BIRTH). Decoding gives each bin its geometric middle, so times come back to the bin's
  resolution.
- A numeric value becomes one of `VAL//Q1` ... `VAL//Q<n_value_bins>` after its code: its
  quantile bin among the training values of that code (codes with at least `min_count`
  values). Decoding gives the median training value of the bin.
- `[PAD]` fills short windows (their targets are the loss's ignore index, never this token).

    tok = EventTokenizer.fit(train_timelines, min_count=5, n_value_bins=10, split_codes=False)
    ids, code_pos = tok.encode_patient(times, codes, values, static)
    events = tok.decode_events(ids)          # [(minutes since the first timed event | None, code, value)]
    print(tok.decode(ids))                   # a readable timeline
    tok.save("tokenizer.json")               # gpt.tokenizer.load_tokenizer restores it
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt.files import write_json

MINUTE, HOUR, DAY = 1.0, 60.0, 1440.0
YEAR = 365.25 * DAY
MONTH = YEAR / 12
# lower edges of the gap bins below a year: a gap in [edge_i, edge_i+1) gets bin i
TIME_BINS = [("5m", 5 * MINUTE), ("15m", 15 * MINUTE), ("1h", HOUR), ("4h", 4 * HOUR),
             ("12h", 12 * HOUR), ("1d", DAY), ("3d", 3 * DAY), ("1w", 7 * DAY), ("2w", 14 * DAY),
             ("1mo", MONTH), ("2mo", 2 * MONTH), ("3mo", 3 * MONTH), ("6mo", 6 * MONTH)]
LONG_GAPS = [("5y", 5 * YEAR), ("1y", YEAR)]  # whole years, repeated as often as needed
SPLIT_SYSTEMS = {"ICD10CM": 3, "ICD10": 3, "ICD9CM": 3, "ATC": 3}  # characters of the category
PAD, UNK, BOS, EOS, TIMELINE = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[TIMELINE]"
SPECIALS = (PAD, UNK, BOS, EOS, TIMELINE)


def time_token_names():
    edges = [lo for _, lo in TIME_BINS] + [YEAR]
    names = [f"TIME//{TIME_BINS[i][0]}-{TIME_BINS[i + 1][0] if i + 1 < len(TIME_BINS) else '1y'}"
             for i in range(len(TIME_BINS))]
    return names + [f"TIME//+{name}" for name, _ in LONG_GAPS], edges


def split_code(code):
    """(category token, rest token) of a code of a hierarchical system, else None."""
    system, sep, rest = code.partition("//")
    n = SPLIT_SYSTEMS.get(system)
    if not sep or n is None:
        return None
    return f"{system}//{rest[:n]}", f"{system}//+{rest[n:]}"


@dataclass
class Encoded:
    """Token ids of many patients (see EventTokenizer.encode_timelines)."""

    ids: np.ndarray  # (n_tokens,) int32
    offsets: np.ndarray  # (P + 1,) int64: patient i is ids[offsets[i]:offsets[i + 1]]
    code_pos: np.ndarray  # (n_events,) int64: index in ids of each event's first code token
    event_start: np.ndarray  # (n_events,) int64: index in ids of each event's first token


class EventTokenizer:
    """Codes, time gaps and numeric values of MEDS timelines as token ids (see module doc)."""

    name = "events"

    def __init__(self, codes, value_bins, split_codes=False, code_counts=None, min_count=1,
                 n_value_bins=10, source=None):
        """codes: the code (or code part) tokens; value_bins: {code: {"edges": [...], "reps":
        [...]}}; code_counts: how often each token started an event in the training split (the
        frequency baseline); source: where it was fitted (recorded for evaluation)."""
        self.split_codes = bool(split_codes)
        self.min_count, self.n_value_bins = int(min_count), int(n_value_bins)
        self.source = source or {}
        time_names, self.time_edges = time_token_names()
        value_names = [f"VAL//Q{i + 1}" for i in range(self.n_value_bins)]
        self.vocab = list(SPECIALS) + time_names + value_names + list(codes)
        if len(set(self.vocab)) != len(self.vocab):
            clash = sorted({t for t in self.vocab if self.vocab.count(t) > 1})
            raise ValueError(f"code names clash with the tokenizer's own tokens: {clash[:5]}")
        self.stoi = {t: i for i, t in enumerate(self.vocab)}
        self.pad_token, self.unk_token, self.bos_token, self.eos_token, self.timeline_token = range(5)
        self.eot_token = self.eos_token  # the end of a record, for generation's stop criterion
        self.time0 = len(SPECIALS)
        self.value0 = self.time0 + len(time_names)
        self.code0 = self.value0 + self.n_value_bins
        self.value_bins = {c: {"edges": list(map(float, b["edges"])), "reps": list(map(float, b["reps"]))}
                           for c, b in value_bins.items()}
        counts = code_counts or {}
        self.code_counts = np.array([counts.get(t, 0) for t in self.vocab], dtype=np.int64)
        # minutes each token adds to the clock (0 for non-time tokens)
        reps = [math.sqrt(lo * hi) for lo, hi in zip(self.time_edges[:-1], self.time_edges[1:])]
        reps += [span for _, span in LONG_GAPS]
        self.gap_minutes = np.zeros(len(self.vocab))
        self.gap_minutes[self.time0:self.value0] = reps
        # the tokens an event's code can start with (a rest token of a split code starts nothing)
        self.is_code_start = np.zeros(len(self.vocab), dtype=bool)
        self.is_code_start[self.code0:] = [not self._is_rest(t) for t in self.vocab[self.code0:]]
        self.is_code_start[self.unk_token] = True

    def _is_rest(self, token):
        system, sep, rest = token.partition("//")
        return self.split_codes and bool(sep) and system in SPLIT_SYSTEMS and rest.startswith("+")

    def _is_category(self, token):
        return self.split_codes and split_code(token) is not None and not self._is_rest(token)

    @property
    def vocab_size(self):
        return len(self.vocab)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, timelines, min_count=5, n_value_bins=10, split_codes=False, source=None):
        """Vocabulary, value bins and code counts from a training split (a Timelines)."""
        counts = np.bincount(timelines.code, minlength=len(timelines.vocab))
        parts = {}
        for code, n in zip(timelines.vocab, counts):
            pieces = split_code(code) if split_codes else None
            for piece in pieces or (code,):
                parts[piece] = parts.get(piece, 0) + int(n)
        kept = sorted(t for t, n in parts.items() if n >= min_count)
        value_bins = {}
        has_value = ~np.isnan(timelines.numeric_value)
        order = np.argsort(timelines.code[has_value], kind="stable")
        codes_v = timelines.code[has_value][order]
        values = timelines.numeric_value[has_value][order]
        bounds = np.searchsorted(codes_v, np.arange(len(timelines.vocab) + 1))
        for c, code in enumerate(timelines.vocab):
            v = values[bounds[c]:bounds[c + 1]]
            if len(v) >= min_count:
                value_bins[code] = _quantile_bins(v, n_value_bins)
        # how often each kept token starts a timed event: the frequency baseline's ranking
        timed = np.bincount(timelines.code[~timelines.time_null], minlength=len(timelines.vocab))
        starts, kept_set = {}, set(kept)
        for code, n in zip(timelines.vocab, timed):
            pieces = split_code(code) if split_codes else None
            first = (pieces or (code,))[0]
            first = first if first in kept_set else UNK
            starts[first] = starts.get(first, 0) + int(n)
        return cls(kept, value_bins, split_codes, starts, min_count, n_value_bins, source)

    # ------------------------------------------------------------------ encoding

    def code_ids(self, code):
        """Token ids of one code: [id] or [category id, rest id], [UNK] for unknown parts."""
        pieces = split_code(code) if self.split_codes else None
        return [self.stoi.get(p, self.unk_token) for p in (pieces or (code,))]

    def encode_patient(self, times, codes, values, static=None):
        """One patient's MEDS rows -> (ids, code_pos): token ids and, for each row, the index in
        ids of its first code token. times: int64 microseconds; codes: strings; values: floats
        (NaN for none); static: bool per row (null time), default none."""
        from gpt.events.meds_data import Timelines

        n = len(codes)
        static = np.zeros(n, dtype=bool) if static is None else np.asarray(static, dtype=bool)
        tl = Timelines.from_columns(np.zeros(n, np.int64), np.where(static, 0, times), static,
                                    codes, values)
        enc = self.encode_timelines(tl)
        return enc.ids.tolist(), enc.code_pos.tolist()

    def encode_timelines(self, timelines):
        """All patients of a Timelines -> Encoded(ids, offsets, code_pos, event_start): flat
        int32 ids, patient i's tokens at offsets[i]:offsets[i + 1], and for each event (row) the
        index in ids of its first code token and of its first token (time tokens included).
        Vectorized: every event's tokens are counted, then written in place.
        """
        tl = timelines
        n, P = tl.n_events, len(tl)
        patient = np.repeat(np.arange(P), np.diff(tl.offsets))
        # time tokens: the gap to the previous timed row of the same patient
        timed = ~tl.time_null
        prev = np.zeros(n, dtype=bool)
        prev[1:] = timed[1:] & timed[:-1] & (patient[1:] == patient[:-1])
        first_timed = timed & ~prev  # gets [TIMELINE] before it
        minutes = np.zeros(n)
        minutes[1:] = np.where(prev[1:], (tl.time[1:] - tl.time[:-1]) / 60e6, 0.0)
        n_long = []
        for _, span in LONG_GAPS:  # whole 5-year, then 1-year spans
            k = np.floor(minutes / span).astype(np.int64)
            minutes = minutes - k * span
            n_long.append(k)
        gap_bin = np.where(prev & (minutes >= TIME_BINS[0][1]),
                           np.searchsorted(self.time_edges[:-1], minutes, side="right") - 1, -1)
        # code tokens (1 or 2) and the value token of every row
        code_tok = [self.code_ids(c) for c in tl.vocab]
        first = np.array([t[0] for t in code_tok], dtype=np.int64)[tl.code]
        second = np.array([t[1] if len(t) > 1 else -1 for t in code_tok], dtype=np.int64)[tl.code]
        value_tok = self._value_tokens(tl)

        # per-row token counts, per-patient extras ([BOS], [EOS], [TIMELINE] if never timed)
        count = (first_timed + n_long[0] + n_long[1] + (gap_bin >= 0) + 1 + (second >= 0)
                 + (value_tok >= 0))
        per_patient = np.bincount(patient, weights=count, minlength=P).astype(np.int64)
        never_timed = np.bincount(patient, weights=timed, minlength=P) == 0
        p_len = per_patient + 2 + never_timed
        offsets = np.concatenate([[0], np.cumsum(p_len)])
        row_excl = np.concatenate([[0], np.cumsum(count)[:-1]])  # tokens of earlier rows
        row_start = (offsets[patient] + 1 + row_excl
                     - row_excl[tl.offsets[:-1]][patient] if n else np.zeros(0, np.int64))

        ids = np.empty(int(offsets[-1]), dtype=np.int32)
        ids[offsets[:-1]] = self.bos_token
        ids[offsets[1:] - 1] = self.eos_token
        ids[offsets[1:][never_timed] - 2] = self.timeline_token
        pos = row_start.copy()
        ids[pos[first_timed]] = self.timeline_token
        pos += first_timed
        for j, k in enumerate(n_long):
            ids[_ranges(pos, k)] = self.time0 + len(TIME_BINS) + j
            pos += k
        has_bin = gap_bin >= 0
        ids[pos[has_bin]] = self.time0 + gap_bin[has_bin]
        code_pos = pos + has_bin
        ids[code_pos] = first
        ids[code_pos[second >= 0] + 1] = second[second >= 0]
        has_value = value_tok >= 0
        ids[(code_pos + 1 + (second >= 0))[has_value]] = value_tok[has_value]
        return Encoded(ids, offsets, code_pos, row_start)

    def _value_tokens(self, tl):
        """VAL//Q token id of every row of a Timelines (-1: no value or no bins for its code)."""
        value_tok = np.full(tl.n_events, -1, dtype=np.int64)
        for c, code in enumerate(tl.vocab):
            bins = self.value_bins.get(code)
            if bins is None:
                continue
            rows = np.flatnonzero((tl.code == c) & ~np.isnan(tl.numeric_value))
            value_tok[rows] = self.value0 + np.searchsorted(bins["edges"], tl.numeric_value[rows],
                                                            side="right")
        return value_tok

    def encode(self, text):
        raise ValueError("the events tokenizer encodes patient timelines (encode_patient), not text")

    # ------------------------------------------------------------------ decoding

    def decode_events(self, ids):
        """Token ids -> [(minutes since the first timed event, or None for a static row, code,
        value or None)], up to [EOS]. Times and values come back to their bin's resolution;
        a split code whose rest is missing ends in '?'."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        events, clock, timed, open_category = [], 0.0, False, False
        for i in map(int, ids):
            if i == self.eos_token:
                break
            if i == self.timeline_token:
                timed = True
            elif self.time0 <= i < self.value0:
                clock += self.gap_minutes[i]
                timed = True
            elif self.value0 <= i < self.code0:
                last = events[-1] if events else None
                if last is not None and last[2] is None and last[1] in self.value_bins:
                    reps = self.value_bins[last[1]]["reps"]
                    last[2] = reps[min(i - self.value0, len(reps) - 1)]
            elif i == self.unk_token or self.code0 <= i < len(self.vocab):
                tok = self.vocab[i]
                if self._is_rest(tok):
                    if open_category:  # category + rest -> the whole code
                        events[-1][1] = events[-1][1][:-1] + tok.partition("//+")[2]
                    open_category = False
                    continue
                open_category = self._is_category(tok)
                events.append([clock if timed else None, tok + "?" if open_category else tok, None])
            # PAD, BOS and ids outside the vocabulary carry no event
        return [(None if t is None else float(t), c, v) for t, c, v in events]

    def decode(self, ids):
        """A readable timeline: one line per event, time since the first timed event."""
        lines = []
        for t, code, value in self.decode_events(ids):
            when = "static" if t is None else _format_minutes(t)
            lines.append(f"{when:>10}  {code}" + ("" if value is None else f"  {value:g}"))
        return "\n".join(lines)

    # ------------------------------------------------------------------ saving

    def to_dict(self):
        return {"type": "events", "codes": self.vocab[self.code0:], "split_codes": self.split_codes,
                "min_count": self.min_count, "n_value_bins": self.n_value_bins,
                "value_bins": self.value_bins, "source": self.source,
                "code_counts": {t: int(n) for t, n in zip(self.vocab, self.code_counts) if n}}

    @classmethod
    def from_dict(cls, d):
        return cls(d["codes"], d["value_bins"], d["split_codes"], d.get("code_counts"),
                   d.get("min_count", 1), d.get("n_value_bins", 10), d.get("source"))

    def save(self, path):
        write_json(path, self.to_dict(), indent=None, ensure_ascii=False)

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __repr__(self):
        return (f"EventTokenizer(vocab_size={self.vocab_size}, codes={self.vocab_size - self.code0}, "
                f"split_codes={self.split_codes}, value codes={len(self.value_bins)})")


def _ranges(starts, lengths):
    """Concatenated aranges [starts[i], starts[i] + lengths[i]) (vectorized)."""
    total = int(lengths.sum())
    base = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return base + np.arange(total)


def _quantile_bins(values, n_bins):
    """Edges between n_bins quantile bins (ties merged) and each bin's median value."""
    edges = np.unique(np.quantile(values, np.arange(1, n_bins) / n_bins))
    which = np.searchsorted(edges, values, side="right")
    bounds = np.r_[-np.inf, edges, np.inf]
    reps = []
    for b in range(len(edges) + 1):
        inside = values[which == b]
        if inside.size:
            reps.append(float(np.median(inside)))
        else:  # no training value fell in this bin (ties): a point inside it
            lo, hi = bounds[b], bounds[b + 1]
            reps.append(float(lo if np.isfinite(lo) else hi))
    return {"edges": edges.tolist(), "reps": reps}


def _format_minutes(m):
    if m >= YEAR:
        return f"{m / YEAR:.1f}y"
    if m >= DAY:
        return f"{m / DAY:.1f}d"
    if m >= HOUR:
        return f"{m / HOUR:.1f}h"
    return f"{m:.0f}m"
