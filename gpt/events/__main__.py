"""Patient timelines: generate the synthetic MEDS dataset, tokenize, evaluate, sample futures.

All the commands in one file: each is its options plus a few lines of calls into the
`gpt.events` modules that do the work.

    python -m gpt.events generate --out=ehr_meds --n_subjects=10000
    python -m gpt.events prepare --dataset=meds:ehr_meds --split_codes=True
    python -m gpt.events eval --out_dir=out-ehr
    python -m gpt.events sample --out_dir=out-ehr --code=ICD10CM//I10 --days=365
    python -m gpt.events labels --meds_dir=ehr_meds --task=uti_recurrence --out=labels.parquet
    python -m gpt.events predict --out_dir=out-ehr --task=uti_recurrence --labels=labels.parquet
    python -m gpt.events score --predictions=out-ehr/predictions/uti_recurrence/held_out.parquet

`python -m gpt.events <command> --help` lists a command's options.
"""

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from gpt.cli import Opt, UsageError, parse_command, run_main
from gpt.files import atomic_path, write_json

PROG = "python -m gpt.events"

COMMANDS = {
    "generate": ("write the synthetic MEDS dataset (known ground truth)", dict(
        out=Opt("", "folder to write (must not exist, or be empty, unless --force)"),
        n_subjects=Opt(10_000, "patients (80% train, 10% tuning, 10% held_out)", ge=10),
        seed=Opt(0, "random seed"),
        force=Opt(False, "replace an existing folder"),
    )),
    "prepare": ("validate a MEDS dataset and tokenize it for train.py", dict(
        dataset=Opt("synthetic_ehr", "synthetic_ehr or meds:<MEDS folder>"),
        data_dir=Opt("data", "writes data_dir/<name>-events/ (where train.py looks)"),
        min_count=Opt(5, "codes seen fewer times in train become [UNK]", ge=1),
        n_value_bins=Opt(10, "quantile bins per numeric code", ge=2, le=100),
        split_codes=Opt(False, "ICD-10 and ATC codes as two tokens: category + rest"),
        force=Opt(False, "tokenize again even if the folder is up to date"),
    )),
    "eval": ("held-out perplexity and next-event accuracy vs baselines and the truth", dict(
        out_dir=Opt("out", "a train.py run on an events dataset"),
        split=Opt("held_out", "MEDS split to evaluate", choices=("held_out", "tuning", "train")),
        meds_dir=Opt("", "MEDS folder (default: the one the tokenizer was fitted on)"),
        max_subjects=Opt(0, "evaluate the first N patients only; 0: all", ge=0),
        batch_size=Opt(32, "windows per forward pass", ge=1),
        device=Opt("auto", "auto, cpu, cuda, cuda:N"),
    )),
    "sample": ("sample futures of held-out patients; AUROC of P(code within N days)", dict(
        out_dir=Opt("out", "a train.py run on an events dataset"),
        code=Opt(("ICD10CM//I10", "ICD10CM//E11.9", "ICD10CM//N39.0", "ICD10CM//J06.9",
                  "ATC//C10AA05"), "codes of interest, comma-separated: one outcome each, "
                 "scored on the same sampled futures"),
        days=Opt(365.0, "prediction window after the landmark, in days", gt=0),
        landmark_days=Opt(365.0, "predict after the last event this long after the record's "
                          "start", ge=0),
        num_samples=Opt(20, "sampled futures per patient", ge=1),
        max_subjects=Opt(300, "eligible held-out patients to score; 0: all", ge=0),
        max_new_tokens=Opt(256, "token budget of one sampled future", ge=1),
        temperature=Opt(1.0, "sampling temperature (1 = the model's own distribution)", gt=0),
        truth_sims=Opt(200, "synthetic data only: futures of the true process per patient", ge=0),
        show=Opt(1, "print this many patients' prompt ends and sampled futures", ge=0),
        split=Opt("held_out", "MEDS split to sample from", choices=("held_out", "tuning", "train")),
        meds_dir=Opt("", "MEDS folder (default: the one the tokenizer was fitted on)"),
        seed=Opt(1337, "random seed"),
        device=Opt("auto", "auto, cpu, cuda, cuda:N"),
    )),
    "labels": ("write a task's labels (MEDS label schema) for a MEDS folder", dict(
        meds_dir=Opt("", "MEDS folder"),
        task=Opt("", "a task file (.toml), or a shipped task: death_after_heart_disease, "
                 "metformin_after_high_hba1c, uti_recurrence"),
        split=Opt("held_out", "MEDS split", choices=("held_out", "tuning", "train")),
        out=Opt("", "parquet file to write (default out-labels/<task>/<split>.parquet)"),
    )),
    "predict": ("sample futures for every label row; write MEDS predictions (parquet)", dict(
        out_dir=Opt("out", "a train.py run on an events dataset"),
        task=Opt("", "the task of the labels (file or shipped name)"),
        labels=Opt("", "label file (default: extract the task's labels from the split)"),
        split=Opt("held_out", "MEDS split the labels come from",
                  choices=("held_out", "tuning", "train")),
        meds_dir=Opt("", "MEDS folder (default: the one the tokenizer was fitted on)"),
        out=Opt("", "parquet file to write (default out_dir/predictions/<task>/<split>.parquet)"),
        num_samples=Opt(20, "sampled futures per label row", ge=1),
        max_new_tokens=Opt(256, "token budget of one sampled future", ge=1),
        temperature=Opt(1.0, "sampling temperature (1 = the model's own distribution)", gt=0),
        sampler=Opt("shared", "shared: one prefill per row, its keys/values copied to the N "
                    "futures, rows batched; copies: N prefilled copies per row (same futures); "
                    "today: gpt.events sample's path (torch's RNG), for timing",
                    choices=("shared", "copies", "today")),
        max_batch=Opt(512, "futures decoded in one batch", ge=1),
        max_rows=Opt(0, "predict the first N label rows only; 0: all", ge=0),
        seed=Opt(1337, "random seed (each row draws from its own stream of it)"),
        device=Opt("auto", "auto, cpu, cuda, cuda:N"),
    )),
    "score": ("AUROC, AUPRC, Brier, calibration (+ plot), bootstrap CIs; vs the truth on "
              "synthetic data", dict(
        predictions=Opt("", "a MEDS prediction file (parquet)"),
        truth_sims=Opt(200, "synthetic data, files written by predict: futures of the true "
                       "process per row (0: skip)", ge=0),
        n_boot=Opt(1000, "bootstrap resamples for the 95% intervals (0: none)", ge=0),
        bins=Opt(10, "calibration curve bins (equal counts)", ge=1),
        plot=Opt("", "calibration plot (PNG) to write (default: next to the predictions)"),
        seed=Opt(0, "random seed of the bootstrap and the true-process simulations"),
    )),
}


