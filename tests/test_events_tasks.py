"""Prediction tasks on patient timelines: task extraction, MEDS label/prediction files, the
shared-prefill sampler, calibration metrics, and the labels -> predict -> score commands."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from gpt import trainer
from gpt.cli import UsageError
from gpt.events import synthetic as syn
from gpt.events.calibration import (average_precision, bootstrap, brier, calibration_curve,
                                    score_labels, score_truth, slope)
from gpt.events.evaluate import auroc, continue_timeline
from gpt.events.futures import (_groups, future_outcome, outcome_fraction, sample_futures,
                                task_prompts)
from gpt.events.labels import (TASKS_DIR, Task, extract_labels, load_task, prediction_schema,
                               read_labels, read_predictions, write_labels, write_predictions)
from gpt.events.meds_data import Timelines, read_split
from gpt.events.tokenizer import EventTokenizer
from gpt.model import GPT, GPTConfig

# MEDS files need pyarrow and meds (dependencies; the GPU image has neither): those tests
# skip there, the task, sampler and metric tests run everywhere
needs_meds = pytest.mark.skipif(importlib.util.find_spec("meds") is None,
                                reason="needs the meds package (pyarrow)")
DAY = 86_400 * 1_000_000
T0 = np.datetime64("2016-01-01T00:00", "us").astype(np.int64)


def timelines(patients):
    """Timelines from {subject_id: [(day or None, code, value), ...]} (rows in MEDS order)."""
    cols = {k: [] for k in ("subject_id", "time", "time_null", "code", "numeric_value")}
    for sid, rows in patients.items():
        for day, code, value in rows:
            cols["subject_id"].append(sid)
            cols["time"].append(0 if day is None else T0 + int(round(day * DAY)))
            cols["time_null"].append(day is None)
            cols["code"].append(code)
            cols["numeric_value"].append(np.nan if value is None else value)
    return Timelines.from_columns(**cols)


def task(**kw):
    base = dict(name="t", trigger=("TRIG",), window_days=30.0, outcome=("OUT",))
    return Task(**{**base, **kw})


def rows_of(labels):
    return [(int(s), (int(t) - T0) / DAY, bool(b)) for s, t, b in
            zip(labels["subject_id"], labels["prediction_time"], labels["boolean_value"])]


# ---------------------------------------------------------------- task extraction


def test_window_boundaries_and_censoring():
    tl = timelines({
        1: [(None, "TRIG", None), (0, "X", None), (10, "TRIG", None), (40, "OUT", None)],  # at the end: in
        2: [(0, "TRIG", None), (30.0001, "OUT", None)],  # just past the window, seen through: negative
        3: [(0, "TRIG", None), (0, "OUT", None), (31, "X", None)],  # same moment as the trigger: not after it
        4: [(0, "TRIG", None), (29, "X", None)],  # record stops inside the window: censored, no row
        5: [(0, "TRIG", None), (12, "MEDS_DEATH", None)],  # dies in the window: a competing event
        6: [(0, "X", None), (5, "OTHER", None)],  # never triggered
    })
    labels = extract_labels(tl, task())
    assert rows_of(labels) == [(1, 10.0, True), (2, 0.0, False), (3, 0.0, False), (5, 0.0, False)]
    # n_rows counts the rows a model may see: static rows and everything up to prediction_time
    assert labels["n_rows"].tolist() == [3, 1, 2, 1]
    assert labels["patient"].tolist() == [0, 1, 2, 4]


def test_gap_exclusions_occurrences_values_and_death():
    tl = timelines({
        1: [(0, "TRIG", None), (3, "OUT", None), (50, "X", None)],  # outcome in the gap: dropped
        2: [(0, "TRIG", None), (5, "X", None), (6, "OUT", None), (40, "X", None)],  # in the window
        3: [(0, "EXCL", None), (1, "TRIG", None), (60, "X", None)],  # excluded before prediction
        4: [(0, "TRIG", None), (6, "EXCL", None), (60, "X", None)],  # exclusion after it: kept
        5: [(0, "TRIG", None), (2, "MEDS_DEATH", None)],  # dead before prediction_time: no row
        6: [(0, "TRIG", None), (100, "TRIG", None), (110, "OUT", None), (200, "X", None)],
    })
    t = task(gap_days=5.0, exclude=("EXCL",), occurrence="all")
    labels = extract_labels(tl, t)
    assert rows_of(labels) == [(2, 5.0, True), (4, 5.0, False), (6, 5.0, False), (6, 105.0, True)]
    assert labels["n_rows"].tolist() == [2, 1, 1, 2]
    assert labels["trigger_time"].tolist() == [T0, T0, T0, T0 + 100 * DAY]
    first = extract_labels(tl, task(gap_days=5.0, exclude=("EXCL",)))
    assert [r[:2] for r in rows_of(first)] == [(2, 5.0), (4, 5.0), (6, 5.0)]

    lab = timelines({
        1: [(0, "LAB", 6.4), (10, "LAB", 6.5), (20, "OUT", None), (90, "X", None)],
        2: [(0, "LAB", None), (50, "X", None)],  # no value: never a trigger with a value filter
        3: [(0, "LAB", 9.0), (60, "X", None)],  # above the maximum
    })
    labels = extract_labels(lab, task(trigger=("LAB",), trigger_min_value=6.5,
                                      trigger_max_value=8.0))
    assert rows_of(labels) == [(1, 10.0, True)]


def test_codes_ending_in_a_star_match_by_prefix():
    """MIMIC-IV MEDS style codes: admissions and discharges carry their type in the code."""
    tl = timelines({
        1: [(0, "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None), (4, "HOSPITAL_DISCHARGE//HOME", None),
            (20, "HOSPITAL_ADMISSION//URGENT//TRANSFER", None), (23, "HOSPITAL_DISCHARGE//HOME", None),
            (90, "LAB//50912//mg/dL", 1.0)],
        2: [(0, "HOSPITAL_ADMISSION//ELECTIVE//PHYSICIAN REFERRAL", None),
            (2, "HOSPITAL_DISCHARGE//SKILLED NURSING FACILITY", None), (60, "LAB//50912//mg/dL", 1.1)],
        3: [(0, "HOSPITAL_ADMISSIONS_LOG//X", None), (40, "HOSPITAL_DISCHARGE", None)],  # no match: no "//"
    })
    t = task(trigger=("HOSPITAL_DISCHARGE//*",), outcome=("HOSPITAL_ADMISSION//*",),
             occurrence="all")
    assert rows_of(extract_labels(tl, t)) == [(1, 4.0, True), (1, 23.0, False), (2, 2.0, False)]
    assert load_task(TASKS_DIR / "mimic" / "readmission_30d.toml").trigger == ("HOSPITAL_DISCHARGE//*",)


def test_shipped_tasks_load_and_bad_task_files_say_what_is_wrong(tmp_path):
    names = sorted(p.stem for p in TASKS_DIR.glob("*.toml"))
    assert names == ["death_after_heart_disease", "metformin_after_high_hba1c", "uti_recurrence"]
    for name in names:
        t = load_task(name)
        assert t.name == name and t.window_days > 0 and t.outcome
    cases = {
        'trigger = ["A"]\nwindow_days = 30\n': "missing 'outcome'",
        'trigger = ["A"]\noutcome = "B"\nwindow_days = 0\n': "'window_days' must be > 0",
        'trigger = []\noutcome = "B"\nwindow_days = 5\n': "'trigger' needs at least one code",
        'trigger = "A"\noutcome = "B"\nwindow_days = 5\nwindow = 3\n': "unknown key(s) window",
        'trigger = "A"\noutcome = "B"\nwindow_days = 5\noccurrence = "last"\n': "'occurrence' must be",
        'trigger = "A"\noutcome = "B"\nwindow_days = "a year"\n': "'window_days' must be a number",
        'trigger = "A\n': "not a valid TOML task file",
    }
    for text, message in cases.items():
        path = tmp_path / "t.toml"
        path.write_text(text)
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_task(path)
    with pytest.raises(UsageError, match="nor a shipped task"):
        load_task("no_such_task")


# ---------------------------------------------------------------- MEDS files


@needs_meds
def test_label_and_prediction_files_follow_the_meds_schemas(tmp_path):
    import meds
    import pyarrow.parquet as pq

    tl = timelines({1: [(0, "TRIG", None), (10, "OUT", None)], 2: [(0, "TRIG", None), (40, "X", None)]})
    labels = extract_labels(tl, task())
    write_labels(tmp_path / "l.parquet", labels)
    table = pq.read_table(tmp_path / "l.parquet")
    meds.LabelSchema.validate(table)
    assert table.column_names == ["subject_id", "prediction_time", "boolean_value"]
    back = read_labels(tmp_path / "l.parquet")
    assert back["boolean_value"].tolist() == [True, False]
    assert back["prediction_time"].tolist() == labels["prediction_time"].tolist()

    write_predictions(tmp_path / "p.parquet", labels, np.array([0.75, 0.25]))
    table = pq.read_table(tmp_path / "p.parquet")
    prediction_schema().validate(table)
    assert table.schema.field("predicted_boolean_probability").type == "float"
    assert table.column("predicted_boolean_value").to_pylist() == [True, False]
    assert read_predictions(tmp_path / "p.parquet")["probability"].tolist() == [0.75, 0.25]
    try:  # meds-evaluation's own schema, where it is installed
        from meds_evaluation.schema import PredictionSchema
    except ImportError:
        pass
    else:
        PredictionSchema.validate(table)
    with pytest.raises(UsageError, match="no 'predicted_boolean_probability'"):
        read_predictions(tmp_path / "l.parquet")
    with pytest.raises(ValueError, match="one value per label row"):
        write_predictions(tmp_path / "q.parquet", labels, np.array([0.5]))
    pq.write_table(table.drop(["subject_id"]), tmp_path / "bad.parquet")
    with pytest.raises(UsageError, match="not a MEDS label file"):
        read_labels(tmp_path / "bad.parquet")


# ---------------------------------------------------------------- the shared-prefill sampler


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised 2-layer GPT over a tokenizer fitted on 200 synthetic patients,
    with peaked logits so that futures reach [EOS] and the horizon at different steps."""
    cols = syn.SyntheticEHR().generate(200, seed=5)
    tl = Timelines.from_columns(**cols)
    tok = EventTokenizer.fit(tl, min_count=3, n_value_bins=4)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32,
                          kernels="torch"))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20.0)
    return model.eval(), tok, tl


