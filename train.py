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
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import kernels
from gpt import data as gdata
from gpt.cli import parse_overrides
from gpt.model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# Defaults: a small character-level model that trains on a laptop CPU in a few minutes
# (nanoGPT's "small CPU" Shakespeare recipe).
DEFAULTS = dict(
    # I/O
    out_dir="out",
    eval_interval=250,
    log_interval=10,
    eval_iters=20,
    eval_only=False,  # evaluate once and exit
    always_save_checkpoint=False,  # False: save only when the val loss improves
    init_from="scratch",  # "scratch" or "resume" (from out_dir/ckpt.pt)
    # data
    dataset="shakespeare_char",  # a named dataset, or a path to a text file / folder of .txt
    tokenizer="",  # "char" | "bpe" | "gpt2"; empty: the dataset's default (char)
    bpe_vocab_size=1024,  # vocabulary size when tokenizer=bpe
    gpt2_ranks="",  # optional path to GPT-2's ranks file (r50k_base.tiktoken), for offline use
    data_dir="data",  # prepared token files go to data_dir/<dataset>-<tokenizer>/
    gradient_accumulation_steps=1,  # micro-steps per optimizer step (summed over DDP ranks)
    batch_size=12,  # micro-batch size per process
    block_size=64,
    # model
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    bias=False,  # nanoGPT's default: no biases in Linears/LayerNorms (GPT-2 has them)
    kernels="auto",  # "auto" | "triton" | "torch"
    # AdamW
    learning_rate=1e-3,
    max_iters=2000,
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.99,
    grad_clip=1.0,  # clip gradients at this global norm; 0 disables
    # learning-rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr=True,
    warmup_iters=100,
    lr_decay_iters=2000,
    min_lr=1e-4,
    # system
    device="auto",  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype="auto",  # "float32" | "bfloat16" | "float16"; auto: bf16 on GPUs that have it, else fp16; fp32 on CPU
    compile=False,  # torch.compile the model
    seed=1337,
    progress=True,  # tqdm progress bar
    # samples printed at the end
    num_samples=2,
    sample_tokens=300,
)

# Peak dense bf16 tensor-core FLOP/s from the vendors' datasheets, for the MFU estimate.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

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


