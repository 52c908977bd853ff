"""The training loop as a library: `train(cfg) -> summary dict`.

    from gpt.trainer import DEFAULTS, TrainConfig, train
    summary = train(TrainConfig(dataset="input.txt", max_iters=100))
    summary = train({**DEFAULTS, "max_iters": 100})          # a dict of options works too

`train.py` is the command line around it. A run is set up in three phases, each in its own
module: what the run is (`gpt.train_config`: the options, checked before anything is
written), where it runs and on what (`gpt.run_setup`: processes, device, data, model), and
its files (`gpt.checkpoint`: ckpt.pt or the sharded ckpt/, tokenizer.json, metrics.jsonl).
This module builds the optimizer and runs the loop: evaluate and checkpoint every
eval_interval steps, accumulate gradients, clip, step AdamW, log.
"""

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt import checkpoint as gckpt
from gpt.files import atomic_path
from gpt.hardware import DTYPES, GPUS
from gpt.run_setup import Run, build_model, load_data, peak_flops, setup_run
from gpt.train_config import DEFAULTS, OPTIONS, TrainConfig, check_config

__all__ = ["train", "TrainConfig", "OPTIONS", "DEFAULTS", "PEAK_BF16_FLOPS", "get_lr",
           "forward_backward", "estimate_loss", "sample_text", "print_samples", "plot_losses"]

# Peak dense bf16 tensor-core FLOP/s from the vendors' datasheets, for the MFU estimate.
PEAK_BF16_FLOPS = {name: gpu.bf16_flops for name, gpu in GPUS.items()}


def get_lr(it, cfg):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def forward_backward(model, get_batch, accum_steps, autocast_ctx, scaler, parallel=None):
    """Run `accum_steps` micro-steps and leave the summed gradients in the parameters.

    Each micro-loss is divided by accum_steps so the gradients are those of the mean loss over
    the whole (accum_steps x batch) batch, as one big batch would give. Gradients are
    synchronised only on the last micro-step: under DDP (`parallel="ddp"`) `no_sync` skips
    the all-reduce of the others, under FSDP (`parallel="fsdp"`) the reduce-scatter waits
    the same way (`set_requires_gradient_sync`). Returns the last micro-step's loss.
    """
    loss = None
    for micro_step in range(accum_steps):
        x, y = get_batch()
        last = micro_step == accum_steps - 1
        sync_ctx = model.no_sync() if (parallel == "ddp" and not last) else nullcontext()
        if parallel == "fsdp":
            model.set_requires_gradient_sync(last)
        with sync_ctx:
            with autocast_ctx:
                _, loss = model(x, y)
                loss = loss / accum_steps
            scaler.scale(loss).backward()
    return loss * accum_steps


@torch.no_grad()
def estimate_loss(model, datasets, cfg, device, autocast_ctx, distributed=False):
    """Mean loss over eval_iters random batches of each split (of each process, averaged
    over all of them when distributed: every process must call it)."""
    out = {}
    model.eval()
    for split, ds in datasets.items():
        losses = torch.zeros(cfg.eval_iters, device=device)
        for k in range(cfg.eval_iters):
            x, y = ds.get_batch(cfg.batch_size, cfg.block_size, device)
            with autocast_ctx:
                _, loss = model(x, y)
            losses[k] = loss
        mean = losses.mean()
        if distributed:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        out[split] = mean.item()
    model.train()
    return out


def plot_losses(metrics_path, png_path):
    """Loss curves (train per log line, train/val per eval) from the JSON-lines metrics log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, eval_steps, train_l, val_l = [], [], [], [], []
    for rec in gckpt.read_metrics(metrics_path):
        if "val_loss" in rec:
            eval_steps.append(rec["iter"])
            train_l.append(rec["train_loss"])
            val_l.append(rec["val_loss"])
        elif "loss" in rec:
            steps.append(rec["iter"])
            losses.append(rec["loss"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.8, alpha=0.6, label="train (batch)")
    ax.plot(eval_steps, train_l, "o-", label="train (eval)")
    ax.plot(eval_steps, val_l, "o-", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def sample_start(tokenizer):
    """The ids a sample starts from: a newline (or end-of-text; a patient timeline, or a
    tokenizer with special tokens, from its start token)."""
    try:
        start = tokenizer.encode("\n")
    except ValueError:
        start = []
    if getattr(tokenizer, "bos_token", None) is not None:
        start = [tokenizer.bos_token]
    if not start:
        start = [tokenizer.eot_token if tokenizer.eot_token is not None else 0]
    return start


def sample_text(model, tokenizer, n_tokens, device, autocast_ctx, generator=None):
    """One sample of up to n_tokens (temperature 0.8, top-k 200, as nanoGPT), decoded; it
    ends at the tokenizer's end of document (<EOS>, <|endoftext|>) when one is drawn."""
    x = torch.tensor([sample_start(tokenizer)], dtype=torch.long, device=device)
    eos = getattr(tokenizer, "eos_token", None)
    with torch.no_grad(), autocast_ctx:
        y = model.generate(x, n_tokens, temperature=0.8, top_k=200, generator=generator,
                           eos_token_id=eos)
    ids = y[0].tolist()
    if eos is not None and eos in ids[1:]:
        ids = ids[: ids.index(eos, 1) + 1]  # generate pads a finished row with eos
    return tokenizer.decode(ids)


