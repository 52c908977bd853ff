"""Train a GPT. One process:

    python train.py                                   # small char-level GPT on the embedded Shakespeare
    python train.py --dataset=tinyshakespeare --compile=True
    python train.py config/train_shakespeare_char.py --max_iters=1000

Several processes on one or more machines (DDP; NCCL on GPUs, Gloo on CPUs):

    torchrun --standalone --nproc_per_node=8 train.py --gradient_accumulation_steps=40

Every default below can be overridden as --name=value (nanoGPT's names); unknown names and
values of the wrong type are errors.
"""

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gpt_kernels
from gpt import checkpoint as gckpt
from gpt import data as gdata
from gpt.events import data as events
from gpt.cli import Opt, UsageError, check, defaults, parse, run_main
from gpt.files import atomic_path
from gpt.hardware import DTYPES, GPUS, peak_bf16_flops
from gpt.model import GPT, GPTConfig
from gpt.pretrained import HF_NAMES

# -----------------------------------------------------------------------------
# Options and their defaults: a small character-level model that trains on a laptop CPU in a
# few minutes (nanoGPT's "small CPU" Shakespeare recipe). `python train.py --help` lists them.
OPTIONS = {
    "data": dict(
        dataset=Opt("shakespeare_char", "a named dataset (shakespeare_char, shakespeare, "
                    "tinyshakespeare), a path to a text file / folder of .txt files, or patient "
                    "timelines: synthetic_ehr or meds:<MEDS folder>"),
        tokenizer=Opt("", "char | bpe | gpt2; empty: the dataset's default (char)",
                      choices=("", "char", "bpe", "gpt2")),
        bpe_vocab_size=Opt(1024, "vocabulary size when --tokenizer=bpe", ge=257),
        gpt2_ranks=Opt("", "GPT-2's ranks file (r50k_base.tiktoken) for --tokenizer=gpt2; "
                       "empty: tiktoken's (downloads once), else a copy cached with pip"),
        special_tokens=Opt(False, "char/bpe: <PAD> <BOS> <EOS> <UNK>, each document stored as "
                           "<BOS> text <EOS> (gpt2: text <|endoftext|>); samples stop at <EOS>"),
        data_dir=Opt("data", "prepared token files go to data_dir/<dataset>-<tokenizer>/"),
        batch_size=Opt(12, "sequences per micro-batch, per process", ge=1),
        block_size=Opt(64, "context length in tokens", ge=1),
        gradient_accumulation_steps=Opt(1, "micro-batches per optimizer step (summed over "
                                        "torchrun processes)", ge=1),
    ),
    "model": dict(
        n_layer=Opt(4, "transformer blocks", ge=1),
        n_head=Opt(4, "attention heads (must divide n_embd)", ge=1),
        n_embd=Opt(128, "width of the residual stream", ge=1),
        dropout=Opt(0.0, "dropout probability (embeddings, attention, residuals)", ge=0, lt=1),
        bias=Opt(False, "biases in Linears and LayerNorms (GPT-2 has them; nanoGPT's "
                 "default is no)"),
        kernels=Opt("auto", "auto: Triton on CUDA, PyTorch on CPU; or force one",
                    choices=("auto", "triton", "torch")),
        causal=Opt(True, "causal attention mask; False lets each position see the future "
                   "(a lesson: low loss, garbage samples; docs/curriculum.md)"),
    ),
    "optimizer": dict(
        learning_rate=Opt(1e-3, "peak AdamW learning rate", gt=0),
        max_iters=Opt(2000, "optimizer steps in all", ge=0),
        weight_decay=Opt(1e-1, "AdamW weight decay (2-D weights only)", ge=0),
        beta1=Opt(0.9, "AdamW beta1", ge=0, lt=1),
        beta2=Opt(0.99, "AdamW beta2", ge=0, lt=1),
        grad_clip=Opt(1.0, "clip gradients at this global norm; 0 disables", ge=0),
    ),
    "schedule": dict(
        decay_lr=Opt(True, "linear warmup then cosine decay; False: constant learning_rate"),
        warmup_iters=Opt(100, "steps of linear warmup", ge=0),
        lr_decay_iters=Opt(2000, "step at which the cosine reaches min_lr", ge=0),
        min_lr=Opt(1e-4, "learning rate at the end of the decay", ge=0),
    ),
    "I/O": dict(
        out_dir=Opt("out", "folder for ckpt.pt, tokenizer.json, metrics.jsonl, loss.png"),
        eval_interval=Opt(250, "evaluate (and maybe checkpoint) every this many steps", ge=1),
        log_interval=Opt(10, "print a log line every this many steps", ge=1),
        eval_iters=Opt(20, "batches per split in each evaluation", ge=1),
        eval_only=Opt(False, "evaluate once and exit"),
        always_save_checkpoint=Opt(False, "save at every evaluation, not only when val "
                                   "loss improves"),
        init_from=Opt("scratch", "scratch, resume (out_dir/ckpt.pt), or fine-tune GPT-2: gpt2, "
                      "gpt2-medium, gpt2-large, gpt2-xl (downloaded) or a local Hugging Face "
                      "GPT-2 folder; GPT-2's tokenizer, block_size crops its context"),
        plot=Opt(True, "write loss.png at each evaluation and at the end (matplotlib: about "
                 "1 s of CPU a run)"),
        num_samples=Opt(2, "samples printed at the end", ge=0),
        sample_tokens=Opt(300, "tokens per sample", ge=0),
        eval_sample_tokens=Opt(64, "tokens of a short sample at every evaluation, into the log "
                               "and metrics.jsonl; 0: none", ge=0),
    ),
    "system": dict(
        device=Opt("auto", "auto (cuda if available), cpu, cuda, cuda:N"),
        dtype=Opt("auto", "auto: bf16 on GPUs that have it, else fp16; fp32 on CPU",
                  choices=("auto", "float32", "bfloat16", "float16")),
        compile=Opt(False, "torch.compile the model"),
        fsdp=Opt(False, "shard weights, gradients and AdamW state over the torchrun processes "
                 "(FSDP2; bf16 compute, fp32 master weights and reductions) instead of DDP"),
        activation_checkpointing=Opt(False, "recompute each block in backward: activation "
                                     "memory of one block instead of all, ~1/3 more compute"),
        seed=Opt(1337, "random seed (each torchrun process adds its rank)"),
        progress=Opt(True, "progress bar (only when the output is a terminal)"),
    ),
}
DEFAULTS = defaults(OPTIONS)