def _prompts(tok, tl, lengths):
    out = []
    for i, n in enumerate(lengths):
        ids, _ = tok.encode_patient(*tl.patient(i), tl.static(i))
        out.append(list(ids[: n]))
    return out


def test_shared_prefill_gives_the_futures_of_prefilled_copies(tiny):
    model, tok, tl = tiny
    # equal and unequal lengths; two rows at 46 tokens leave 1 free position, so their
    # futures restart the cache on half a window (the context-full path)
    prompts = _prompts(tok, tl, [20, 20, 33, 46, 46, 20, 9])
    horizons = np.array([30, 400, 90, 10_000, 365, 5, 2000], dtype=float) * 1440
    kw = dict(num_samples=5, max_new_tokens=40, seed=7)
    shared = sample_futures(model, tok, prompts, horizons, shared_prefill=True, max_batch=10, **kw)
    copies = sample_futures(model, tok, prompts, horizons, shared_prefill=False, **kw)
    assert shared == copies
    lengths = {len(f) for fs in shared for f in fs}
    assert len(lengths) > 3  # futures end at different steps (pruning is exercised)
    # a row's futures do not depend on the rows it is batched with
    alone = sample_futures(model, tok, prompts[3:4], horizons[3:4], rows=[3], **kw)
    assert alone[0] == shared[3]
    for fs, h in zip(shared, horizons):
        for f in fs:  # each future ends at [EOS], past its horizon, or at the token budget
            clock = np.cumsum(tok.gap_minutes[f])
            assert (clock[:-1] <= h).all()
            assert f[-1] == tok.eos_token or clock[-1] > h or len(f) == 40
            assert tok.eos_token not in f[:-1]
    other = sample_futures(model, tok, prompts, horizons, **{**kw, "seed": 8})
    assert other != shared


