"""Patient timelines (gpt.events): MEDS validation, the tokenizer, the synthetic process, the
one-patient-per-row batches, padding, a short training run and the command lines."""

import math
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa  # a dependency (through `meds`)
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from gpt import train_config, trainer
from gpt.cli import UsageError
from gpt.events import data as edata
from gpt.events import synthetic as syn
from gpt.events.evaluate import auroc, kl_divergence, next_event_metrics
from gpt.events.meds_data import Timelines, read_dataset, read_split
from gpt.events.tokenizer import LONG_GAPS, TIME_BINS, YEAR, EventTokenizer
from gpt.model import GPT, IGNORE_INDEX, GPTConfig
from gpt.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2015, 3, 1, 8, 30)


def write_shard(path, columns, schema=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)


def good_columns():
    return {"subject_id": [1, 1, 1, 2, 2],
            "time": [None, T0, T0 + timedelta(days=3), T0, T0 + timedelta(hours=2)],
            "code": ["GENDER//F", "ICD10CM//E11.9", "LAB//4548-4", "ICD10CM//I10", "ATC//C09AA05"],
            "numeric_value": [None, None, 7.1, None, None]}


def meds_folder(root, train_columns, schema=None):
    write_shard(root / "data" / "train" / "0.parquet", train_columns, schema)
    write_shard(root / "data" / "tuning" / "0.parquet", {**good_columns(), "subject_id": [3, 3, 3, 4, 4]})
    return root


@pytest.fixture(scope="module")
def synthetic_meds(tmp_path_factory):
    """A small synthetic MEDS dataset (1,500 patients), written once for the module."""
    return syn.write_synthetic(tmp_path_factory.mktemp("ehr") / "meds", n_subjects=1500, seed=3)


# ---------------------------------------------------------------- MEDS validation


