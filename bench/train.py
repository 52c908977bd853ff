"""End-to-end training benchmark: a GPT-2 124M training step on each kernel path.

    python -m bench.train                                  # the three paths, same micro-batch
    python -m bench.train --batch_size=16 --steps=30 --max_batch=False
    python -m bench.train --time_to_quality=True --data=../shared/data/tinyshakespeare.txt
    TRITON_INTERPRET=1 python -m bench.train --smoke=True  # CPU: every path once, tiny model

Paths, all with the same micro-batch (``--batch_size``):

- ``triton``: ``GPT(kernels="triton")``, every hot op a Triton kernel;
- ``torch``: ``GPT(kernels="torch")``, the plain-PyTorch reference ops in eager mode (the
  JSON notes which attention that is);
- ``compile``: ``torch.compile`` of the torch path;
- ``compile-triton``: ``torch.compile`` of the Triton path (the kernels are ``torch.library``
  ops, so the graph has no break around them).

The results file is rewritten after every path, so a run stopped halfway keeps the paths it
finished.

The model is GPT-2 small (``PRESETS["gpt2"]``: 12 layers, 12 heads, 768 wide, with biases)
with the padded vocabulary of 50304 and T=1024, no dropout. A step is what ``train.py`` does:
``forward_backward`` under bf16 autocast, gradient clipping at 1.0, fused AdamW, zero_grad.
After ``--warmup`` steps, ``--steps`` steps are timed one by one (synchronised); reported
are the median step time, tokens/sec, MFU (``GPT.flops_per_token`` x tokens/sec over the
bf16 matmul TFLOP/s measured on this machine, and over the datasheet peak when
``gpt.trainer.PEAK_BF16_FLOPS`` knows the GPU) and the peak memory of the timed steps
(``max_memory_allocated``: weights, gradients, optimizer state and activations). Then the
largest micro-batch that fits: doubling, then bisection, catching
``torch.cuda.OutOfMemoryError`` (two steps per trial, so the optimizer state is counted).

Time to quality (``--time_to_quality=True``, minutes per path on a GPU): nanoGPT's
Shakespeare character recipe (``config/train_shakespeare_char.py``: 6 layers, 384 wide,
6 heads, T=256, batch 64, dropout 0.2, 5000 iterations) run through ``gpt.trainer.train()`` on
Tiny Shakespeare (``--data=``, a path or a name ``train.py`` knows), once per path. A thread
timestamps each line of the run's ``metrics.jsonl`` as it appears; the result is the seconds
until the first evaluation with val loss <= ``--target_loss`` (1.47; nanoGPT reports 1.4697
after about 3 minutes on an A100), counted from the iteration-0 evaluation (so data
preparation and model construction are left out; compilation and the recipe's own
evaluations are in), with the time including setup alongside.

Results go to the "train" section of ``bench/results/<device>-<date>.json``.
"""

import inspect
import json
import os
import shutil
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bench import common
from gpt import trainer
from gpt.cli import Opt, UsageError, defaults, parse, run_main
from gpt.model import PRESETS, GPT, GPTConfig
from gpt.run_setup import peak_flops
from gpt.train_config import DATASETS

PROG = "python -m bench.train"
PATHS = {  # name -> (GPTConfig.kernels, torch.compile?)
    "triton": ("triton", False),
    "torch": ("torch", False),
    "compile": ("torch", True),
    "compile-triton": ("triton", True),
}

OPTIONS = {
    "model": dict(
        paths=Opt(tuple(PATHS), "comma-separated paths, or all", choices=tuple(PATHS)),
        preset=Opt("gpt2", "model size (a gpt.model preset: gpt2, gpt2-medium, ...)"),
        block_size=Opt(1024, "sequence length", ge=1),
        batch_size=Opt(12, "the micro-batch every path runs (nanoGPT's GPT-2 recipe: 12)",
                       ge=1),
    ),
    "timing": dict(
        warmup=Opt(5, "untimed steps first (compilation, autotuning, allocator warm-up)", ge=0),
        steps=Opt(20, "timed steps", ge=1),
        max_batch=Opt(True, "also search the largest micro-batch that fits"),
        max_batch_limit=Opt(512, "stop that search here", ge=1),
        smoke=Opt(False, "CPU, tiny model, every path once: checks the code, times nothing"),
    ),
    "time to quality": dict(
        time_to_quality=Opt(False, "also run nanoGPT's Shakespeare char recipe per path "
                            "(minutes on a GPU)"),
        data=Opt("tinyshakespeare", "Tiny Shakespeare: a path to input.txt, or a train.py "
                 "dataset name"),
        target_loss=Opt(1.47, "the val loss to reach", gt=0),
        ttq_max_iters=Opt(5000, "the recipe's length", ge=1),
    ),
    "output": dict(
        out=Opt("", "results JSON; empty: bench/results/<device>-<date>.json"),
    ),
}
DEFAULTS = defaults(OPTIONS)