def test_shared_prefill_draws_from_the_distribution_of_todays_path(tiny):
    """The first sampled token's frequencies under both samplers match the model's exact
    next-token distribution (torch's global RNG in today's path: equal in distribution only)."""
    model, tok, tl = tiny
    prompt = _prompts(tok, tl, [25])[0]
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt]))
    p = torch.softmax(logits[0, -1].double(), -1).numpy()
    n = 2000
    shared = sample_futures(model, tok, [prompt], [1e9], n, max_new_tokens=1, seed=1)[0]
    torch.manual_seed(1)
    today = continue_timeline(model, tok, prompt, n, 1e9, max_new_tokens=1)
    for futures in (shared, today):
        freq = np.bincount([f[0] for f in futures], minlength=len(p)) / n
        # total variation distance: its sampling error at n = 2000 is about 0.03 here
        assert 0.5 * np.abs(freq - p).sum() < 0.08


def test_future_outcomes_leave_censored_futures_out(tiny):
    _, tok, _ = tiny
    week = tok.stoi["TIME//1w-2w"]
    g = tok.gap_minutes[week]
    uti, death, lab = (tok.code_ids(c)[0] for c in ("ICD10CM//N39.0", "MEDS_DEATH", "LAB//8480-6"))
    assert tok.unk_token not in (uti, death, lab)
    start, end = 1.5 * g, 3.5 * g  # the window: (1.5, 3.5] weeks-tokens after the last event

    def outcome(*ids):
        return future_outcome(tok, list(ids), ("ICD10CM//N39.0",), start, end)

    assert outcome(week, lab, week, uti) is True  # at 2 g: in the window
    assert outcome(week, uti, week, lab, week, lab, week) is False  # at 1 g: before it; seen to the end
    assert outcome(week, lab, week, death, tok.eos_token) is False  # died first: a competing event
    assert outcome(week, lab, tok.eos_token) is None  # the record ends early: censored
    assert outcome(week, lab, week, lab) is None  # the token budget ran out early: censored
    assert outcome(week, lab, week, lab, week, lab, week, uti) is False  # at 4 g: after the window
    assert outcome_fraction([True, None, False, None]) == 0.5
    assert outcome_fraction([None, None]) == 0.0