# Peak dense bf16 tensor-core FLOP/s from the vendors' datasheets, for the MFU estimate.
PEAK_BF16_FLOPS = {name: gpu.bf16_flops for name, gpu in GPUS.items()}

# Named datasets: source for gpt.data.load_text and default tokenizer.
DATASETS = {
    "shakespeare_char": ("shakespeare", "char"),
    "shakespeare": ("shakespeare", "gpt2"),
    "tinyshakespeare": ("tinyshakespeare", "char"),
    "tinyshakespeare_char": ("tinyshakespeare", "char"),
}


def get_lr(it, cfg):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if it > cfg["lr_decay_iters"]:
        return cfg["min_lr"]
    ratio = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg["min_lr"] + coeff * (cfg["learning_rate"] - cfg["min_lr"])


def dataset_source(cfg):
    """(name for the data folder, source for gpt.data, default tokenizer) of --dataset."""
    name = cfg["dataset"]
    if events.is_event_dataset(name):  # patient timelines: gpt.events tokenizes them
        if cfg["tokenizer"]:
            raise UsageError(f"--tokenizer={cfg['tokenizer']} does not apply to --dataset={name} "
                             f"(event timelines have their own tokenizer; leave it empty)")
        return (*events.dataset_source(name), "events")
    if name in DATASETS:
        return (name, *DATASETS[name])
    path = Path(name)
    if path.exists():
        return path.stem, str(path.resolve()), "char"
    raise UsageError(f"--dataset={name!r} is neither a named dataset ({', '.join(DATASETS)}) "
                     f"nor an existing text file or folder")


