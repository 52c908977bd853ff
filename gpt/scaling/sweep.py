"""`python -m gpt.scaling sweep`: an IsoFLOP sweep that really trains.

At each compute budget C it picks the model sizes nearest N = sqrt(C / (6 * tokens_per_param)),
trains each for C / (6 N) tokens with the trainer (`run_one` calls `gpt.trainer.train`), evaluates
every checkpoint on the same validation windows, fits a parabola of loss against log N per
budget and N_opt = k * C^a across budgets (`gpt.scaling.laws`), and draws `scaling.png`
(`gpt.scaling.plot`). Each run leaves a JSON record, so a sweep resumes where it stopped;
`sweep.json` holds the settings, the machine, every run and the fits.
"""

import contextlib
import json
import math
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpt.cli import Opt
from gpt.errors import UsageError
from gpt.files import write_json
from gpt.flops import param_counts
from gpt.model import GPTConfig
from gpt.scaling.laws import fit_sweep, si
from gpt.scaling.plot import plot_sweep

# The CPU-sized default, character-level Shakespeare: three budgets over a decade, two-layer
# models (one shape family: only the width changes) from 2.2K to 229K non-embedding parameters,
# five sizes per budget. Pilot runs put the optimum of such tiny models at a few hundred to a
# thousand tokens per parameter (Chinchilla's 20 is for subword tokens and far bigger models),
# hence the default centre of 300, and found batches of 16 x 64 tokens better than 32 x 64 at
# these budgets. Its 15 runs took 16 minutes of CPU time (one thread) on this project's shared
# 2-core machine; docs/scaling.md has the measured times and a fourth budget.
DEFAULT_BUDGETS = (5e10, 1.5e11, 5e11)
DEFAULT_SIZES = ("2x8", "2x16", "2x24", "2x32", "2x40", "2x48", "2x64", "2x96")

SWEEP_OPTIONS = {
    "sweep": dict(
        out_dir=Opt("out/scaling", "results: runs/ (a folder and a JSON record per run), "
                    "sweep.json, scaling.png"),
        budgets=Opt(DEFAULT_BUDGETS, "compute budgets C = 6 N D in FLOPs, comma-separated",
                    gt=0),
        sizes=Opt(DEFAULT_SIZES, "model sizes as n_layer x n_embd, comma-separated"),
        head_dim=Opt(8, "width of each attention head: n_head = n_embd / head_dim", ge=1),
        per_budget=Opt(5, "sizes trained at each budget: those nearest the centre below",
                       ge=3),
        tokens_per_param=Opt(300.0, "centre of each budget's sizes: N = sqrt(C / (6 * this)) "
                             "(Chinchilla: 20; tiny char-level models: far more)", gt=0),
        min_iters=Opt(50, "a size is not trained at a budget that gives it fewer optimizer "
                      "steps", ge=1),
        eval_tokens=Opt(65536, "validation tokens behind each final loss (the same evenly "
                        "spaced windows for every run)", ge=1),
        keep_checkpoints=Opt(False, "keep each run's ckpt.pt (deleted once evaluated)"),
        progress=Opt(True, "a progress bar over the runs (only when stderr is a terminal)"),
    ),
    "training": dict(
        dataset=Opt("shakespeare_char", "as train.py's --dataset (a named dataset or a text "
                    "file / folder)"),
        tokenizer=Opt("", "char | bpe | gpt2; empty: the dataset's default",
                      choices=("", "char", "bpe", "gpt2")),
        data_dir=Opt("data", "prepared token files (shared by every run, and with train.py)"),
        batch_size=Opt(16, "sequences per optimizer step", ge=1),
        block_size=Opt(64, "context length in tokens", ge=1),
        learning_rate=Opt(2e-3, "peak learning rate of every run (cosine to a tenth of it at "
                          "the end of the run's own budget)", gt=0),
        warmup_frac=Opt(0.05, "linear warmup as a fraction of each run's steps", ge=0, lt=1),
        weight_decay=Opt(0.1, "AdamW weight decay", ge=0),
        device=Opt("auto", "auto (cuda if available), cpu, cuda, cuda:N"),
        kernels=Opt("torch", "the model's ops (torch: the PyTorch references)",
                    choices=("auto", "triton", "torch")),
        seed=Opt(1337, "random seed (the same for every run)"),
        threads=Opt(1, "CPU threads for torch; 0: torch's default (one per core). Models this "
                    "small gain little from a second thread, and on a busy machine its "
                    "spin-waits make steps many times slower", ge=0),
    ),
}