VOCAB = GPTConfig().vocab_size  # 50304
NEEDS_INTERPRETER = "Triton on the CPU needs TRITON_INTERPRET=1 (set before start)"
RECIPE = common.REPO_ROOT / "config" / "train_shakespeare_char.py"


def torch_attention_note():
    """Which attention the torch path runs (the reference may or may not call SDPA)."""
    from gpt_kernels import reference

    src = inspect.getsource(reference.flash_attention)
    if "scaled_dot_product_attention" in src:
        return "gpt_kernels.reference.flash_attention, which calls F.scaled_dot_product_attention (SDPA)"
    return ("gpt_kernels.reference.flash_attention: eager attention that materialises the (T, T) "
            "scores in float32 (not SDPA)")


def _is_oom(err):
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def largest_batch(fits, start, limit):
    """The largest micro-batch b <= limit with fits(b): doubling from ``start`` until one
    does not fit, then bisection. Returns (batch, note); batch 0 when even 1 does not fit."""
    lo, b = 0, min(max(1, start), limit)
    while fits(b):
        lo = b
        if b == limit:
            return lo, f"the search limit ({limit}) fits; the true maximum may be larger"
        b = min(2 * b, limit)
    hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, f"{hi} does not fit"


class Bench:
    """One path's model, optimizer and step."""

    def __init__(self, path, mcfg, device, smoke):
        backend, use_compile = PATHS[path]
        torch.manual_seed(0)
        self.device = device
        self.raw = GPT(GPTConfig(**{**mcfg, "kernels": backend})).to(device)
        device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.optimizer = self.raw.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type)
        self.model = torch.compile(self.raw) if use_compile else self.raw
        self.autocast = (nullcontext() if smoke
                         else torch.autocast(device_type=device_type, dtype=torch.bfloat16))
        self.dtype = "float32" if smoke else "bfloat16"
        self.scaler = torch.amp.GradScaler(device_type, enabled=False)  # bf16 needs none
        self.vocab, self.T = mcfg["vocab_size"], mcfg["block_size"]

    def batch(self, b):
        x = torch.randint(0, self.vocab, (b, self.T), device=self.device)
        y = torch.randint(0, self.vocab, (b, self.T), device=self.device)
        return x, y

    def step(self, x, y):
        loss = trainer.forward_backward(self.model, lambda: (x, y), 1, self.autocast,
                                        self.scaler, False)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def fits(self, b):
        """Do two steps at micro-batch b run without running out of memory?"""
        oom = None
        try:
            x, y = self.batch(b)
            for _ in range(2):
                self.step(x, y)
            common.sync(self.device)
        except Exception as err:  # noqa: BLE001 - only OOM is an answer, others re-raise
            if not _is_oom(err):
                raise
            oom = common.failure_reason(err)
        x = y = None
        self.optimizer.zero_grad(set_to_none=True)
        common.free_memory(self.device)
        common.log(f"    micro-batch {b}: {'out of memory' if oom else 'fits'}")
        return oom is None


def bench_path(path, cfg, mcfg, device, smoke, peak_tflops):
    backend, use_compile = PATHS[path]
    rec = dict(path=path, kernels=backend, compile=use_compile,
               attention=("gpt_kernels/attention.py (Triton flash attention)" if backend == "triton"
                          else torch_attention_note()))
    bench = Bench(path, mcfg, device, smoke)
    rec["dtype"] = bench.dtype
    B, T = cfg["batch_size"], mcfg["block_size"]
    x, y = bench.batch(B)
    for _ in range(cfg["warmup"]):
        bench.step(x, y)
    common.sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(cfg["steps"]):
        common.sync(device)
        t0 = time.perf_counter()
        loss = bench.step(x, y)
        common.sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    times.sort()
    step_s = common.median(times)
    tokens_per_sec = B * T / step_s
    flops = bench.raw.flops_per_token(T) * tokens_per_sec
    datasheet = peak_flops("cuda", "bfloat16") if device.startswith("cuda") else None
    rec.update(
        skipped=False, batch_size=B, block_size=T, tokens_per_step=B * T,
        steps=cfg["steps"], warmup=cfg["warmup"], last_loss=float(loss.detach()),
        step_ms=step_s * 1e3, step_ms_p20=times[int(0.2 * (len(times) - 1))] * 1e3,
        step_ms_p80=times[int(0.8 * (len(times) - 1))] * 1e3,
        tokens_per_sec=tokens_per_sec, model_tflops=flops / common.TFLOP,
        mfu=flops / (peak_tflops * common.TFLOP) if peak_tflops else None,
        mfu_datasheet=flops / datasheet if datasheet else None,
        peak_mem_bytes=peak,
    )
    x = y = loss = None
    common.free_memory(device)
    if cfg["max_batch"]:
        limit = 4 if smoke else cfg["max_batch_limit"]  # the CPU never runs out: a token search
        common.log(f"  {path}: searching the largest micro-batch (limit {limit})")
        best, note = largest_batch(bench.fits, B, limit)
        rec["max_batch"] = dict(batch_size=best, limit=limit, note=note)
    del bench
    common.free_memory(device)
    return rec