def resolve_device_and_dtype(cfg, local_rank=None):
    """(device, device_type, dtype name) for --device and --dtype on this machine."""
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if device_type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={cfg['device']} but CUDA is not available (use --device=cpu)")
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{local_rank}"
    dtype = cfg["dtype"]
    if dtype == "auto":
        if device_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if dtype == "float16" and device_type != "cuda":
        raise UsageError("--dtype=float16 needs a CUDA device (use bfloat16 or float32 on CPU)")
    return device, device_type, dtype


def check_config(cfg):
    """Every mistake a run can know about before it starts, raised as a UsageError before
    anything is written: option types, choices and bounds, combinations, missing inputs."""
    check(cfg, OPTIONS)  # what parse() checks, also for a dict built in Python
    if cfg["n_embd"] % cfg["n_head"]:
        raise UsageError(f"--n_embd={cfg['n_embd']} must be divisible by --n_head={cfg['n_head']} "
                         f"(each head gets n_embd / n_head dimensions)")
    dataset_source(cfg)
    _, device_type, _ = resolve_device_and_dtype(cfg)
    if (cfg["kernels"] == "triton" and device_type == "cpu"
            and os.environ.get("TRITON_INTERPRET") != "1"):
        raise UsageError("--kernels=triton needs a CUDA device; on a CPU use --kernels=auto/torch, "
                         "or TRITON_INTERPRET=1 to run the Triton kernels in Triton's interpreter")
    if cfg["fsdp"]:
        if int(os.environ.get("WORLD_SIZE", -1)) == -1:
            raise UsageError("--fsdp=True shards over torchrun's processes: launch it as "
                             "torchrun --nproc_per_node=N train.py --fsdp=True ...")
        if cfg["dtype"] == "float16":
            raise UsageError("--fsdp=True computes in bfloat16 or float32; --dtype=float16 "
                             "needs the loss scaler of the DDP path (drop --fsdp or pick "
                             "--dtype=bfloat16)")
    if is_pretrained(cfg["init_from"]):
        check_pretrained(cfg)
    elif cfg["init_from"] not in ("scratch", "resume"):
        raise UsageError(f"--init_from={cfg['init_from']!r} is none of scratch, resume, "
                         f"{', '.join(HF_NAMES)} nor a Hugging Face GPT-2 folder (config.json)")
    if cfg["init_from"] == "resume":
        found = gckpt.find(cfg["out_dir"], prefer=gckpt.SHARDED if cfg["fsdp"] else gckpt.PLAIN)
        if found is None:
            raise UsageError(f"--init_from=resume but {cfg['out_dir']} holds no checkpoint "
                             f"({gckpt.PLAIN} or {gckpt.SHARDED}/); train once with "
                             f"--out_dir={cfg['out_dir']} first")
        if cfg["fsdp"] and found[0] == "plain":
            raise UsageError(f"--fsdp=True resumes from a sharded checkpoint, but "
                             f"{cfg['out_dir']} holds only {gckpt.PLAIN}; resume without "
                             f"--fsdp")


def is_pretrained(init_from):
    """True when --init_from names GPT-2 weights: a Hub name or a folder with config.json."""
    return init_from in HF_NAMES or (Path(init_from) / "config.json").is_file()