BAD = {
    "missing column": (lambda c: {k: v for k, v in c.items() if k != "code"}, None, "missing column 'code'"),
    "wrong type": (lambda c: {**c, "time": [str(t) for t in c["time"]]}, None, "column 'time' has type string"),
    "code not a string": (lambda c: {**c, "code": [1, 2, 3, 4, 5]}, None, "column 'code' has type int64"),
    "null code": (lambda c: {**c, "code": ["A", None, "B", "C", "D"]}, None, "column 'code' has 1 null"),
    "unsorted": (lambda c: {**c, "time": [None, T0 + timedelta(days=3), T0, T0, T0]}, None,
                 "column 'time' is not sorted: subject 1's row 2"),
    "static row late": (lambda c: {**c, "time": [T0, None, T0, T0, T0]}, None, "column 'time' is not sorted"),
    "subject not grouped": (lambda c: {**c, "subject_id": [1, 2, 1, 2, 2]}, None,
                            "column 'subject_id' is not grouped"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_schema_errors_name_file_and_column_and_write_nothing(tmp_path, case):
    change, schema, match = BAD[case]
    meds = meds_folder(tmp_path / "meds", change(good_columns()), schema)
    out = tmp_path / "prepared"
    with pytest.raises(UsageError, match=match) as err:
        edata.prepare(str(meds), out)
    message = str(err.value)
    assert "\n" not in message and str(meds / "data" / "train" / "0.parquet") in message
    assert not out.exists()


def test_valid_meds_reads_with_casts_static_rows_and_splits(tmp_path):
    schema = pa.schema([("subject_id", pa.int32()), ("time", pa.timestamp("ns")),
                        ("code", pa.large_string()), ("numeric_value", pa.float64())])
    meds = meds_folder(tmp_path / "meds", good_columns(), schema)
    tl = read_split(meds, "train")
    assert list(tl.subject_id) == [1, 2] and tl.n_events == 5
    times, codes, values = tl.patient(0)
    assert list(codes) == ["GENDER//F", "ICD10CM//E11.9", "LAB//4548-4"]
    assert tl.static(0).tolist() == [True, False, False]
    assert times[2] - times[1] == 3 * 86_400_000_000 and math.isclose(values[2], 7.1, rel_tol=1e-6)
    write_shard(meds / "data" / "held_out" / "0.parquet", {**good_columns(), "subject_id": [2, 2, 2, 5, 5]})
    with pytest.raises(UsageError, match="subject 2 is in both the train and the held_out split"):
        read_dataset(meds)


def test_synthetic_dataset_is_valid_meds(synthetic_meds):
    import meds

    for shard in sorted((synthetic_meds / "data").rglob("*.parquet")):
        meds.DataSchema.validate(pq.read_table(shard))  # the meds package's own check
    splits = read_dataset(synthetic_meds)
    assert {s: len(t) for s, t in splits.items()} == {"train": 1200, "tuning": 150, "held_out": 150}
    assert syn.synthetic_info(synthetic_meds)["n_subjects"] == 1500
    codes = pq.read_table(synthetic_meds / "metadata" / "codes.parquet").to_pydict()
    assert codes["parent_codes"][codes["code"].index("ICD10CM//E11.9")] == ["ICD10CM//E11"]


# ---------------------------------------------------------------- tokenizer


def timeline():
    """One patient with a static row, a birth, gaps from seconds to decades, values, a rare code."""
    minutes = [0, 70 * YEAR + 3 * 1440, 2, 10, 130, 5 * 1440, 400 * 1440, 3 * 60, 2 * YEAR + 50 * 1440]
    codes = ["MEDS_BIRTH", "LAB//4548-4", "ICD10CM//E11.9", "ATC//A10BA02", "LAB//4548-4",
             "ICD10CM//I10", "RARE//X1", "LAB//2160-0", "MEDS_DEATH"]
    values = [np.nan, 6.9, np.nan, np.nan, 7.4, np.nan, np.nan, 1.31, np.nan]
    times = (np.datetime64("1944-05-02T10:00") + np.cumsum(minutes).astype("timedelta64[m]")).astype(
        "datetime64[us]").astype(np.int64)
    return (np.r_[0, times], np.array(["GENDER//M", *codes], dtype=object), np.r_[np.nan, values],
            np.r_[True, np.zeros(len(codes), bool)])


def fitted_tokenizer(split_codes):
    """A tokenizer fitted on 30 copies of timeline() with spread-out lab values."""
    times, codes, values, static = timeline()
    n = 30
    rng = np.random.default_rng(0)
    vals = np.tile(values, n)
    lab = ~np.isnan(vals)
    vals[lab] = vals[lab] * rng.uniform(0.6, 1.4, lab.sum())
    rare = np.tile(codes, n) == "RARE//X1"
    keep = ~rare | (np.arange(len(rare)) < len(codes))  # the rare code occurs once
    tl = Timelines.from_columns(np.repeat(np.arange(n), len(codes))[keep], np.tile(times, n)[keep],
                                np.tile(static, n)[keep], np.tile(codes, n)[keep], vals[keep])
    return EventTokenizer.fit(tl, min_count=5, n_value_bins=4, split_codes=split_codes)


def bin_of(minutes):
    """(whole 5y, whole 1y, bin index or -1) of a gap, straight from the bin tables."""
    n5 = int(minutes // LONG_GAPS[0][1])
    minutes -= n5 * LONG_GAPS[0][1]
    n1 = int(minutes // LONG_GAPS[1][1])
    minutes -= n1 * LONG_GAPS[1][1]
    edges = [lo for _, lo in TIME_BINS] + [YEAR]
    b = next((i for i in range(len(TIME_BINS)) if edges[i] <= minutes < edges[i + 1]), -1)
    return n5, n1, b


@pytest.mark.parametrize("split_codes", [False, True])
def test_tokenizer_round_trip_codes_exact_times_to_bin(split_codes, tmp_path):
    tok = fitted_tokenizer(split_codes)
    times, codes, values, static = timeline()
    ids, code_pos = tok.encode_patient(times, codes, values, static)
    assert ids[0] == tok.bos_token and ids[-1] == tok.eos_token
    assert [tok.vocab[ids[p]] for p in code_pos][:2] == ["GENDER//M", "MEDS_BIRTH"]
    events = tok.decode_events(ids)
    want = [c if c != "RARE//X1" else "[UNK]" for c in codes]
    assert [c for _, c, _ in events] == want
    assert events[0][0] is None and events[1][0] == 0.0
    true_min = (times[1:] - times[1]) / 60e6
    got_min = np.array([t for t, _, _ in events[1:]])
    for a, b, ta, tb in zip(true_min[:-1], true_min[1:], got_min[:-1], got_min[1:]):
        assert bin_of(tb - ta) == bin_of(b - a)  # each decoded gap falls in the true gap's bin
    for (_, code, v), true in zip(events, values):
        if not np.isnan(true):
            edges = tok.value_bins[code]["edges"]
            assert np.searchsorted(edges, v, side="right") == np.searchsorted(edges, true, side="right")
    if split_codes:
        assert [tok.vocab[i] for i in ids[code_pos[3]:code_pos[3] + 2]] == ["ICD10CM//E11", "ICD10CM//+.9"]
    # saved and loaded through the text tokenizers' loader: the same ids
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, EventTokenizer)
    assert again.encode_patient(times, codes, values, static)[0] == ids
    assert "ICD10CM//E11.9" in again.decode(ids)


def test_split_codes_encode_unseen_combinations():
    tok = fitted_tokenizer(split_codes=True)
    # ICD10CM//E11 and ICD10CM//+.9 are known; the rest of I10 is the empty suffix
    assert tok.unk_token not in tok.code_ids("ICD10CM//E11.9")
    assert tok.decode_events(
        [tok.bos_token, tok.timeline_token, *tok.code_ids("ICD10CM//I10"), tok.eos_token])[0][1] == "ICD10CM//I10"


# ---------------------------------------------------------------- the synthetic process


def first_rows(cols):
    sid = cols["subject_id"]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    return starts, np.r_[starts[1:], len(sid)]


def test_generator_follows_its_specification():
    """Checks against the tables themselves, not through SyntheticEHR.rates."""
    process = syn.SyntheticEHR()
    cols = process.generate(4000, seed=11)
    starts, ends = first_rows(cols)
    codes, t_us, values = cols["code"], cols["time"], cols["numeric_value"]
    female = codes[starts] == "GENDER//F"
    assert abs(female.mean() - 0.5) < 4 * 0.5 / math.sqrt(4000)
    age = (t_us[starts + 2] - t_us[starts + 1]) / syn.DAY_US / syn.YEAR_DAYS
    assert age.min() >= 30 and age.max() < 85
    bmi = values[starts + 2]  # intake BMI: the stationary draw N(26.5, 4.5)
    assert abs(bmi.mean() - 26.5) < 4 * 4.5 / math.sqrt(4000) and abs(bmi.std() - 4.5) < 0.3

    # first event after intake for men aged 50-59 with BMI < 30: rates straight from the tables
    group = (~female) & (np.floor(age / 10) == 5) & (bmi < 30) & (ends - starts > 3)
    rates = {d[0]: d[2] for d in syn.DIAGNOSES} | {syn.DEATH: syn.DEATH_BASE}
    rates |= {lab.code: lab.rate for lab in syn.LABS}
    total = sum(rates.values())
    gaps = (t_us[starts[group] + 3] - t_us[starts[group] + 2]) / syn.DAY_US / syn.YEAR_DAYS
    assert abs(gaps.mean() * total - 1) < 4 / math.sqrt(group.sum())  # Exponential(total)
    first = codes[starts[group] + 3]
    for code in ("LAB//8480-6", "LAB//39156-5", "ICD10CM//J06.9"):
        p = rates[code] / total
        n = group.sum()
        assert abs((first == code).sum() - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), code

    # a chronic drug follows its only indication after Exponential(START_RATE) years
    delays = []
    for s, e in zip(starts, ends):
        c = list(codes[s:e])
        if "ICD10CM//E11.9" in c and "ATC//A10BA02" in c:
            i, j = c.index("ICD10CM//E11.9"), c.index("ATC//A10BA02")
            assert j > i
            delays.append((t_us[s + j] - t_us[s + i]) / syn.DAY_US)
        assert all(c.count(d[0]) <= 1 for d in syn.DIAGNOSES if d[5] == "chronic")
    mean = syn.YEAR_DAYS / syn.START_RATE["chronic"]
    assert len(delays) > 50 and abs(np.mean(delays) - mean) < 4 * mean / math.sqrt(len(delays))


def test_event_frequencies_match_the_true_next_event_distribution():
    """Over all process events, the count of each code matches the sum of its true
    probabilities (replayed from the rows alone) within sampling error."""
    process = syn.SyntheticEHR()
    cols = process.generate(1500, seed=5)
    starts, ends = first_rows(cols)
    patients = [(cols["time"][s:e], cols["code"][s:e], cols["numeric_value"][s:e])
                for s, e in zip(starts, ends)]
    truth, _ = process.replay(patients)
    probs = np.concatenate(truth)
    assert np.allclose(probs.sum(axis=1), 1.0)
    seen = np.bincount([process.index[c] for p in patients for c in p[1][3:]], minlength=len(process.codes))
    expected = probs.sum(axis=0)
    big = expected > 30
    assert big.sum() > 25
    z = (seen[big] - expected[big]) / np.sqrt(expected[big])
    assert np.abs(z).max() < 5, dict(zip(np.array(process.codes)[big], z.round(1)))


# ---------------------------------------------------------------- batches and padding


@pytest.fixture(scope="module")
def prepared(synthetic_meds, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "ehr-events"
    return edata.prepare(str(synthetic_meds), out)


def test_batches_hold_one_patient_per_row_and_replay(prepared):
    ds = edata.PatientDataset(prepared, "train")
    ids = np.asarray(ds.data).astype(np.int64)
    for T in (24, 400):
        torch.manual_seed(0)
        x, y = ds.get_batch(64, T)
        torch.manual_seed(0)
        x2, y2 = ds.get_batch(64, T)
        assert torch.equal(x, x2) and torch.equal(y, y2)  # torch's RNG drives the draw
        assert x.shape == y.shape == (64, T) and x.dtype == y.dtype == torch.int64
        for xr, yr in zip(x.numpy(), y.numpy()):
            n = int((yr != IGNORE_INDEX).sum())
            assert (yr[n:] == IGNORE_INDEX).all() and (xr[n + 1:] == 0).all()
            row = np.r_[xr[:n], yr[n - 1]]  # the n + 1 real tokens of this row
            # one contiguous slice of ids, inside one patient, starting at a patient/event start
            cands = ds.starts[ds.starts + n < len(ids)]
            for j in range(min(n + 1, 6)):  # narrow down on the first tokens, then check all
                cands = cands[ids[cands + j] == row[j]]
            s = next(c for c in cands if np.array_equal(ids[c:c + n + 1], row))
            p = np.searchsorted(ds.offsets, s, side="right") - 1
            assert s + n + 1 <= ds.offsets[p + 1]
            if T == 400 and ds.offsets[p + 1] - ds.offsets[p] <= T + 1:
                assert s == ds.offsets[p] and n + 1 == ds.offsets[p + 1] - ds.offsets[p]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_padding_contributes_nothing_to_loss_or_gradients(backend):
    torch.manual_seed(0)
    V = 37
    model = GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=32, kernels=backend))
    x = torch.randint(1, V, (3, 16))
    y = torch.randint(0, V, (3, 16))
    y[1, 5:] = IGNORE_INDEX  # a short patient
    y[2, :] = IGNORE_INDEX  # a row of padding only
    x_pad = x.clone()
    x_pad[1, 6:] = 0
    x_pad[2] = 0

    def loss_and_grads(xx, yy):
        model.zero_grad()
        _, loss = model(xx, yy)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(x, y)
    loss_pad, grads_pad = loss_and_grads(x_pad, y)  # what sits at padded inputs does not matter
    loss_two, grads_two = loss_and_grads(x[:2], y[:2])  # nor does a row of padding
    model.zero_grad()
    logits, _ = GPT.forward(model, x)
    keep = y != IGNORE_INDEX
    ref = F.cross_entropy(logits[keep].double(), y[keep])  # mean over the real targets only
    ref.backward()
    tol = dict(rtol=1e-4, atol=1e-6)
    for other in (loss_pad, loss_two, ref.float().detach()):
        torch.testing.assert_close(loss, other, **tol)
    for g, gp, g2, p in zip(grads, grads_pad, grads_two, model.parameters()):
        torch.testing.assert_close(g, gp, **tol)
        torch.testing.assert_close(g, g2, **tol)
        torch.testing.assert_close(g, p.grad, **tol)


# ---------------------------------------------------------------- metrics


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 60) / 4.0  # many ties
    labels = rng.random(60) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert math.isclose(auroc(scores, labels), pairs / (len(pos) * len(neg)))
    assert auroc([0.1, 0.9], [False, True]) == 1.0 and math.isnan(auroc([1, 2], [True, True]))


def test_kl_divergence():
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert np.allclose(kl_divergence(p, np.log(np.maximum(p, 1e-30))), 0.0)
    q = np.array([0.25, 0.25, 0.5])
    want = 0.5 * math.log(2) * 2
    assert math.isclose(kl_divergence(p[:1], np.log(q))[0], want)
    assert (kl_divergence(p, np.log(q)) >= 0).all()


def test_eval_with_split_codes_maps_the_truth_onto_categories(synthetic_meds, tmp_path):
    out = edata.prepare(str(synthetic_meds), tmp_path / "split-events", options={"split_codes": True})
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.split_codes and "ICD10CM//E11" in tok.stoi and "ATC//A10" in tok.stoi
    held = read_split(synthetic_meds, "held_out").select(np.arange(20))
    process = syn.SyntheticEHR()
    probs, _ = process.replay([held.patient(i) for i in range(len(held))])
    row = np.arange(held.n_events) - np.repeat(held.offsets[:-1], np.diff(held.offsets))
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16,
                          kernels="torch"))
    r = next_event_metrics(model.eval(), tok, held, truth=(np.concatenate(probs), process.codes),
                           events=row >= 3)  # patients longer than 64 tokens take sliding windows
    assert r["events"] == sum(len(p) for p in probs)
    assert r["tokens"] == len(tok.encode_timelines(held).ids) - len(held)  # all but each [BOS]
    assert r["truth"]["top10"] > r["frequency"]["top10"]
    assert 0 < r["model"]["kl_from_truth"] and 0 < r["frequency"]["kl_from_truth"]
    assert r["truth"]["nll"] < r["frequency"]["nll"]