# ----------------------------------------------------------------------------- time to quality

class MetricsWatcher(threading.Thread):
    """Timestamps each record of a metrics.jsonl as it is written (train.py flushes each)."""

    def __init__(self, path, poll=0.05):
        super().__init__(daemon=True)
        self.path, self.poll = Path(path), poll
        self.records, self._stop_event, self._offset, self._partial = [], threading.Event(), 0, ""
        self.t0 = time.perf_counter()

    def _read(self):
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        now = time.perf_counter() - self.t0
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        for line in lines:
            if line.strip():
                self.records.append({**json.loads(line), "t": now})

    def run(self):
        while not self._stop_event.is_set():
            self._read()
            time.sleep(self.poll)

    def stop(self):
        self._stop_event.set()
        self.join()
        self._read()


def time_to_quality(path, cfg, device, smoke, workdir):
    backend, use_compile = PATHS[path]
    out_dir = Path(workdir) / path
    iters = 4 if smoke else cfg["ttq_max_iters"]
    args = [str(RECIPE), f"--dataset={cfg['data']}", f"--kernels={backend}",
            f"--compile={use_compile}", f"--out_dir={out_dir}",
            f"--data_dir={Path(workdir) / 'data'}", "--progress=False", "--num_samples=0",
            f"--max_iters={iters}", f"--lr_decay_iters={iters}",
            f"--device={device}"]
    if smoke:  # the same code path at a size a CPU finishes in seconds
        args += ["--batch_size=2", "--block_size=16", "--n_layer=1", "--n_head=2", "--n_embd=32",
                 "--eval_interval=2", "--eval_iters=1", "--log_interval=1", "--warmup_iters=1",
                 "--dtype=float32"]
    tcfg = parse(args, trainer.OPTIONS, prog="train.py")
    out_dir.mkdir(parents=True, exist_ok=True)
    watcher = MetricsWatcher(out_dir / "metrics.jsonl")
    watcher.start()
    try:
        summary = trainer.train(tcfg)
    finally:
        watcher.stop()
    total = time.perf_counter() - watcher.t0
    evals = [r for r in watcher.records if "val_loss" in r]
    start = evals[0]["t"] if evals else 0.0
    hit = next((r for r in evals if r["val_loss"] <= cfg["target_loss"]), None)
    return dict(
        path=path, kernels=backend, compile=use_compile, skipped=False,
        target_loss=cfg["target_loss"], reached=hit is not None,
        seconds=hit["t"] - start if hit else None,
        seconds_including_setup=hit["t"] if hit else None,
        iter=hit["iter"] if hit else None,
        best_val_loss=min((r["val_loss"] for r in evals), default=None),
        final_val_loss=summary.get("val_loss"), iters=summary["iter_num"], total_seconds=total,
        evals=[dict(iter=r["iter"], val_loss=r["val_loss"], t=r["t"] - start) for r in evals],
        recipe=RECIPE.name, overrides=args[1:],
    )


# ----------------------------------------------------------------------------- main

def check_options(cfg):
    """The paths to run; UsageError for a bad --paths, --preset or --data."""
    paths = tuple(cfg["paths"])  # each checked by parse()
    if cfg["preset"] not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}; got {cfg['preset']!r}")
    data = cfg["data"]
    if cfg["time_to_quality"] and data not in DATASETS and not Path(data).exists():
        raise UsageError(f"--data={data!r} is neither a train.py dataset "
                         f"({', '.join(DATASETS)}) nor an existing file")
    return paths


