"""CPU time of nanoGPT's small CPU recipe against this project's train.py, side by side.

    python -m bench.nanogpt_cpu --nanogpt=path/to/nanoGPT --input=path/to/tinyshakespeare.txt

The recipe is the one nanoGPT's README gives for a CPU: Tiny Shakespeare by characters,
4 layers x 4 heads x 128 wide, context 64, batch 12, dropout 0, no biases, eval_iters 20,
log_interval 1, no torch.compile, on the CPU, here cut to --max_iters iterations (150).
nanoGPT runs its own train.py (``config/train_shakespeare_char.py`` plus those overrides) on
the ``data/shakespeare_char`` files its own ``prepare.py`` writes from --input (no network:
the text is given). This project runs ``train.py`` with the same settings on the same text.
nanoGPT's loop takes max_iters + 1 optimizer steps, so train.py is given max_iters + 1; both
evaluate once (at step 0) and start from seed 1337, so their losses agree to a few decimals
(printed). The work nanoGPT's train.py does not do is switched off in train.py: the samples
at the end (--num_samples=0) and the loss plot (--plot=False: importing matplotlib and drawing
cost about 1 s of CPU); --plot=True here keeps the plot in, to see what it costs. train.py's
metrics.jsonl and tokenizer.json stay (cheap).

Each run is a fresh process with --threads torch threads (``OMP_NUM_THREADS``, which torch
reads at start), the two alternating (ABBA order), --repeats runs each. The figure is the
whole process's CPU time, user + system, of the child (``resource.getrusage(RUSAGE_CHILDREN)``
before and after): imports, data loading, model construction, evaluation, training, logging.
The median of each side and their ratio are printed and written as JSON to
``bench/results/nanogpt-cpu-<date>.json`` (a -2, -3, ... suffix when that file exists). On a
shared machine the CPU time of a run still grows with the load (caches, memory bandwidth,
hyper-threads): the load averages are recorded next to the times. Data preparation of both
sides happens once, before the timed runs, in a temporary folder (--keep=True keeps it).
"""

import importlib.util
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench import common
from gpt.cli import Opt, UsageError, parse, run_main

PROG = "python -m bench.nanogpt_cpu"
OPTIONS = {
    "inputs": dict(
        nanogpt=Opt("", "a nanoGPT checkout (train.py, model.py, configurator.py, "
                    "config/, data/shakespeare_char/prepare.py)"),
        input=Opt("", "Tiny Shakespeare's input.txt; empty: the checkout's "
                  "data/shakespeare_char/input.txt"),
    ),
    "runs": dict(
        repeats=Opt(3, "runs of each side, alternating; medians are reported", ge=1),
        max_iters=Opt(150, "nanoGPT's --max_iters (it takes one step more; so does train.py)",
                      ge=1),
        eval_iters=Opt(20, "batches per split in the step-0 evaluation", ge=1),
        threads=Opt(1, "torch threads in each run (OMP_NUM_THREADS)", ge=1),
        plot=Opt(False, "let train.py draw loss.png as it does by default (nanoGPT draws "
                 "none)"),
    ),
    "output": dict(
        out=Opt("", "results JSON; empty: bench/results/nanogpt-cpu-<date>.json, with a "
                "suffix when that exists"),
        keep=Opt(False, "keep the temporary work folder (data, logs, outputs)"),
    ),
}
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")
# The model and optimizer settings both sides share: nanoGPT's README line for a CPU.
RECIPE = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
              bias=False, log_interval=1)
LOSS_LINE = re.compile(r"^iter (\d+): loss ([0-9.]+)", re.M)
EVAL_LINE = re.compile(r"^step 0: train loss ([0-9.]+), val loss ([0-9.]+)", re.M)