# the trainer settings that make two runs the same run (a record is reused only if they match)
RUN_KEYS = ("dataset", "tokenizer", "batch_size", "block_size", "n_layer", "n_head", "n_embd",
            "dropout", "bias", "kernels", "learning_rate", "max_iters", "weight_decay",
            "warmup_iters", "lr_decay_iters", "min_lr", "seed", "dtype")


def _checked_budgets(values):
    """--budgets (already numbers > 0) -> sorted distinct budgets, at least 2."""
    if any(math.isinf(v) for v in values):
        raise UsageError(f"--budgets must be finite FLOPs; got {','.join(map(str, values))}")
    budgets = sorted(set(values))
    if len(budgets) < 2:
        raise UsageError(f"--budgets needs at least 2 budgets to fit N_opt ~ C^a (3 or more "
                         f"for a trustworthy exponent); got {','.join(map(str, values))}")
    return budgets


def _parse_sizes(items, head_dim):
    """--sizes items like "2x64" -> sorted distinct (n_layer, n_embd), at least 3."""
    sizes = []
    for item in items:
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if not match or not all(int(g) > 0 for g in match.groups()):
            raise UsageError(f"--sizes expects n_layer x n_embd pairs like 2x64,4x128; "
                             f"got {item.strip()!r}")
        n_layer, n_embd = map(int, match.groups())
        if n_embd % head_dim:
            raise UsageError(f"--sizes: n_embd={n_embd} of {item.strip()} is not a multiple "
                             f"of --head_dim={head_dim}")
        sizes.append((n_layer, n_embd))
    if len(set(sizes)) < 3:
        raise UsageError(f"--sizes needs at least 3 sizes (a parabola per budget); "
                         f"got {','.join(items)!r}")
    return sorted(set(sizes))


def plan_runs(cfg, budgets, sizes, vocab_size):
    """The runs of the sweep: at each budget, the --per_budget sizes nearest (in log N) to
    N = sqrt(C / (6 * tokens_per_param)) among those that get >= --min_iters steps."""
    tokens_per_iter = cfg["batch_size"] * cfg["block_size"]
    runs = []
    for budget in budgets:
        fits = []
        for n_layer, n_embd in sizes:
            model = GPTConfig(n_layer=n_layer, n_head=n_embd // cfg["head_dim"], n_embd=n_embd,
                              vocab_size=vocab_size, block_size=cfg["block_size"], bias=False)
            counts = param_counts(model)
            iters = round(budget / (6 * counts["non_embedding"]) / tokens_per_iter)
            fits.append(dict(budget=budget, n_layer=n_layer, n_head=model.n_head, n_embd=n_embd,
                             params=counts["non_embedding"], params_total=counts["total"],
                             iters=iters, tokens=iters * tokens_per_iter,
                             name=f"{budget:.2e}".replace("+", "") + f"-{n_layer}x{n_embd}"))
        ok = [r for r in fits if r["iters"] >= cfg["min_iters"]]
        if len(ok) < 3:
            smallest = min(fits, key=lambda r: r["params"])
            what = f"only {len(ok)} of --sizes get" if ok else "none of --sizes gets"
            raise UsageError(
                f"--budgets: {budget:.3g} FLOPs is too small: {what} --min_iters="
                f"{cfg['min_iters']} steps of {tokens_per_iter} tokens (the smallest, "
                f"{smallest['n_layer']}x{smallest['n_embd']}, gets {smallest['iters']}); a "
                f"parabola needs 3 sizes: raise the budget, add smaller sizes or lower --min_iters")
        centre = math.sqrt(budget / (6 * cfg["tokens_per_param"]))
        ok.sort(key=lambda r: abs(math.log(r["params"] / centre)))
        runs += sorted(ok[:cfg["per_budget"]], key=lambda r: r["params"])
    return runs