def test_groups_batch_equal_lengths_up_to_max_batch():
    prompts = [[0] * n for n in (5, 3, 5, 5, 3, 7)]
    assert _groups(prompts, 4, True, 8) == [[1, 4], [0, 2], [3], [5]]
    assert _groups(prompts, 4, False, 8) == [[i] for i in range(6)]
    assert _groups(prompts, 20, True, 8) == [[1], [4], [0], [2], [3], [5]]  # one row at least


# ---------------------------------------------------------------- calibration metrics


def test_ranking_metrics_on_known_answers():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.5] * 8, [1, 0, 0, 0, 1, 0, 0, 0]) == pytest.approx(0.25)  # ties: the rate
    assert average_precision([0.1, 0.9, 0.2], [0, 1, 0]) == 1.0
    assert math.isnan(average_precision([0.2, 0.3], [0, 0]))
    assert brier([0.2, 0.8, 1.0], [0, 1, 0]) == pytest.approx((0.04 + 0.04 + 1) / 3)
    p = np.linspace(0, 1, 11)
    assert slope(p, 0.5 * p + 0.1) == pytest.approx(0.5)
    assert math.isnan(slope(np.full(4, 0.3), [0, 1, 0, 1]))


def test_calibration_and_bootstrap_on_simulated_scores():
    rng = np.random.default_rng(0)
    n = 20_000
    t = rng.beta(1.2, 6.0, n)  # true probabilities
    y = rng.random(n) < t
    calibrated = score_labels(t, y, n_boot=0, n_bins=10)
    for mean_p, rate, count in calibrated["calibration_curve"]:
        assert abs(mean_p - rate) < 4 * math.sqrt(max(rate, 0.01) / count) + 0.005
    assert calibrated["calibration_slope"] == pytest.approx(1.0, abs=0.06)
    over = score_labels(np.clip(1.5 * t, 0, 1), y, n_boot=0)
    assert over["calibration_slope"] == pytest.approx(1 / 1.5, abs=0.06)  # spread too far
    assert over["auroc"] == pytest.approx(calibrated["auroc"], abs=1e-3)  # same ranking

    # two normal scores a distance d apart: AUROC = Phi(d / sqrt(2)); the 95% interval of
    # 300 rows holds it (a fixed seed: this draw, not a coverage claim)
    d = 1.0
    labels = rng.random(300) < 0.3
    scores = rng.normal(0, 1, 300) + d * labels
    ci = bootstrap({"auroc": auroc}, scores, labels, n=400, seed=1)["auroc"]
    truth = 0.5 * (1 + math.erf(d / 2))
    assert ci[0] < truth < ci[1] and ci[1] - ci[0] < 0.2
    (mean_p, rate, count), = calibration_curve([0.2, 0.2, 0.2], [1, 0, 1])  # ties: one bin
    assert (mean_p, rate, count) == (pytest.approx(0.2), pytest.approx(2 / 3), 3)