def check_inputs(cfg):
    """(nanoGPT folder, input text path); UsageError when either is missing."""
    if not cfg["nanogpt"]:
        raise UsageError("--nanogpt is required: the path of a nanoGPT checkout "
                         "(git clone https://github.com/karpathy/nanoGPT)")
    nano = Path(cfg["nanogpt"]).expanduser().resolve()
    missing = [f for f in NANOGPT_FILES if not (nano / f).is_file()]
    if missing:
        raise UsageError(f"--nanogpt={cfg['nanogpt']}: not a nanoGPT checkout "
                         f"(missing {', '.join(missing)})")
    text = Path(cfg["input"]).expanduser() if cfg["input"] else \
        nano / "data" / "shakespeare_char" / "input.txt"
    if not text.is_file():
        raise UsageError(f"--input={cfg['input'] or text}: no such file (pass Tiny "
                         "Shakespeare's input.txt)")
    return nano, text.resolve()


def child_env(threads, extra_path=None):
    """The environment of a timed run: n threads, the default kernel dispatch (no
    TRITON_INTERPRET, no GPT_KERNELS), nothing else changed."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GPT_KERNELS")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return env


def prepare_nanogpt(nano, text, work, threads):
    """A work folder in which nanoGPT's train.py finds its code, config and prepared data:
    links to the checkout's files, and data/shakespeare_char written by its own prepare.py
    from a copy of the text (prepare.py downloads only when input.txt is absent)."""
    run_dir = work / "nanogpt"
    data = run_dir / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py", "config"):
        (run_dir / name).symlink_to(nano / name)
    shutil.copy(nano / "data" / "shakespeare_char" / "prepare.py", data / "prepare.py")
    shutil.copy(text, data / "input.txt")
    stub = None
    if importlib.util.find_spec("requests") is None:  # prepare.py imports it, text or not
        stub = work / "stub"
        stub.mkdir()
        (stub / "requests.py").write_text(
            "def get(*args, **kwargs):\n"
            "    raise RuntimeError('no network here: input.txt must be given')\n")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True,
                   env=child_env(threads, stub and str(stub)))
    return run_dir


def commands(cfg, nano_dir, text, work):
    """(nanoGPT's command, train.py's command), each with its working folder."""
    shared = [f"--{k}={v}" for k, v in RECIPE.items()] + [f"--eval_iters={cfg['eval_iters']}"]
    nanogpt = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
               "--compile=False", f"--max_iters={cfg['max_iters']}",
               f"--lr_decay_iters={cfg['max_iters']}", f"--out_dir={work / 'out-nanogpt'}",
               *shared]
    ours = [sys.executable, str(common.REPO_ROOT / "train.py"), f"--dataset={text}",
            f"--data_dir={work / 'data'}", f"--out_dir={work / 'out-gpt-triton'}",
            "--device=cpu", "--compile=False", "--eval_interval=250", "--num_samples=0",
            f"--plot={cfg['plot']}", "--progress=False", f"--max_iters={cfg['max_iters'] + 1}",
            f"--lr_decay_iters={cfg['max_iters']}", *shared]
    return {"nanoGPT": (nanogpt, nano_dir), "gpt-triton": (ours, common.REPO_ROOT)}


def timed_run(cmd, cwd, env, log_path, logs_before_step):
    """Run cmd; its CPU time (user, sys) from RUSAGE_CHILDREN, wall time, log and losses.
    ``logs_before_step``: the log line's iteration number is the step's index (nanoGPT's)
    rather than the count of steps done (train.py's)."""
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = proc.stdout + proc.stderr
    Path(log_path).write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}); "
                           f"see {log_path}:\n{log[-2000:]}")
    losses = LOSS_LINE.findall(proc.stdout)
    evals = EVAL_LINE.search(proc.stdout)
    user = after.ru_utime - before.ru_utime
    sys_ = after.ru_stime - before.ru_stime
    return dict(cpu_s=user + sys_, user_s=user, sys_s=sys_, wall_s=wall, loadavg_before=load,
                loadavg_after=os.getloadavg(),
                steps=int(losses[-1][0]) + logs_before_step if losses else None,
                final_loss=float(losses[-1][1]) if losses else None,
                step0_train_loss=float(evals.group(1)) if evals else None,
                step0_val_loss=float(evals.group(2)) if evals else None)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_head(folder):
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True)
    return out.stdout.strip() or None