def print_samples(model, tokenizer, cfg, device, autocast_ctx, echo=True):
    """A few samples from the trained model (see sample_start)."""
    model.eval()
    samples = []
    for _ in range(cfg.num_samples):
        text = sample_text(model, tokenizer, cfg.sample_tokens, device, autocast_ctx)
        samples.append(text)
        if echo:
            print(text)
            print("---------------")
    return samples


# ----------------------------------------------------------------------------- setup

@dataclass
class Session:
    """What the loop trains and with what: built by `setup` from the config and the run."""

    data_dir: Path
    tokenizer: object
    datasets: dict             # {"train": ..., "val": ...}, each with get_batch(B, T, device)
    raw_model: torch.nn.Module  # the GPT itself: checkpoints, evaluation, samples
    model: torch.nn.Module      # what a step runs: raw_model compiled and/or wrapped in DDP
    model_args: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast_ctx: object
    accum: int                  # micro-steps per optimizer step on this process
    iter_num: int = 0
    best_val_loss: float = float("inf")
    resumed_at: int = None      # the iteration a resume starts from


def setup(cfg, run):
    """Seeds, precision, data, model, optimizer, a resumed checkpoint, compile and DDP."""
    torch.manual_seed(cfg.seed + run.rank)  # different batches on each rank
    random.seed(cfg.seed + run.rank)
    if run.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 matmuls on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    autocast_ctx = (nullcontext() if run.dtype == "float32"
                    else torch.autocast(device_type=run.device_type, dtype=DTYPES[run.dtype]))

    # the checkpoint first: a damaged one is reported before data is prepared or a file written
    opened = gckpt.open_for_resume(cfg.out_dir, run) if cfg.init_from == "resume" else None
    data_dir, tokenizer, datasets = load_data(cfg, run)
    raw_model, model_args = build_model(cfg, run, tokenizer.vocab_size,
                                        opened[2]["model_args"] if opened else None)
    scaler = torch.amp.GradScaler(run.device_type, enabled=(run.dtype == "float16"))
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate,
                                               (cfg.beta1, cfg.beta2), run.device_type)
    iter_num, best_val_loss, resumed_at = 0, float("inf"), None
    if opened is not None:
        iter_num, best_val_loss = gckpt.restore(opened, raw_model, optimizer, scaler, run,
                                                cfg.seed)
        resumed_at = iter_num
        opened = None  # free a plain checkpoint's memory

    model = torch.compile(raw_model) if cfg.compile else raw_model
    if run.parallel == "ddp":
        model = DDP(model, device_ids=[run.device] if run.device_type == "cuda" else None)
    return Session(data_dir, tokenizer, datasets, raw_model, model, model_args, optimizer,
                   scaler, autocast_ctx, cfg.gradient_accumulation_steps // run.world_size,
                   iter_num, best_val_loss, resumed_at)


# ----------------------------------------------------------------------------- the loop