def test_truth_scores_split_sampling_noise_from_model_error():
    rng = np.random.default_rng(1)
    R, N, S = 4000, 10, 210
    t = rng.beta(2.0, 5.0, R)
    hits = rng.random((R, S)) < t[:, None]  # the true process's futures
    honest = (rng.random((R, N)) < t[:, None]).mean(1)  # a perfect model seen through N futures
    biased = (rng.random((R, N)) < np.clip(t + 0.1, 0, 1)[:, None]).mean(1)
    r = score_truth(honest, hits, N, n_boot=0)
    m = r["model"]
    assert m["sampling_variance"] == pytest.approx(np.mean(t * (1 - t)) / N, rel=0.05)
    assert abs(m["model_squared_error"]) < 1e-3  # only noise: nothing left for the model
    # N futures dilute the slope by Var(t) / (Var(t) + sampling variance); the denoised slope
    # is the model's own: 1
    dilution = t.var() / (t.var() + np.mean(t * (1 - t)) / N)
    assert m["calibration_slope_truth"] == pytest.approx(dilution, abs=0.05)
    assert m["calibration_slope_truth_denoised"] == pytest.approx(1.0, abs=0.05)
    assert abs(r["truth_at_n"]["model_squared_error"]) < 1e-3
    assert r["truth_at_n"]["mae"] == pytest.approx(m["mae"], rel=0.05)  # same N, same noise
    b = score_truth(biased, hits, N, n_boot=0)["model"]
    assert b["model_squared_error"] == pytest.approx(0.01, abs=2e-3)  # the 0.1 bias, squared
    assert b["mae"] > m["mae"]