def _device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={name} but CUDA is not available (use --device=cpu)")
    return name


def _no_nan(obj):
    """NaN (an undefined AUROC) as null: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _write_json(path, obj):
    write_json(path, _no_nan(obj))


def _load_run(cfg):
    """(model, tokenizer, held-out Timelines, synthetic process or None) of --out_dir."""
    from gpt.events.meds_data import read_split
    from gpt.events.synthetic import SyntheticEHR, synthetic_info
    from gpt.events.tokenizer import EventTokenizer
    from gpt.checkpoint import load_checkpoint

    out_dir = Path(cfg["out_dir"])
    if not (out_dir / "ckpt.pt").is_file():
        raise UsageError(f"--out_dir={out_dir} has no ckpt.pt: train first "
                         f"(python train.py --dataset=synthetic_ehr --out_dir={out_dir})")
    device = _device(cfg["device"])
    model, tok = load_checkpoint(out_dir, device)
    if not isinstance(tok, EventTokenizer):
        raise UsageError(f"--out_dir={out_dir} was trained on text ({tok.name} tokenizer), not on "
                         f"patient timelines")
    meds_dir = cfg["meds_dir"] or tok.source.get("meds_dir", "")
    if not meds_dir or not Path(meds_dir).is_dir():
        raise UsageError(f"the MEDS folder {meds_dir!r} is gone: pass --meds_dir=<folder>")
    timelines = read_split(meds_dir, cfg["split"])
    if not len(timelines):
        raise UsageError(f"{meds_dir} has no {cfg['split']} patients")
    process = SyntheticEHR() if synthetic_info(meds_dir) else None
    return model, tok, timelines, process, device


def cmd_generate(cfg):
    from gpt.events.synthetic import write_synthetic

    if not cfg["out"]:
        raise UsageError("--out=<folder> is required")
    out = Path(cfg["out"])
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg["force"]:
        raise UsageError(f"--out={out} exists and is not empty (pass --force=True to replace it)")
    write_synthetic(out, n_subjects=cfg["n_subjects"], seed=cfg["seed"], force=cfg["force"])
    print(f"{out}: synthetic MEDS dataset, {cfg['n_subjects']:,} patients (seed {cfg['seed']})")


def cmd_prepare(cfg):
    from gpt.events import data

    name, source = data.dataset_source(cfg["dataset"])
    options = {k: cfg[k] for k in ("min_count", "n_value_bins", "split_codes")}
    out = data.prepare(source, Path(cfg["data_dir"]) / f"{name}-events", options=options,
                       force=cfg["force"], data_dir=cfg["data_dir"])
    meta = json.loads((out / "meta.json").read_text())
    sizes = ", ".join(f"{s} {v['patients']:,} patients / {v['tokens']:,} tokens"
                      for s, v in meta["splits"].items())
    print(f"{out}: vocab_size {meta['vocab_size']}, {sizes}")


def cmd_eval(cfg):
    from gpt.events.evaluate import next_event_metrics

    model, tok, timelines, process, device = _load_run(cfg)
    if cfg["max_subjects"]:
        timelines = timelines.select(np.arange(min(cfg["max_subjects"], len(timelines))))
    truth, events = None, None
    if process is not None:  # score the process events (after sex, birth and intake BMI)
        probs, _ = process.replay([timelines.patient(i) for i in range(len(timelines))])
        truth = (np.concatenate(probs), process.codes)
        row = np.arange(timelines.n_events) - np.repeat(timelines.offsets[:-1], np.diff(timelines.offsets))
        events = row >= 3
    r = next_event_metrics(model, tok, timelines, cfg["batch_size"], device, truth, events)
    print(f"{cfg['split']}: {r['patients']:,} patients, {r['tokens']:,} tokens, {r['events']:,} events")
    print(f"perplexity {r['perplexity']:.3f} (nll/token {r['nll_per_token']:.4f}; by kind: "
          + ", ".join(f"{k} {v:.3f}" for k, v in r["nll_by_kind"].items()) + ")")
    print(f"next event (code)   {'top-1':>7} {'top-10':>7} {'nll':>7} {'KL(true||.)':>12}")
    for name in ("model", "frequency", "truth"):
        if name in r:
            s = r[name]
            kl = f"{s['kl_from_truth']:12.4f}" if "kl_from_truth" in s else " " * 12
            print(f"  {name:<17} {s['top1']:7.3f} {s['top10']:7.3f} {s['nll']:7.3f} {kl}")
    path = Path(cfg["out_dir"]) / f"events_eval_{cfg['split']}.json"
    _write_json(path, {**r, "split": cfg["split"]})
    print(f"written {path}")
    return r


def cmd_sample(cfg):
    from gpt.events.evaluate import landmarks, outcome_auroc

    codes = list(cfg["code"])
    model, tok, timelines, process, device = _load_run(cfg)
    unknown = [c for c in codes if tok.unk_token in tok.code_ids(c)]
    if unknown:
        raise UsageError(f"--code: {', '.join(unknown)} not in the model's vocabulary "
                         f"(rarer than min_count in train?)")
    eligible = np.flatnonzero(landmarks(timelines, cfg["landmark_days"], cfg["days"]) > 0)
    if cfg["max_subjects"]:
        eligible = eligible[: cfg["max_subjects"]]
    timelines = timelines.select(eligible)
    torch.manual_seed(cfg["seed"])
    shown = []
    bar = None
    if sys.stderr.isatty():  # a bar only on a terminal, as train.py
        from tqdm.auto import tqdm

        bar = tqdm(total=len(timelines), unit="patient", dynamic_ncols=True)

    def show(i, prompt, futures):
        if bar is not None:
            bar.update(1)
        if len(shown) >= cfg["show"]:
            return
        shown.append(i)
        write = bar.write if bar is not None else print
        write(f"patient {timelines.subject_id[i]}: last events of the prompt")
        write("\n".join(tok.decode(prompt).splitlines()[-4:]))
        for f in futures[:3]:
            write(f"  sampled future (times after the prompt's last event, {cfg['days']:g} days):")
            write("\n".join("  " + line for line in tok.decode([tok.timeline_token, *f]).splitlines()))

    r = outcome_auroc(model, tok, timelines, codes, cfg["days"], cfg["landmark_days"],
                      cfg["num_samples"], cfg["max_new_tokens"], cfg["temperature"], device,
                      process, cfg["truth_sims"], cfg["seed"], on_patient=show)
    if bar is not None:
        bar.close()
    truth = "auroc_truth" in next(iter(r["outcomes"].values()))
    print(f"P(code within {cfg['days']:g} days) after a {cfg['landmark_days']:g}-day landmark: "
          f"{r['patients']} patients, {cfg['num_samples']} sampled futures each"
          + (f"; truth from {cfg['truth_sims']} simulations of the true process" if truth else ""))
    k = cfg["num_samples"]
    print(f"  {'code':<16} {'positives':>9} {'observed':>8} | model: {'mean':>5} {'AUROC':>6} "
          f"{'Brier':>6}" + (f" | truth: {'mean':>5} {'AUROC':>6} {'Brier':>6} {f'AUROC@{k}':>9}"
                             if truth else ""))
    for code, o in r["outcomes"].items():
        line = (f"  {code:<16} {o['positives']:9d} {o['observed_rate']:8.3f} |        "
                f"{o['mean_estimate']:5.3f} {o['auroc_model']:6.3f} {o['brier_model']:6.4f}")
        if truth:
            line += (f" |        {o['mean_truth']:5.3f} {o['auroc_truth']:6.3f} {o['brier_truth']:6.4f} "
                     f"{o['auroc_truth_same_samples']:9.3f}")
        print(line)
    if truth:
        print(f"  (AUROC@{k}: the true process seen through {k} futures per patient, as the model is)")
    path = Path(cfg["out_dir"]) / "events_sample.json"
    _write_json(path, {**r, "split": cfg["split"]})
    print(f"written {path}")
    return r


def cmd_labels(cfg):
    from gpt.events.labels import extract_labels, load_task, write_labels
    from gpt.events.meds_data import read_split

    if not cfg["meds_dir"]:
        raise UsageError("--meds_dir=<MEDS folder> is required")
    if not cfg["task"]:
        raise UsageError("--task=<task file or shipped task name> is required")
    task = load_task(cfg["task"])
    timelines = read_split(cfg["meds_dir"], cfg["split"])
    labels = extract_labels(timelines, task)
    out = Path(cfg["out"] or Path("out-labels") / task.name / f"{cfg['split']}.parquet")
    write_labels(out, labels)
    n, pos = len(labels["subject_id"]), int(labels["boolean_value"].sum())
    rate = f"{pos / n:.3f}" if n else "n/a"
    print(f"{task.name}: {n:,} label rows from {len(np.unique(labels['subject_id'])):,} of "
          f"{len(timelines):,} {cfg['split']} subjects, {pos:,} positive (rate {rate})")
    print(f"written {out}")
    return labels


def _sidecar(path):
    return Path(path).with_suffix(".json")


def cmd_predict(cfg):
    import time

    from gpt.events.futures import predict_task
    from gpt.events.labels import attach, extract_labels, load_task, read_labels, write_predictions

    if not cfg["task"]:
        raise UsageError("--task=<task file or shipped task name> is required")
    task = load_task(cfg["task"])
    model, tok, timelines, _, device = _load_run(cfg)
    from gpt.events.labels import matching

    exact = [c for c in task.outcome if not c.endswith("*")]
    prefixes = [c for c in task.outcome if c.endswith("*")]
    known = ([c for c in exact if tok.unk_token not in tok.code_ids(c)]
             + matching(tok.vocab[tok.code0:], prefixes))
    if not known:
        raise UsageError(f"--task={cfg['task']}: no outcome code is in the model's vocabulary "
                         f"({', '.join(task.outcome)})")
    if cfg["labels"]:
        if not Path(cfg["labels"]).is_file():
            raise UsageError(f"--labels={cfg['labels']}: no such file")
        labels = attach(timelines, read_labels(cfg["labels"]))
    else:
        labels = extract_labels(timelines, task)
    if cfg["max_rows"]:
        labels = {k: v[: cfg["max_rows"]] for k, v in labels.items()}
    if not len(labels["subject_id"]):
        raise UsageError(f"no label rows for {task.name} in the {cfg['split']} split")
    bar = None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(labels["subject_id"]), unit="row", dynamic_ncols=True)

    def progress(done):
        if bar is not None:
            bar.update(done - bar.n)

    t0, c0 = time.perf_counter(), time.process_time()
    prob, futures, prefill, censored = predict_task(model, tok, timelines, labels, task, cfg["num_samples"],
                                          cfg["max_new_tokens"], cfg["temperature"], device,
                                          cfg["seed"], cfg["sampler"], cfg["max_batch"],
                                          on_group=progress)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0  # CPU time: less swayed than wall time by other jobs
    if bar is not None:
        bar.close()
    out = Path(cfg["out"] or Path(cfg["out_dir"]) / "predictions" / task.name / f"{cfg['split']}.parquet")
    write_predictions(out, labels, prob)
    rows = len(prob)
    info = {"task": task.name, "task_spec": cfg["task"], "out_dir": cfg["out_dir"],
            "meds_dir": cfg["meds_dir"] or tok.source.get("meds_dir", ""), "split": cfg["split"],
            "rows": rows, "num_samples": cfg["num_samples"], "seed": cfg["seed"],
            "temperature": cfg["temperature"], "sampler": cfg["sampler"],
            "seconds": seconds, "seconds_per_row": seconds / rows, "cpu_seconds": cpu,
            "cpu_seconds_per_row": cpu / rows, "prefill_tokens": prefill,
            "censored_futures": censored,
            "generated_tokens": int(sum(len(f) for fs in futures for f in fs))}
    _write_json(_sidecar(out), info)
    y = labels["boolean_value"]
    print(f"{task.name}: {rows:,} rows x {cfg['num_samples']} futures in {seconds:.1f} s "
          f"({seconds / rows:.3f} s/row, CPU time {cpu / rows:.3f} s/row, sampler {cfg['sampler']}, "
          f"{prefill:,} prefill tokens); "
          f"mean predicted "
          f"{prob.mean():.3f}, observed {y.mean():.3f}")
    print(f"  {censored:.1%} of the futures stopped ([EOS] or the token budget) before the window's "
          f"end without the outcome: left out of the fractions, as censored records are of the labels")
    print(f"written {out}")
    return prob


def _fmt(m, key, ci=True):
    v = m[key]
    text = "   n/a" if v != v else f"{v:6.3f}"
    if ci and key in m.get("ci95", {}):
        lo, hi = m["ci95"][key]
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def cmd_score(cfg):
    from gpt.events.calibration import score_labels, score_truth
    from gpt.events.labels import attach, load_task, read_predictions

    if not cfg["predictions"]:
        raise UsageError("--predictions=<MEDS prediction parquet> is required")
    path = Path(cfg["predictions"])
    if not path.is_file():
        raise UsageError(f"--predictions={path}: no such file")
    pred = read_predictions(path)
    p, y = pred["probability"], pred["boolean_value"]
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise UsageError(f"{path}: predicted_boolean_probability must be in [0, 1] with no nulls")
    result = {"predictions": str(path), "model": score_labels(p, y, cfg["n_boot"], cfg["seed"], cfg["bins"])}
    info = json.loads(_sidecar(path).read_text()) if _sidecar(path).is_file() else None
    truth = None
    if info and cfg["truth_sims"]:
        from gpt.events.futures import true_task_probability
        from gpt.events.meds_data import read_split
        from gpt.events.synthetic import SyntheticEHR, synthetic_info

        if info.get("meds_dir") and Path(info["meds_dir"]).is_dir() and synthetic_info(info["meds_dir"]):
            timelines = read_split(info["meds_dir"], info["split"])
            rows = attach(timelines, pred)
            task = load_task(info["task_spec"])
            hits = true_task_probability(SyntheticEHR(), timelines, rows, task,
                                         max(cfg["truth_sims"], info["num_samples"] + 2), cfg["seed"])
            truth = hits.mean(axis=1)
            result["truth"] = score_truth(p, hits, info["num_samples"], cfg["n_boot"], cfg["seed"])
            result["truth_labels"] = score_labels(truth, y, cfg["n_boot"], cfg["seed"], cfg["bins"])
            result["truth_at_n_labels"] = score_labels(hits[:, : info["num_samples"]].mean(axis=1), y,
                                                       cfg["n_boot"], cfg["seed"], cfg["bins"])
    m = result["model"]
    print(f"{path}: {m['rows']:,} rows, {m['positives']:,} positive (rate {m['positive_rate']:.3f}), "
          f"mean prediction {m['mean_prediction']:.3f}")
    print(f"  {'vs labels':<12} {'AUROC [95% CI]':>22} {'AUPRC [95% CI]':>22} {'Brier [95% CI]':>22} "
          f"{'slope':>6}")
    names = [("model", "model")] + ([("truth", "truth_labels"), (f"truth@{info['num_samples']}",
                                                                    "truth_at_n_labels")] if truth is not None else [])
    for label, key in names:
        s = result[key]
        print(f"  {label:<12} {_fmt(s, 'auroc'):>22} {_fmt(s, 'auprc'):>22} {_fmt(s, 'brier'):>22} "
              f"{_fmt(s, 'calibration_slope', ci=False):>6}")
    if truth is not None:
        t = result["truth"]
        print(f"  vs the true probability ({t['truth_sims']} simulations of the true process per row; "
              f"mean {t['mean_truth']:.3f}):")
        print(f"  {'':<12} {'MAE [95% CI]':>22} {'slope':>6} {'slope* [95% CI]':>22} {'MSE':>8} = "
              f"{'model^2':>8} + {'sampling':>8} + {'truth MC':>8}")
        for label, key in (("model", "model"), (f"truth@{info['num_samples']}", "truth_at_n")):
            if key in t:
                s = t[key]
                print(f"  {label:<12} {_fmt(s, 'mae'):>22} {_fmt(s, 'calibration_slope_truth', ci=False):>6} "
                      f"{_fmt(s, 'calibration_slope_truth_denoised'):>22} "
                      f"{s['mse']:8.5f} = {s['model_squared_error']:8.5f} + "
                      f"{s['sampling_variance']:8.5f} + {s['truth_mc_variance']:8.5f}")
        print(f"  (slope*: the slope with the sampling noise of {info['num_samples']} futures "
              f"taken out; model^2: the squared error more futures would not remove)")
    plot = Path(cfg["plot"] or path.with_suffix(".png"))
    _calibration_plot(plot, result, p, truth)
    out = path.with_suffix(".score.json")
    _write_json(out, result)
    print(f"written {out}, {plot}")
    return result


def _calibration_plot(path, result, p, truth):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if truth is not None else 1
    # zoom on the probabilities there are (clinical outcomes are often rare)
    top = min(1.0, 1.1 * max([float(np.max(p))] + [max(c[0], c[1]) for k in ("model", "truth_labels")
                                                  if k in result for c in result[k]["calibration_curve"]]
                             + ([float(np.max(truth))] if truth is not None else [])) + 0.02)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.6), squeeze=False)
    ax = axes[0, 0]
    for name, key, style in (("model", "model", "o-"), ("true probability", "truth_labels", "s--")):
        if key in result:
            curve = np.array(result[key]["calibration_curve"])
            ax.plot(curve[:, 0], curve[:, 1], style, label=name)
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set(xlabel="predicted probability (bin mean)", ylabel="observed rate", xlim=(0, top),
           ylim=(0, top), title="calibration against the labels")
    ax.legend()
    if truth is not None:
        ax = axes[0, 1]
        ax.scatter(truth, p, s=8, alpha=0.5)
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set(xlabel="true probability (simulated)", ylabel="model probability", xlim=(0, top),
               ylim=(0, top), title="model against the truth")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


HANDLERS = {"generate": cmd_generate, "prepare": cmd_prepare, "eval": cmd_eval, "sample": cmd_sample,
            "labels": cmd_labels, "predict": cmd_predict, "score": cmd_score}


def main(argv=None):
    # --help shows the docstring's title and examples (its other paragraphs are for readers)
    paragraphs = __doc__.split("\n\n")
    description = "\n\n".join(paragraphs[:1] + [p for p in paragraphs if p.startswith("    python")])
    command, cfg = parse_command(argv, COMMANDS, PROG, description=description)
    with torch.no_grad() if command in ("eval", "sample", "predict") else nullcontext():
        return HANDLERS[command](cfg)


if __name__ == "__main__":
    run_main(main, PROG)