def check_pretrained(cfg):
    """Fine-tuning GPT-2: its tokenizer, a causal model, a context no longer than its own."""
    if cfg["tokenizer"] not in ("", "gpt2"):
        raise UsageError(f"--init_from={cfg['init_from']} fine-tunes GPT-2, which reads GPT-2's "
                         f"tokens: leave --tokenizer empty or gpt2, not {cfg['tokenizer']}")
    if events.is_event_dataset(cfg["dataset"]):
        raise UsageError(f"--init_from={cfg['init_from']} fine-tunes a text model; "
                         f"--dataset={cfg['dataset']} is patient timelines")
    if not cfg["causal"]:
        raise UsageError("--causal=False: GPT-2's weights were trained with the causal mask")
    if cfg["init_from"] not in HF_NAMES:
        n_positions = json.loads((Path(cfg["init_from"]) / "config.json").read_text()).get(
            "n_positions", 1024)
    else:
        n_positions = 1024
    if cfg["block_size"] > n_positions:
        raise UsageError(f"--block_size={cfg['block_size']} is longer than the context of "
                         f"{cfg['init_from']} ({n_positions} positions)")


def prepare_data(cfg):
    """Tokenize the dataset into data_dir/<name>-<tokenizer>/ once; return that folder."""
    name, source, default_tok = dataset_source(cfg)
    if default_tok == "events":
        return events.prepare(source, Path(cfg["data_dir"]) / f"{name}-events",
                              data_dir=cfg["data_dir"])
    tok = cfg["tokenizer"] or ("gpt2" if is_pretrained(cfg["init_from"]) else default_tok)
    suffix = f"-{cfg['bpe_vocab_size']}" if tok == "bpe" else ""
    suffix += "-special" if cfg["special_tokens"] else ""
    data_dir = Path(cfg["data_dir"]) / f"{name}-{tok}{suffix}"
    gdata.prepare(source, data_dir, tokenizer=tok,
                  vocab_size=cfg["bpe_vocab_size"] if tok == "bpe" else None,
                  ranks_path=cfg["gpt2_ranks"] or None, special_tokens=cfg["special_tokens"])
    return data_dir


def peak_flops(device_type, dtype):
    if device_type != "cuda" or dtype == "float32":
        return None  # no meaningful tensor-core peak for CPUs or plain fp32
    return peak_bf16_flops(torch.cuda.get_device_name())


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
        losses = torch.zeros(cfg["eval_iters"], device=device)
        for k in range(cfg["eval_iters"]):
            x, y = ds.get_batch(cfg["batch_size"], cfg["block_size"], device)
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
    for line in Path(metrics_path).read_text().splitlines():
        rec = json.loads(line)
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
    for _ in range(cfg["num_samples"]):
        text = sample_text(model, tokenizer, cfg["sample_tokens"], device, autocast_ctx)
        samples.append(text)
        if echo:
            print(text)
            print("---------------")
    return samples


@dataclass
class Run:
    """Where this process runs: torchrun rank and world, device and dtype."""

    distributed: bool
    rank: int
    world_size: int
    device: str
    device_type: str
    dtype: str
    parallel: str = None  # None (one process), "ddp" or "fsdp"

    @property
    def master(self):
        return self.rank == 0


def setup_run(cfg):
    """Join the torchrun process group when launched by torchrun; resolve device and dtype."""
    distributed = int(os.environ.get("RANK", -1)) != -1
    if not distributed:
        return Run(False, 0, 1, *resolve_device_and_dtype(cfg))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if cfg["gradient_accumulation_steps"] % world_size:
        raise UsageError(
            f"--gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be "
            f"divisible by the number of processes ({world_size})")
    device, device_type, dtype = resolve_device_and_dtype(cfg, local_rank)
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Run(True, rank, world_size, device, device_type, dtype,
               parallel="fsdp" if cfg["fsdp"] else "ddp")


def load_data(cfg, run):
    """(data_dir, tokenizer, {"train": ..., "val": ...}); rank 0 tokenizes, the others wait."""
    if run.master:
        data_dir = prepare_data(cfg)
    if run.distributed:
        dist.barrier()
    if not run.master:
        data_dir = prepare_data(cfg)  # finds the prepared files and returns at once
    if events.is_event_dataset(cfg["dataset"]):
        tokenizer, datasets = events.load_splits(data_dir)  # one patient per row, padded
    else:
        tokenizer = gdata.load_data_tokenizer(data_dir)
        datasets = {s: gdata.TokenDataset(data_dir, s) for s in ("train", "val")}
    for split, ds in datasets.items():
        if len(ds) <= cfg["block_size"]:
            raise UsageError(f"--block_size={cfg['block_size']} is too long for {data_dir}: "
                             f"its {split} split holds {len(ds)} tokens")
    return data_dir, tokenizer, datasets