def validate_config(cfg):
    positive = ["batch_size", "block_size", "gradient_accumulation_steps", "eval_interval",
                "log_interval", "eval_iters", "n_layer", "n_head", "n_embd", "bpe_vocab_size"]
    for name in positive:
        if cfg[name] <= 0:
            raise ValueError(f"{name} must be > 0, got {cfg[name]}")
    for name in ["max_iters", "warmup_iters", "lr_decay_iters", "num_samples", "sample_tokens"]:
        if cfg[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {cfg[name]}")
    if cfg["learning_rate"] <= 0 or cfg["min_lr"] < 0:
        raise ValueError("learning_rate must be > 0 and min_lr >= 0")
    if cfg["init_from"] not in ("scratch", "resume"):
        raise ValueError(f"init_from must be 'scratch' or 'resume', got {cfg['init_from']!r}")
    if cfg["dtype"] not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto/float32/bfloat16/float16, got {cfg['dtype']!r}")
    if cfg["tokenizer"] not in ("", "char", "bpe", "gpt2"):
        raise ValueError(f"tokenizer must be char, bpe or gpt2, got {cfg['tokenizer']!r}")
    if cfg["kernels"] not in kernels.BACKENDS:
        raise ValueError(f"kernels must be one of {kernels.BACKENDS}, got {cfg['kernels']!r}")


def resolve_device_and_dtype(cfg, local_rank=None):
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{local_rank}"
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={cfg['device']!r} but CUDA is not available")
    dtype = cfg["dtype"]
    if dtype == "auto":
        if device_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if dtype == "float16" and device_type != "cuda":
        raise ValueError("dtype=float16 needs a CUDA device (use bfloat16 or float32 on CPU)")
    return device, device_type, dtype


def prepare_data(cfg):
    """Tokenize the dataset into data_dir/<name>-<tokenizer>/ once; return that folder."""
    name = cfg["dataset"]
    if name in DATASETS:
        source, default_tok = DATASETS[name]
    elif Path(name).exists():
        source, default_tok = str(Path(name).resolve()), "char"
        name = Path(name).stem
    else:
        raise ValueError(
            f"dataset must be one of {sorted(DATASETS)} or an existing text file / folder, got {name!r}"
        )
    tok = cfg["tokenizer"] or default_tok
    suffix = f"-{cfg['bpe_vocab_size']}" if tok == "bpe" else ""
    data_dir = Path(cfg["data_dir"]) / f"{name}-{tok}{suffix}"
    gdata.prepare(source, data_dir, tokenizer=tok,
                  vocab_size=cfg["bpe_vocab_size"] if tok == "bpe" else None,
                  ranks_path=cfg["gpt2_ranks"] or None)
    return data_dir


def peak_flops(device_type, dtype):
    if device_type != "cuda" or dtype == "float32":
        return None  # no meaningful tensor-core peak for CPUs or plain fp32
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def forward_backward(model, get_batch, accum_steps, autocast_ctx, scaler, ddp):
    """Run `accum_steps` micro-steps and leave the summed gradients in the parameters.

    Each micro-loss is divided by accum_steps so the gradients are those of the mean loss over
    the whole (accum_steps x batch) batch, as one big batch would give. Under DDP, gradients
    are all-reduced only on the last micro-step (`no_sync` skips the others: one all-reduce
    per optimizer step instead of one per micro-step). Returns the last micro-step's loss.
    """
    loss = None
    for micro_step in range(accum_steps):
        x, y = get_batch()
        last = micro_step == accum_steps - 1
        sync_ctx = model.no_sync() if (ddp and not last) else nullcontext()
        with sync_ctx:
            with autocast_ctx:
                _, loss = model(x, y)
                loss = loss / accum_steps
            scaler.scale(loss).backward()
    return loss * accum_steps


@torch.no_grad()
def estimate_loss(model, datasets, cfg, device, autocast_ctx):
    """Mean loss over eval_iters random batches of each split."""
    out = {}
    model.eval()
    for split, ds in datasets.items():
        losses = torch.zeros(cfg["eval_iters"])
        for k in range(cfg["eval_iters"]):
            x, y = ds.get_batch(cfg["batch_size"], cfg["block_size"], device)
            with autocast_ctx:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def save_checkpoint(path, state):
    """Write to a temporary file, then rename: a crash mid-write never loses the last checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png_path)


def print_samples(model, tokenizer, cfg, device, autocast_ctx):
    """A few samples from the trained model, started from a newline (or end-of-text)."""
    try:
        start = tokenizer.encode("\n")
    except ValueError:
        start = []
    if not start:
        start = [tokenizer.eot_token if tokenizer.eot_token is not None else 0]
    x = torch.tensor([start], dtype=torch.long, device=device)
    model.eval()
    samples = []
    for _ in range(cfg["num_samples"]):
        with autocast_ctx:
            y = model.generate(x, cfg["sample_tokens"], temperature=0.8, top_k=200)
        text = tokenizer.decode(y[0].tolist())
        samples.append(text)
        print(text)
        print("---------------")
    return samples


def train(cfg):
    """Train with the config dict `cfg` (DEFAULTS updated); returns a summary dict."""
    validate_config(cfg)
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        device, device_type, dtype = resolve_device_and_dtype(cfg, local_rank)
        if device_type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        if cfg["gradient_accumulation_steps"] % world_size:
            raise ValueError(
                f"gradient_accumulation_steps ({cfg['gradient_accumulation_steps']}) must be "
                f"divisible by the number of processes ({world_size})"
            )
        accum = cfg["gradient_accumulation_steps"] // world_size
    else:
        rank, world_size = 0, 1
        device, device_type, dtype = resolve_device_and_dtype(cfg)
        accum = cfg["gradient_accumulation_steps"]
    master = rank == 0
    try:
        return _train(cfg, ddp, rank, world_size, master, device, device_type, dtype, accum)
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(cfg, ddp, rank, world_size, master, device, device_type, dtype, accum):
    out_dir = Path(cfg["out_dir"])
    ckpt_path = out_dir / "ckpt.pt"
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"] + rank)  # different batches on each rank
    random.seed(cfg["seed"] + rank)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 matmuls on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast_ctx = (nullcontext() if dtype == "float32"
                    else torch.autocast(device_type=device_type, dtype=ptdtype))

    # data: rank 0 tokenizes (once), the others wait for it
    if master:
        data_dir = prepare_data(cfg)
    if ddp:
        dist.barrier()
    if not master:
        data_dir = prepare_data(cfg)  # finds the prepared files and returns at once
    tokenizer = gdata.load_data_tokenizer(data_dir)
    if master:
        tokenizer.save(out_dir / "tokenizer.json")  # so gpt.sample needs only out_dir
    datasets = {s: gdata.TokenDataset(data_dir, s) for s in ("train", "val")}

    # model
    model_args = dict(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                      block_size=cfg["block_size"], bias=cfg["bias"], dropout=cfg["dropout"],
                      vocab_size=tokenizer.vocab_size, kernels=cfg["kernels"])
    iter_num, best_val_loss, checkpoint = 0, float("inf"), None
    if cfg["init_from"] == "resume":
        if not ckpt_path.exists():
            raise FileNotFoundError(f"init_from=resume but {ckpt_path} does not exist")
        checkpoint = torch.load(ckpt_path, map_location=device, weights_only=True)
        # the architecture comes from the checkpoint; kernels and dropout may change
        for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size"):
            model_args[k] = checkpoint["model_args"][k]
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    raw_model = GPT(GPTConfig(**model_args))
    if checkpoint is not None:
        raw_model.load_state_dict(checkpoint["model"])
    raw_model.to(device)

    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    optimizer = raw_model.configure_optimizers(
        cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), device_type
    )
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
        if device_type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in checkpoint["rng"]["cuda"]])
        random.setstate(checkpoint["rng"]["python"])
    resumed_at = iter_num if checkpoint is not None else None
    checkpoint = None  # free the memory

    model = torch.compile(raw_model) if cfg["compile"] else raw_model
    if ddp:
        model = DDP(model, device_ids=[device] if device_type == "cuda" else None)

    tokens_per_iter = accum * world_size * cfg["batch_size"] * cfg["block_size"]
    peak = peak_flops(device_type, dtype)
    if master:
        print(f"model: {raw_model.num_params() / 1e6:.2f}M parameters, kernels={cfg['kernels']}, "
              f"device={device}, dtype={dtype}, processes={world_size}")
        print(f"data: {data_dir} (train {len(datasets['train']):,} tokens, "
              f"val {len(datasets['val']):,}), tokens per iteration {tokens_per_iter:,}")
    metrics_path = out_dir / "metrics.jsonl"
    metrics = open(metrics_path, "a" if resumed_at is not None else "w") if master else None

    def log(record, text):
        if master:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            write(text)

    bar = None
    if master and cfg["progress"] and not cfg["eval_only"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg["max_iters"], initial=iter_num, unit="it", dynamic_ncols=True)
    write = bar.write if bar is not None else print

    def train_batch():
        return datasets["train"].get_batch(cfg["batch_size"], cfg["block_size"], device)

    t0 = time.time()
    running_mfu, last_losses, local_iter = None, {}, 0
    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # evaluate and checkpoint (not again at the iteration a resume starts from: it was
        # done before the checkpoint was written, and redoing it would shift the RNG stream)
        redo = iter_num == resumed_at and not cfg["eval_only"]
        if (iter_num % cfg["eval_interval"] == 0 or cfg["eval_only"]) and master and not redo:
            last_losses = estimate_loss(raw_model, datasets, cfg, device, autocast_ctx)
            log({"iter": iter_num, "train_loss": last_losses["train"], "val_loss": last_losses["val"]},
                f"step {iter_num}: train loss {last_losses['train']:.4f}, val loss {last_losses['val']:.4f}")
            if last_losses["val"] < best_val_loss or cfg["always_save_checkpoint"]:
                best_val_loss = min(best_val_loss, last_losses["val"])
                if iter_num > 0:
                    save_checkpoint(ckpt_path, {
                        "model": raw_model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "model_args": model_args,
                        "config": cfg,
                        "iter_num": iter_num,
                        "best_val_loss": best_val_loss,
                        "rng": {
                            "torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if device_type == "cuda" else None,
                            "python": random.getstate(),
                        },
                    })
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        loss = forward_backward(model, train_batch, accum, autocast_ctx, scaler, ddp)
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
        if iter_num % cfg["log_interval"] == 0 and master:
            lossf = loss.item()  # the only host sync of a logged step
            if device_type == "cuda":
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
    if master:
        metrics.close()
        if not cfg["eval_only"]:
            plot_losses(metrics_path, out_dir / "loss.png")
            print(f"loss curve: {out_dir / 'loss.png'}")
            if cfg["num_samples"] > 0 and cfg["sample_tokens"] > 0:
                summary["samples"] = print_samples(raw_model, tokenizer, cfg, device, autocast_ctx)
    return summary


def main(argv=None):
    cfg = parse_overrides(sys.argv[1:] if argv is None else argv, DEFAULTS)
    return train(cfg)


if __name__ == "__main__":
    main()