# ---------------------------------------------------------------- the three commands


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A MEDS folder of 600 synthetic patients and a 40-step model trained on it."""
    base = tmp_path_factory.mktemp("tasks")
    meds_dir = syn.write_synthetic(base / "meds", n_subjects=600, seed=11)
    cfg = dict(trainer.DEFAULTS)
    cfg.update(dataset=f"meds:{meds_dir}", data_dir=str(base / "data"), out_dir=str(base / "out"),
               n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=8, max_iters=40,
               lr_decay_iters=40, warmup_iters=5, learning_rate=6e-3, min_lr=6e-4,
               eval_interval=40, eval_iters=1, log_interval=40, kernels="torch", progress=False,
               num_samples=0, sample_tokens=8, device="cpu")
    trainer.train(cfg)
    return base, meds_dir


@needs_meds
def test_labels_predict_score_end_to_end(run, capsys):
    import pyarrow.parquet as pq

    from gpt.events.__main__ import main

    base, meds_dir = run
    out = base / "labels.parquet"
    labels = main(["labels", f"--meds_dir={meds_dir}", "--task=uti_recurrence", f"--out={out}"])
    text = capsys.readouterr().out
    assert "uti_recurrence:" in text and "positive (rate" in text
    n = len(labels["subject_id"])
    assert n >= 10 and labels["boolean_value"].any()
    # the rows agree with an extraction from the split read directly
    direct = extract_labels(read_split(meds_dir, "held_out"), load_task("uti_recurrence"))
    assert direct["prediction_time"].tolist() == labels["prediction_time"].tolist()

    preds = {}
    for sampler in ("shared", "copies"):
        path = base / f"pred_{sampler}.parquet"
        main(["predict", f"--out_dir={base / 'out'}", "--task=uti_recurrence", f"--labels={out}",
              f"--sampler={sampler}", "--num_samples=4", "--max_new_tokens=24", "--max_rows=12",
              f"--out={path}", "--device=cpu"])
        assert f"sampler {sampler}" in capsys.readouterr().out
        prediction_schema().validate(pq.read_table(path))
        preds[sampler] = read_predictions(path)["probability"]
    np.testing.assert_array_equal(preds["shared"], preds["copies"])  # same seed, same futures
    assert ((preds["shared"] >= 0) & (preds["shared"] <= 1)).all()

    r = main(["score", f"--predictions={base / 'pred_shared.parquet'}", "--n_boot=50",
              "--truth_sims=30"])
    text = capsys.readouterr().out
    assert "AUROC" in text and "truth@4" in text and "MAE" in text
    assert (base / "pred_shared.png").is_file() and (base / "pred_shared.score.json").is_file()
    assert r["model"]["rows"] == 12 and 0 <= r["truth"]["model"]["mae"] <= 1
    assert r["truth"]["truth_sims"] == 30 and r["truth"]["reference_sims"] == 26
    # a prediction file from elsewhere (no JSON from predict): the label metrics only
    alone = base / "other" / "pred.parquet"
    alone.parent.mkdir()
    alone.write_bytes((base / "pred_shared.parquet").read_bytes())
    r = main(["score", f"--predictions={alone}", "--n_boot=20"])
    assert "truth" not in r and r["model"]["auroc"] == pytest.approx(main(
        ["score", f"--predictions={base / 'pred_shared.parquet'}", "--n_boot=0", "--truth_sims=0"])["model"]["auroc"])
    assert "true probability" not in capsys.readouterr().out


@needs_meds
def test_task_command_errors(run, tmp_path):
    from gpt.events.__main__ import main

    base, meds_dir = run
    with pytest.raises(UsageError, match="--meds_dir=<MEDS folder> is required"):
        main(["labels", "--task=uti_recurrence"])
    with pytest.raises(UsageError, match="nor a shipped task"):
        main(["labels", f"--meds_dir={meds_dir}", "--task=nope"])
    with pytest.raises(UsageError, match="no such file"):
        main(["predict", f"--out_dir={base / 'out'}", "--task=uti_recurrence",
              f"--labels={tmp_path / 'none.parquet'}", "--device=cpu"])
    bad = tmp_path / "bad.toml"
    bad.write_text('trigger = "ICD10CM//N39.0"\noutcome = "NOPE//1"\nwindow_days = 30\n')
    with pytest.raises(UsageError, match="no outcome code is in the model's vocabulary"):
        main(["predict", f"--out_dir={base / 'out'}", f"--task={bad}", "--device=cpu"])
    with pytest.raises(UsageError, match="--predictions=.*no such file"):
        main(["score", f"--predictions={tmp_path / 'none.parquet'}"])


@needs_meds
def test_prompts_stop_at_prediction_time(run):
    """The prompt holds the rows up to prediction_time; the clock offset is the time from the
    last of them to prediction_time (7 days for a UTI recurrence row without events between)."""
    from gpt.checkpoint import load_checkpoint

    base, meds_dir = run
    _, tok = load_checkpoint(base / "out")
    tl = read_split(meds_dir, "held_out")
    labels = extract_labels(tl, load_task("uti_recurrence"))
    prompts, delta = task_prompts(tok, tl, labels)
    for r in range(len(prompts)):
        times, codes, values = tl.patient(int(labels["patient"][r]))
        n = int(labels["n_rows"][r])
        ids, _ = tok.encode_patient(times[:n], codes[:n], values[:n], tl.static(int(labels["patient"][r]))[:n])
        assert prompts[r] == list(ids[:-1])
        assert 0 <= delta[r] <= 7 * 1440
        assert (times[n:] > labels["prediction_time"][r]).all()