def build_model(cfg, run, vocab_size, saved_args=None):
    """(model, model_args) on run.device, with activation checkpointing and FSDP applied as
    asked. On resume the architecture is the checkpoint's (``saved_args``; kernels and
    dropout may change); its weights come later, with the optimizer's state."""
    model_args = dict(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                      block_size=cfg["block_size"], bias=cfg["bias"], dropout=cfg["dropout"],
                      vocab_size=vocab_size, kernels=cfg["kernels"], causal=cfg["causal"])
    if saved_args is not None:
        for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size"):
            model_args[k] = saved_args[k]
        model_args["causal"] = saved_args.get("causal", True)  # older checkpoints: causal
    if saved_args is None and is_pretrained(cfg["init_from"]):
        # fine-tuning: GPT-2's architecture and weights, its context cropped to block_size
        model = GPT.from_pretrained(cfg["init_from"], ranks_path=cfg["gpt2_ranks"] or None,
                                    kernels=cfg["kernels"], dropout=cfg["dropout"],
                                    block_size=cfg["block_size"])
        if model.config.vocab_size < vocab_size:
            raise UsageError(f"--init_from={cfg['init_from']} has a vocabulary of "
                             f"{model.config.vocab_size} tokens; GPT-2's tokenizer has {vocab_size}")
        model_args = model.config.to_dict()
        model = model.to(run.device)
    else:
        model = GPT(GPTConfig(**model_args)).to(run.device)
    model.activation_checkpointing = cfg["activation_checkpointing"]
    if run.parallel == "fsdp":
        from gpt.parallel import shard

        shard(model, param_dtype=torch.bfloat16 if run.dtype == "bfloat16" else None)
    return model, model_args


# Checkpoint I/O, the one place for plain and sharded checkpoints (gpt/checkpoint.py):
# everything a run needs to continue exactly.

def save_checkpoint(out_dir, model, optimizer, scaler, model_args, cfg, iter_num, best_val_loss,
                    run):
    """ckpt.pt from the master process, or (FSDP) the sharded ckpt/ folder from every one."""
    if run.parallel == "fsdp":
        meta = dict(model_args=model_args, config=cfg, iter_num=iter_num,
                    best_val_loss=best_val_loss, world_size=run.world_size)
        gckpt.save_sharded(out_dir / gckpt.SHARDED, model, optimizer, meta, run.rank,
                           run.device_type)
    elif run.master:
        gckpt.save_plain(out_dir / gckpt.PLAIN, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "model_args": model_args,
            "config": cfg,
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "rng": gckpt.rng_state(run.device_type),
        })


def open_checkpoint(cfg, run):
    """(kind, path, contents) of the checkpoint to resume from: a plain one is read whole,
    a sharded one only its meta.json (each process reads its shards later)."""
    prefer = gckpt.SHARDED if run.parallel == "fsdp" else gckpt.PLAIN
    kind, path = gckpt.find(cfg["out_dir"], prefer=prefer)
    if kind == "plain":
        return kind, path, torch.load(path, map_location=run.device, weights_only=True)
    return kind, path, gckpt.read_meta(path)