# ---------------------------------------------------------------- training and the CLIs


@pytest.fixture(scope="module")
def trained(synthetic_meds, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    cfg = dict(trainer.DEFAULTS)
    cfg.update(dataset=f"meds:{synthetic_meds}", data_dir=str(base / "data"), out_dir=str(base / "out"),
               n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16, max_iters=100,
               lr_decay_iters=100, warmup_iters=10, learning_rate=6e-3, min_lr=6e-4,
               eval_interval=100, eval_iters=2, log_interval=50, kernels="torch", progress=False,
               num_samples=1, sample_tokens=40, device="cpu")
    summary = trainer.train(cfg)
    return base / "out", summary


def test_tiny_training_beats_the_frequency_baseline(trained, synthetic_meds):
    from gpt.checkpoint import load_checkpoint

    out, summary = trained
    assert "GENDER//" in summary["samples"][0] or "LAB//" in summary["samples"][0]  # readable
    model, tok = load_checkpoint(out)
    held = read_split(synthetic_meds, "held_out").select(np.arange(80))
    process = syn.SyntheticEHR()
    probs, _ = process.replay([held.patient(i) for i in range(len(held))])
    row = np.arange(held.n_events) - np.repeat(held.offsets[:-1], np.diff(held.offsets))
    r = next_event_metrics(model, tok, held, truth=(np.concatenate(probs), process.codes),
                           events=row >= 3)
    assert r["events"] == sum(len(p) for p in probs)
    assert r["model"]["top10"] > r["frequency"]["top10"] + 0.03
    assert r["model"]["kl_from_truth"] < r["frequency"]["kl_from_truth"]
    assert r["truth"]["top10"] >= r["model"]["top10"] - 0.02  # nothing beats the truth (much)


def test_events_cli_eval_and_sample(trained, capsys):
    from gpt.events.__main__ import main

    out, _ = trained
    r = main(["eval", f"--out_dir={out}", "--max_subjects=10", "--device=cpu"])
    text = capsys.readouterr().out
    assert "perplexity" in text and "truth" in text and (out / "events_eval_held_out.json").is_file()
    assert r["model"]["kl_from_truth"] >= 0
    r = main(["sample", f"--out_dir={out}", "--max_subjects=6", "--num_samples=3", "--days=200",
              "--truth_sims=20", "--max_new_tokens=32", "--device=cpu",
              "--code=LAB//8480-6,ICD10CM//I10"])
    text = capsys.readouterr().out
    assert "AUROC" in text and "sampled future" in text and (out / "events_sample.json").is_file()
    assert r["patients"] == 6 and list(r["outcomes"]) == ["LAB//8480-6", "ICD10CM//I10"]
    for o in r["outcomes"].values():
        assert 0.0 <= o["mean_estimate"] <= 1.0 and 0.0 <= o["mean_truth"] <= 1.0
    with pytest.raises(UsageError, match="not in the model's vocabulary"):
        main(["sample", f"--out_dir={out}", "--code=NOPE//1", "--device=cpu"])


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    p = run_cli("-m", "gpt.events", "nope")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "python -m gpt.events: error: unknown command 'nope'; expected one of generate, prepare, eval, sample, labels, predict, score"]
    meds = meds_folder(tmp_path / "bad", BAD["unsorted"][0](good_columns()))
    out, data = tmp_path / "out", tmp_path / "data"
    p = run_cli("train.py", f"--dataset=meds:{meds}", f"--out_dir={out}", f"--data_dir={data}", "--device=cpu")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line, = p.stderr.strip().splitlines()
    assert line.startswith("train.py: error:") and "column 'time'" in line and "0.parquet" in line
    assert not out.exists() and not data.exists()


def test_cli_usage_errors_in_process(tmp_path):
    from gpt.events.__main__ import main

    with pytest.raises(UsageError, match="expected a command"):
        main([])
    with pytest.raises(UsageError, match="--out=<folder> is required"):
        main(["generate"])
    with pytest.raises(UsageError, match="has no ckpt.pt"):
        main(["eval", f"--out_dir={tmp_path}"])
    with pytest.raises(UsageError, match="not a MEDS dataset"):
        main(["prepare", f"--dataset=meds:{tmp_path}"])
    with pytest.raises(UsageError, match="does not apply"):
        train_config.check_config({**trainer.DEFAULTS, "dataset": "synthetic_ehr", "tokenizer": "char"})