def table(summary):
    rows = [("", "CPU s (median)", "user", "sys", "wall s", "final loss")]
    for who, s in summary["sides"].items():
        rows.append((who, f"{s['cpu_s']:.2f}", f"{s['user_s']:.2f}", f"{s['sys_s']:.2f}",
                     f"{s['wall_s']:.2f}", f"{s['final_loss']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.append(f"gpt-triton / nanoGPT CPU time: {summary['ratio']:.3f}x "
                 f"(median of {summary['repeats']} each; 1.0 = as fast as nanoGPT)")
    return "\n".join(lines)


def summarise(runs, repeats):
    sides = {}
    for who in ("nanoGPT", "gpt-triton"):
        mine = [r for r in runs if r["side"] == who]
        sides[who] = {k: statistics.median(r[k] for r in mine)
                      for k in ("cpu_s", "user_s", "sys_s", "wall_s")}
        sides[who]["final_loss"] = mine[-1]["final_loss"]
        sides[who]["steps"] = mine[-1]["steps"]
        sides[who]["cpu_s_all"] = [r["cpu_s"] for r in mine]
    ratio = sides["gpt-triton"]["cpu_s"] / sides["nanoGPT"]["cpu_s"]
    return dict(sides=sides, ratio=ratio, repeats=repeats)


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    nano, text = check_inputs(cfg)
    out = Path(cfg["out"]) if cfg["out"] else \
        common.unique_path(common.RESULTS_DIR / f"nanogpt-cpu-{date.today().isoformat()}.json")
    if not out.parent.is_dir():
        raise UsageError(f"--out={cfg['out']}: folder {out.parent} does not exist")

    work = Path(tempfile.mkdtemp(prefix="nanogpt-cpu-"))
    try:
        from gpt import data as gdata

        print(f"preparing data in {work}", flush=True)
        nano_dir = prepare_nanogpt(nano, text, work, cfg["threads"])
        gdata.prepare(str(text), work / "data" / f"{text.stem}-char", tokenizer="char")
        cmds = commands(cfg, nano_dir, text, work)
        env = child_env(cfg["threads"])
        runs = []
        for i in range(cfg["repeats"]):
            order = ("nanoGPT", "gpt-triton") if i % 2 == 0 else ("gpt-triton", "nanoGPT")
            for who in order:
                cmd, cwd = cmds[who]
                rec = timed_run(cmd, cwd, env, work / f"{who}-{i}.log", who == "nanoGPT")
                runs.append(dict(side=who, round=i, **rec))
                print(f"round {i + 1}/{cfg['repeats']} {who:10s}: {rec['cpu_s']:6.2f} s CPU "
                      f"({rec['wall_s']:.1f} s wall, load {rec['loadavg_before'][0]:.2f}), "
                      f"loss {rec['final_loss']} after {rec['steps']} steps", flush=True)
        summary = summarise(runs, cfg["repeats"])
    finally:
        if cfg["keep"]:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    commit, dirty = common.git_commit()
    doc = dict(
        benchmark="nanogpt_cpu", date=date.today().isoformat(),
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), platform=platform.platform()),
        versions=common.versions(), commit=commit, dirty=dirty, nanogpt_commit=git_head(nano),
        threads=cfg["threads"], max_iters=cfg["max_iters"], plot=cfg["plot"],
        eval_iters=cfg["eval_iters"], recipe=RECIPE, input=str(text),
        commands={who: c[0][1:] for who, c in cmds.items()},
        measure="user + system CPU seconds of the child process (RUSAGE_CHILDREN deltas)",
        runs=runs, **summary,
    )
    print(table(summary))
    print(f"wrote {common.write_json(out, doc)}")
    return doc


if __name__ == "__main__":
    run_main(main, PROG)