def resume_checkpoint(cfg, opened, model, optimizer, scaler, run):
    """Load an opened checkpoint into model, optimizer, scaler and the RNGs; returns
    (iter_num, best_val_loss). A sharded one reshards to this run's processes."""
    kind, path, ckpt = opened
    if kind == "sharded":
        _, rng = gckpt.load_sharded(path, model, optimizer, run.rank)
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
    else:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        # one file holds rank 0's generators: the other DDP ranks must not draw its batches
        rng = ckpt["rng"] if run.rank == 0 else None
    if rng is not None:
        gckpt.set_rng_state(rng, run.device_type)
    else:  # a rank the checkpoint did not have (resumed on more processes): a fresh stream
        torch.manual_seed(cfg["seed"] + run.rank + iter_num)
        random.seed(cfg["seed"] + run.rank + iter_num)
    return iter_num, best_val_loss


def train(cfg):
    """Train with the config dict `cfg` (DEFAULTS updated); returns a summary dict.

    A user mistake raises UsageError before anything is written.
    """
    check_config(cfg)
    run = setup_run(cfg)
    try:
        return _train(cfg, run)
    finally:
        if run.distributed:
            dist.destroy_process_group()


def _train(cfg, run):
    out_dir = Path(cfg["out_dir"])
    torch.manual_seed(cfg["seed"] + run.rank)  # different batches on each rank
    random.seed(cfg["seed"] + run.rank)
    if run.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 matmuls on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = DTYPES[run.dtype]
    autocast_ctx = (nullcontext() if run.dtype == "float32"
                    else torch.autocast(device_type=run.device_type, dtype=ptdtype))
    accum = cfg["gradient_accumulation_steps"] // run.world_size

    data_dir, tokenizer, datasets = load_data(cfg, run)
    opened = open_checkpoint(cfg, run) if cfg["init_from"] == "resume" else None
    raw_model, model_args = build_model(cfg, run, tokenizer.vocab_size,
                                        opened[2]["model_args"] if opened else None)
    scaler = torch.amp.GradScaler(run.device_type, enabled=(run.dtype == "float16"))
    optimizer = raw_model.configure_optimizers(
        cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), run.device_type
    )
    iter_num, best_val_loss, resumed_at = 0, float("inf"), None
    if opened is not None:
        iter_num, best_val_loss = resume_checkpoint(cfg, opened, raw_model, optimizer, scaler, run)
        resumed_at = iter_num
        opened = None  # free a plain checkpoint's memory

    model = torch.compile(raw_model) if cfg["compile"] else raw_model
    if run.parallel == "ddp":
        model = DDP(model, device_ids=[run.device] if run.device_type == "cuda" else None)

    tokens_per_iter = accum * run.world_size * cfg["batch_size"] * cfg["block_size"]
    peak = peak_flops(run.device_type, run.dtype)
    metrics_path = out_dir / "metrics.jsonl"
    metrics = None
    if run.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir / "tokenizer.json")  # so gpt.sample needs only out_dir
        metrics = open(metrics_path, "a" if resumed_at is not None else "w")
        print(f"model: {raw_model.num_params() / 1e6:.2f}M parameters, kernels={cfg['kernels']}, "
              f"device={run.device}, dtype={run.dtype}, processes={run.world_size}")
        print(f"data: {data_dir} (train {len(datasets['train']):,} tokens, "
              f"val {len(datasets['val']):,}), tokens per iteration {tokens_per_iter:,}")

    bar = None
    # a bar only on a terminal: redirected to a file, its \r updates would be one huge line
    if run.master and cfg["progress"] and not cfg["eval_only"] and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg["max_iters"], initial=iter_num, unit="it", dynamic_ncols=True)
    write = bar.write if bar is not None else print

    def log(record, text):
        if run.master:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            write(text)

    def train_batch():
        return datasets["train"].get_batch(cfg["batch_size"], cfg["block_size"], run.device)

    t0 = time.time()
    running_mfu, last_losses, local_iter = None, {}, 0
    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # evaluate and checkpoint (not again at the iteration a resume starts from: it was
        # done before the checkpoint was written, and redoing it would shift the RNG stream)
        redo = iter_num == resumed_at and not cfg["eval_only"]
        if (iter_num % cfg["eval_interval"] == 0 or cfg["eval_only"]) and not redo:
            # every process evaluates (FSDP needs them all for a forward); losses are averaged
            last_losses = estimate_loss(raw_model, datasets, cfg, run.device, autocast_ctx,
                                        run.distributed)
            record = {"iter": iter_num, "train_loss": last_losses["train"],
                      "val_loss": last_losses["val"]}
            text = f"step {iter_num}: train loss {last_losses['train']:.4f}, val loss {last_losses['val']:.4f}"
            if cfg["eval_sample_tokens"] and (run.master or run.parallel == "fsdp"):
                # its own generator (the same on every FSDP process, which all run the model):
                # the training RNG stream, and so resuming, is untouched by sampling
                gen = torch.Generator(device=run.device).manual_seed(cfg["seed"] + iter_num)
                record["sample"] = sample_text(raw_model, tokenizer, cfg["eval_sample_tokens"],
                                               run.device, autocast_ctx, gen)
                text += "\n  sample: " + record["sample"].replace("\n", "\n  | ")
            log(record, text)
            if last_losses["val"] < best_val_loss or cfg["always_save_checkpoint"]:
                best_val_loss = min(best_val_loss, last_losses["val"])
                if iter_num > 0:
                    save_checkpoint(out_dir, raw_model, optimizer, scaler, model_args, cfg,
                                    iter_num, best_val_loss, run)
            if iter_num > 0 and not cfg["eval_only"] and cfg["plot"] and run.master:
                plot_losses(metrics_path, out_dir / "loss.png")  # an interrupted run keeps its curve
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        loss = forward_backward(model, train_batch, accum, autocast_ctx, scaler, run.parallel)
        if cfg["grad_clip"] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        iter_num += 1
        local_iter += 1
        if bar is not None:
            bar.update(1)
        if iter_num % cfg["log_interval"] == 0 and run.master:
            lossf = loss.item()  # the only host sync of a logged step
            if run.device_type == "cuda":
                torch.cuda.synchronize()  # the clock must see the GPU's work finished
            t1 = time.time()
            dt = (t1 - t0) / min(cfg["log_interval"], local_iter)
            t0 = t1
            mfu = raw_model.estimate_mfu(tokens_per_iter, dt, peak, cfg["block_size"])
            if mfu is not None and local_iter > cfg["log_interval"]:  # skip the warm-up window
                running_mfu = mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu
            mfu_text = f"{running_mfu * 100:.1f}%" if running_mfu is not None else "n/a"
            log({"iter": iter_num, "loss": lossf, "lr": lr, "ms_per_iter": dt * 1e3,
                 "tokens_per_sec": tokens_per_iter / dt, "mfu": running_mfu},
                f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1e3:.1f} ms/iter, "
                f"{tokens_per_iter / dt:,.0f} tok/s, mfu {mfu_text}")

    if bar is not None:
        bar.close()
    summary = {"iter_num": iter_num, "best_val_loss": best_val_loss, "out_dir": str(out_dir),
               "data_dir": str(data_dir), **{f"{k}_loss": v for k, v in last_losses.items()}}
    if run.master:
        metrics.close()
        if not cfg["eval_only"]:
            if local_iter and cfg["plot"]:
                plot_losses(metrics_path, out_dir / "loss.png")
                print(f"loss curve: {out_dir / 'loss.png'}")
    # samples: under FSDP every process runs the model (same seed, in lockstep), one prints
    if not cfg["eval_only"] and cfg["num_samples"] > 0 and cfg["sample_tokens"] > 0 and (
            run.master or run.parallel == "fsdp"):
        if run.parallel == "fsdp":
            torch.manual_seed(cfg["seed"])
        samples = print_samples(raw_model, tokenizer, cfg, run.device, autocast_ctx,
                                echo=run.master)
        if run.master:
            summary["samples"] = samples
    return summary


def main(argv=None):
    return train(parse(argv, OPTIONS, prog="train.py", description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    run_main(main, "train.py")