def train(cfg):
    """Train with `cfg`, a TrainConfig or a dict of options (missing ones keep DEFAULTS);
    returns a summary dict: iter_num, best_val_loss, out_dir, data_dir, the last evaluation's
    train_loss and val_loss, and (on the master process) the final samples.

    A user mistake (a bad option, a missing or damaged run file) raises UsageError before
    anything is written.
    """
    cfg = check_config(cfg)
    run = setup_run(cfg)
    try:
        return _train(cfg, run)
    finally:
        if run.distributed:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, run: Run):
    s = setup(cfg, run)
    out_dir = Path(cfg.out_dir)
    tokens_per_iter = s.accum * run.world_size * cfg.batch_size * cfg.block_size
    peak = peak_flops(run.device_type, run.dtype)
    metrics_path = out_dir / gckpt.METRICS
    metrics = None
    if run.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        gckpt.save_tokenizer(out_dir, s.tokenizer)
        metrics = gckpt.open_metrics(out_dir, append=s.resumed_at is not None)
        print(f"model: {s.raw_model.num_params() / 1e6:.2f}M parameters, kernels={cfg.kernels}, "
              f"device={run.device}, dtype={run.dtype}, processes={run.world_size}")
        print(f"data: {s.data_dir} (train {len(s.datasets['train']):,} tokens, "
              f"val {len(s.datasets['val']):,}), tokens per iteration {tokens_per_iter:,}")

    bar = None
    # a bar only on a terminal: redirected to a file, its \r updates would be one huge line
    if run.master and cfg.progress and not cfg.eval_only and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_iters, initial=s.iter_num, unit="it", dynamic_ncols=True)
    write = bar.write if bar is not None else print

    def log(record, text):
        if run.master:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            write(text)

    def train_batch():
        return s.datasets["train"].get_batch(cfg.batch_size, cfg.block_size, run.device)

    t0 = time.time()
    running_mfu, last_losses, local_iter = None, {}, 0
    while True:
        lr = get_lr(s.iter_num, cfg)
        for group in s.optimizer.param_groups:
            group["lr"] = lr

        # evaluate and checkpoint (not again at the iteration a resume starts from: it was
        # done before the checkpoint was written, and redoing it would shift the RNG stream)
        redo = s.iter_num == s.resumed_at and not cfg.eval_only
        if (s.iter_num % cfg.eval_interval == 0 or cfg.eval_only) and not redo:
            last_losses = evaluate(cfg, run, s, log)
            if last_losses["val"] < s.best_val_loss or cfg.always_save_checkpoint:
                s.best_val_loss = min(s.best_val_loss, last_losses["val"])
                if s.iter_num > 0:
                    gckpt.save(out_dir, s.raw_model, s.optimizer, s.scaler, s.model_args,
                               cfg.to_dict(), s.iter_num, s.best_val_loss, run)
            if s.iter_num > 0 and not cfg.eval_only and cfg.plot and run.master:
                plot_losses(metrics_path, out_dir / "loss.png")  # an interrupted run keeps its curve
        if cfg.eval_only or s.iter_num >= cfg.max_iters:
            break

        loss = forward_backward(s.model, train_batch, s.accum, s.autocast_ctx, s.scaler,
                                run.parallel)
        if cfg.grad_clip > 0:
            s.scaler.unscale_(s.optimizer)
            torch.nn.utils.clip_grad_norm_(s.raw_model.parameters(), cfg.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)

        s.iter_num += 1
        local_iter += 1
        if bar is not None:
            bar.update(1)
        if s.iter_num % cfg.log_interval == 0 and run.master:
            lossf = loss.item()  # the only host sync of a logged step
            if run.device_type == "cuda":
                torch.cuda.synchronize()  # the clock must see the GPU's work finished
            t1 = time.time()
            dt = (t1 - t0) / min(cfg.log_interval, local_iter)
            t0 = t1
            mfu = s.raw_model.estimate_mfu(tokens_per_iter, dt, peak, cfg.block_size)
            if mfu is not None and local_iter > cfg.log_interval:  # skip the warm-up window
                running_mfu = mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu
            mfu_text = f"{running_mfu * 100:.1f}%" if running_mfu is not None else "n/a"
            log({"iter": s.iter_num, "loss": lossf, "lr": lr, "ms_per_iter": dt * 1e3,
                 "tokens_per_sec": tokens_per_iter / dt, "mfu": running_mfu},
                f"iter {s.iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1e3:.1f} ms/iter, "
                f"{tokens_per_iter / dt:,.0f} tok/s, mfu {mfu_text}")

    if bar is not None:
        bar.close()
    summary = {"iter_num": s.iter_num, "best_val_loss": s.best_val_loss, "out_dir": str(out_dir),
               "data_dir": str(s.data_dir), **{f"{k}_loss": v for k, v in last_losses.items()}}
    if run.master:
        metrics.close()
        if not cfg.eval_only and local_iter and cfg.plot:
            plot_losses(metrics_path, out_dir / "loss.png")
            print(f"loss curve: {out_dir / 'loss.png'}")
    # samples: under FSDP every process runs the model (same seed, in lockstep), one prints
    if not cfg.eval_only and cfg.num_samples > 0 and cfg.sample_tokens > 0 and (
            run.master or run.parallel == "fsdp"):
        if run.parallel == "fsdp":
            torch.manual_seed(cfg.seed)
        samples = print_samples(s.raw_model, s.tokenizer, cfg, run.device, s.autocast_ctx,
                                echo=run.master)
        if run.master:
            summary["samples"] = samples
    return summary


def evaluate(cfg, run, s, log):
    """Losses of both splits (every process evaluates: FSDP needs them all for a forward;
    the losses are averaged) and a short sample, logged; returns {"train": ..., "val": ...}."""
    losses = estimate_loss(s.raw_model, s.datasets, cfg, run.device, s.autocast_ctx,
                           run.distributed)
    record = {"iter": s.iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}
    text = f"step {s.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
    if cfg.eval_sample_tokens and (run.master or run.parallel == "fsdp"):
        # its own generator (the same on every FSDP process, which all run the model): the
        # training RNG stream, and so resuming, is untouched by sampling
        gen = torch.Generator(device=run.device).manual_seed(cfg.seed + s.iter_num)
        record["sample"] = sample_text(s.raw_model, s.tokenizer, cfg.eval_sample_tokens,
                                       run.device, s.autocast_ctx, gen)
        text += "\n  sample: " + record["sample"].replace("\n", "\n  | ")
    log(record, text)
    return losses