def run(cfg):
    smoke = cfg["smoke"]
    paths = check_options(cfg)
    device = common.check_can_time(smoke, "training benchmark")
    if smoke:
        mcfg = GPTConfig.from_preset("tiny", vocab_size=128, dropout=0.0).to_dict()
        # target_loss: any loss counts, so the "reached" path runs too
        cfg = {**cfg, "batch_size": 2, "warmup": 1, "steps": 1, "target_loss": 100.0}
    else:
        mcfg = GPTConfig.from_preset(cfg["preset"], vocab_size=VOCAB, dropout=0.0,
                                     block_size=cfg["block_size"]).to_dict()
    mcfg.pop("kernels")

    meta = common.metadata(device, smoke)
    common.log(f"training benchmark on {meta['device']} ({meta['host']})"
               + (" -- SMOKE RUN: tiny model, not performance numbers" if smoke else ""))
    ceilings = common.measure_ceilings(device, smoke)
    common.log(f"measured {ceilings['matmul_dtype']} matmul peak {ceilings['matmul_tflops']:.1f} TFLOP/s")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
        torch.backends.cudnn.allow_tf32 = True

    n_params = GPT(GPTConfig(**mcfg, kernels="torch")).num_params()
    out = cfg["out"] or common.default_results_path(meta)
    results = []

    def save(ttq=None, done=False):
        payload = dict(
            config={k: v for k, v in cfg.items() if k != "out"}, complete=done,
            model=mcfg, n_params=n_params, dtype="float32" if smoke else "bfloat16",
            optimizer="AdamW(fused on CUDA), weight decay 0.1, grad clip 1.0",
            torch_attention=torch_attention_note(),
            paths=results, time_to_quality=ttq,
            time_to_quality_skipped=None if cfg["time_to_quality"] else "not run (--time_to_quality=False)",
        )
        return common.write_results(out, meta, "train", payload, ceilings)

    save()
    for path in paths:
        common.log(f"path {path}: micro-batch {cfg['batch_size']} x {mcfg['block_size']} tokens")
        if smoke and PATHS[path][0] == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            results.append(dict(path=path, skipped=True, reason=NEEDS_INTERPRETER))
            common.log(f"  skipped: {results[-1]['reason']}")
            continue
        try:
            rec = bench_path(path, cfg, mcfg, device, smoke, None if smoke else ceilings["matmul_tflops"])
        except Exception as err:  # noqa: BLE001 - one path failing must not lose the others
            rec = dict(path=path, skipped=True, reason=common.failure_reason(err))
            common.free_memory(device)
        results.append(rec)
        save()  # a run stopped now keeps every finished path
        if rec["skipped"]:
            common.log(f"  skipped: {rec['reason']}")
        elif smoke:
            common.log(f"  ran (smoke: no timing shown); max batch {rec.get('max_batch')}")
        else:
            mem = rec["peak_mem_bytes"]
            common.log(f"  {rec['step_ms']:.1f} ms/step, {rec['tokens_per_sec']:,.0f} tokens/s, "
                       f"MFU {rec['mfu']:.1%} of measured peak, peak memory {mem / 2**30:.2f} GiB"
                       + (f", largest micro-batch {rec['max_batch']['batch_size']}"
                          if "max_batch" in rec else ""))

    ttq = None
    if cfg["time_to_quality"]:
        ttq = []
        workdir = tempfile.mkdtemp(prefix="bench-ttq-")
        try:
            for path in paths:
                common.log(f"time to quality, path {path}: {RECIPE.name} on {cfg['data']}")
                if smoke and PATHS[path][0] == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
                    ttq.append(dict(path=path, skipped=True, reason=NEEDS_INTERPRETER))
                    continue
                try:
                    rec = time_to_quality(path, cfg, device, smoke, workdir)
                except Exception as err:  # noqa: BLE001
                    rec = dict(path=path, skipped=True, reason=common.failure_reason(err))
                ttq.append(rec)
                save(ttq)
                common.log(f"  {rec}" if rec["skipped"] or smoke else
                           f"  val loss <= {rec['target_loss']}: "
                           + (f"{rec['seconds']:.0f} s (iteration {rec['iter']})" if rec["reached"]
                              else f"not reached (best {rec['best_val_loss']})"))
                common.free_memory(device)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    path = save(ttq, done=True)
    common.log(f"written to {path}" + ("" if smoke else "; summarise with: python -m bench.report"))
    return path


def main(argv=None):
    return run(parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    run_main(main, PROG)