def trainer_config(cfg, run, run_dir):
    """train.py's config for one run: its own budget of steps, warmup + cosine to its end,
    one evaluation batch at the start and the end (the sweep evaluates the checkpoint itself)."""
    from gpt.train_config import DEFAULTS

    iters = run["iters"]
    return {**DEFAULTS,
            "dataset": cfg["dataset"], "tokenizer": cfg["tokenizer"], "data_dir": cfg["data_dir"],
            "out_dir": str(run_dir), "batch_size": cfg["batch_size"],
            "block_size": cfg["block_size"], "gradient_accumulation_steps": 1,
            "n_layer": run["n_layer"], "n_head": run["n_head"], "n_embd": run["n_embd"],
            "dropout": 0.0, "bias": False, "kernels": cfg["kernels"],
            "learning_rate": cfg["learning_rate"], "max_iters": iters,
            "weight_decay": cfg["weight_decay"], "decay_lr": True,
            "warmup_iters": round(cfg["warmup_frac"] * iters), "lr_decay_iters": iters,
            "min_lr": cfg["learning_rate"] / 10, "eval_interval": iters, "eval_iters": 1,
            "log_interval": max(1, iters // 20), "always_save_checkpoint": True,
            "init_from": "scratch", "num_samples": 0, "device": cfg["device"], "dtype": "auto",
            "compile": False, "seed": cfg["seed"], "progress": False}


def evaluate(run_dir, data_dir, block_size, eval_tokens, device, batch=64):
    """Mean validation loss of run_dir's checkpoint over eval_tokens // block_size windows
    evenly spaced over the val split: the same tokens for every run, so sizes compare paired."""
    import torch

    from gpt.data import TokenDataset
    from gpt.checkpoint import load_checkpoint

    model, _ = load_checkpoint(run_dir, device=device)  # in eval mode, dropout 0
    val = TokenDataset(data_dir, "val")
    n = max(1, min(eval_tokens // block_size, len(val) - block_size))
    starts = np.linspace(0, len(val) - block_size - 1, n).round().astype(np.int64)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            rows = starts[i:i + batch, None] + np.arange(block_size + 1)
            buf = torch.from_numpy(val.data[rows].astype(np.int64)).to(device)
            _, loss = model(buf[:, :-1], buf[:, 1:])
            total += loss.item() * len(rows)  # each window has block_size targets
    return total / n, n * block_size


def run_one(cfg, run, out_dir, device):
    """Train one (budget, size) run, evaluate it, write its record; return the record."""
    import torch

    from gpt import trainer
    from gpt.data import TokenDataset

    run_dir = out_dir / "runs" / run["name"]
    tcfg = trainer_config(cfg, run, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    load_before, t0, cpu0 = os.getloadavg(), time.time(), time.process_time()
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log):
        summary = trainer.train(tcfg)  # its log lines go to train.log, not over the progress bar
    train_s = time.time() - t0
    val_loss, eval_tokens = evaluate(run_dir, summary["data_dir"], cfg["block_size"],
                                     cfg["eval_tokens"], device)
    if not cfg["keep_checkpoints"]:
        (run_dir / "ckpt.pt").unlink()
    train_tokens = len(TokenDataset(summary["data_dir"], "train"))
    record = {**run, "val_loss": val_loss, "eval_tokens": eval_tokens,
              "eval_tokens_requested": cfg["eval_tokens"],
              "compute": 6 * run["params"] * run["tokens"],
              "compute_with_attention": run["tokens"] * (
                  6 * run["params"] + 12 * run["n_layer"] * cfg["block_size"] * run["n_embd"]),
              "tokens_per_param": run["tokens"] / run["params"],
              "epochs": run["tokens"] / train_tokens, "train_s": train_s,
              "wall_s": time.time() - t0, "cpu_s": time.process_time() - cpu0,
              "threads": torch.get_num_threads(), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "train_config": {k: v for k, v in tcfg.items() if k != "progress"}}
    write_json(out_dir / "runs" / f"{run['name']}.json", record)
    return record


def _check_records(runs, out_dir, cfg):
    """Runs already recorded with the same trainer settings are done; a record with other
    settings under the same name is a UsageError (reusing it would mix two sweeps)."""
    done = {}
    for run in runs:
        path = out_dir / "runs" / f"{run['name']}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        wanted = trainer_config(cfg, run, out_dir)
        diff = [k for k in RUN_KEYS if record["train_config"].get(k) != wanted[k]]
        if record.get("eval_tokens_requested") != cfg["eval_tokens"]:
            diff.append("eval_tokens")
        if diff:
            shown = ", ".join(f"--{k}" for k in diff)
            raise UsageError(f"--out_dir={out_dir} holds run {run['name']} made with other "
                             f"settings ({shown} differ); use another --out_dir")
        done[run["name"]] = record
    return done


def _machine(device):
    import subprocess

    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parent,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu"
    return {"device": name, "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit}


def sweep(cfg):
    """The `sweep` command: plan, train what is not done yet, fit, plot; returns sweep.json's
    content. Every user mistake is raised before a run starts."""
    import torch

    from gpt.run_setup import prepare_data
    from gpt.train_config import check_config, resolve_device_and_dtype

    budgets = _checked_budgets(cfg["budgets"])
    sizes = _parse_sizes(cfg["sizes"], cfg["head_dim"])
    out_dir = Path(cfg["out_dir"])
    probe = dict(name="probe", n_layer=sizes[0][0], n_head=sizes[0][1] // cfg["head_dim"],
                 n_embd=sizes[0][1], iters=cfg["min_iters"])
    check_config(trainer_config(cfg, probe, out_dir / "runs" / "probe"))
    device = resolve_device_and_dtype(trainer_config(cfg, probe, out_dir))[0]
    plan_runs(cfg, budgets, sizes, vocab_size=1)  # budgets too small, before writing anything
    data_dir = prepare_data(trainer_config(cfg, probe, out_dir))  # a cache, shared
    from gpt.data import load_meta

    vocab_size = load_meta(data_dir)["vocab_size"]
    runs = plan_runs(cfg, budgets, sizes, vocab_size)
    done = _check_records(runs, out_dir, cfg)
    print_sweep_plan(runs, done, data_dir, vocab_size, cfg)

    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time()
    todo = [r for r in runs if r["name"] not in done]
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        records = _train_runs(cfg, runs, todo, done, out_dir, device)
    finally:
        torch.set_num_threads(threads)  # a library caller keeps its own setting

    ordered = [records[r["name"]] for r in runs]
    fit = fit_sweep(ordered)
    wall = time.time() - t0
    previous = out_dir / "sweep.json"  # a resumed sweep keeps the times of the earlier calls
    history = json.loads(previous.read_text()).get("invocations", []) if previous.is_file() else []
    result = {"settings": cfg, "machine": _machine(device), "vocab_size": vocab_size,
              "data_dir": str(data_dir), "started": started, "wall_s": wall,
              "runs_trained_now": len(todo),
              "invocations": history + [{"started": started, "wall_s": wall,
                                         "runs_trained": len(todo)}],
              "runs_wall_s_sum": sum(r["wall_s"] for r in ordered),
              "runs_cpu_s_sum": sum(r["cpu_s"] for r in ordered),
              "param_count": "non-embedding (GPT.num_params(non_embedding=True))",
              "runs": ordered, "fit": fit}
    plot_sweep(ordered, fit, out_dir / "scaling.png")
    write_json(out_dir / "sweep.json", result)
    print_sweep_fit(fit, out_dir)
    return result


def _train_runs(cfg, runs, todo, done, out_dir, device):
    """Train the runs not done yet, in order, under a progress bar; {name: record} of all."""
    bar = None
    if cfg["progress"] and todo and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), initial=len(done), unit="run", dynamic_ncols=True)
    write = bar.write if bar is not None else print
    records = dict(done)
    for run in todo:
        if bar is not None:
            bar.set_postfix_str(f"{run['name']}: {run['iters']} steps")
        record = run_one(cfg, run, out_dir, device)
        records[run["name"]] = record
        write(f"{run['name']}: N={si(run['params'])}, {run['iters']} steps, "
              f"{si(run['tokens'])} tokens ({record['tokens_per_param']:.1f}/param): "
              f"val loss {record['val_loss']:.4f} ({record['wall_s']:.0f} s, CPU "
              f"{record['cpu_s']:.0f} s, load "
              f"{record['loadavg_before'][0]:.1f} -> {record['loadavg_after'][0]:.1f})")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return records


def print_sweep_plan(runs, done, data_dir, vocab_size, cfg):
    print(f"data: {data_dir} (vocab {vocab_size}); {cfg['batch_size']} x {cfg['block_size']} "
          f"tokens per step; N counts non-embedding parameters")
    print(f"{'run':<18} {'N':>7} {'steps':>6} {'tokens':>7} {'D/N':>7}  status")
    for run in runs:
        status = f"done, val loss {done[run['name']]['val_loss']:.4f}" if run["name"] in done \
            else "to train"
        print(f"{run['name']:<18} {si(run['params']):>7} {run['iters']:>6} "
              f"{si(run['tokens']):>7} {run['tokens'] / run['params']:>7.1f}  {status}")


def print_sweep_fit(fit, out_dir):
    for f in fit["per_budget"]:
        if f["n_opt"] is None:
            print(f"C = {f['budget']:.3g}: the parabola has no minimum (loss falls or rises "
                  f"across all sizes): no N_opt")
        else:
            where = "" if f["interior"] else " (outside the sizes trained: not used in the fit)"
            print(f"C = {f['budget']:.3g}: N_opt = {si(f['n_opt'])}, loss {f['loss_opt']:.4f}"
                  f"{where}")
    law = fit["power_law"]
    if law is None:
        print("N_opt ~ C^a: fewer than 2 budgets have a minimum inside their sizes; no exponent")
    else:
        print(f"N_opt = {law['k']:.3g} * C^{law['a']:.3f} over {len(law['budgets_used'])} "
              f"budgets (D_opt ~ C^{1 - law['a']:.3f}); Chinchilla (Approach 1): a = 0.50")
    print(f"results: {out_dir / 'sweep.json'}, {out_dir / 'scaling.png'}")
