"""Where a training run runs and on what: the torchrun process group, device and dtype, the
tokenized data, the model (with activation checkpointing and FSDP as asked).

    run = setup_run(cfg)                                 # Run(rank, world_size, device, ...)
    data_dir, tokenizer, datasets = load_data(cfg, run)  # {"train": ..., "val": ...}
    model, model_args = build_model(cfg, run, tokenizer.vocab_size)

`cfg` is a `gpt.train_config.TrainConfig` (a dict of options is accepted and checked).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gpt import data as gdata
from gpt.errors import UsageError
from gpt.events import data as events
from gpt.hardware import peak_bf16_flops
from gpt.model import GPT, GPTConfig
from gpt.train_config import as_config, dataset_source, is_pretrained, resolve_device_and_dtype

__all__ = ["Run", "setup_run", "prepare_data", "load_data", "build_model", "peak_flops"]


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
    if cfg.gradient_accumulation_steps % world_size:
        raise UsageError(
            f"--gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be "
            f"divisible by the number of processes ({world_size})")
    device, device_type, dtype = resolve_device_and_dtype(cfg, local_rank)
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Run(True, rank, world_size, device, device_type, dtype,
               parallel="fsdp" if cfg.fsdp else "ddp")


def prepare_data(cfg):
    """Tokenize the dataset into data_dir/<name>-<tokenizer>/ once; return that folder."""
    cfg = as_config(cfg)
    name, source, default_tok = dataset_source(cfg)
    if default_tok == "events":
        return events.prepare(source, Path(cfg.data_dir) / f"{name}-events",
                              data_dir=cfg.data_dir)
    tok = cfg.tokenizer or ("gpt2" if is_pretrained(cfg.init_from) else default_tok)
    suffix = f"-{cfg.bpe_vocab_size}" if tok == "bpe" else ""
    suffix += "-special" if cfg.special_tokens else ""
    data_dir = Path(cfg.data_dir) / f"{name}-{tok}{suffix}"
    gdata.prepare(source, data_dir, tokenizer=tok,
                  vocab_size=cfg.bpe_vocab_size if tok == "bpe" else None,
                  ranks_path=cfg.gpt2_ranks or None, special_tokens=cfg.special_tokens)
    return data_dir


def load_data(cfg, run):
    """(data_dir, tokenizer, {"train": ..., "val": ...}); rank 0 tokenizes, the others wait."""
    if run.master:
        data_dir = prepare_data(cfg)
    if run.distributed:
        dist.barrier()
    if not run.master:
        data_dir = prepare_data(cfg)  # finds the prepared files and returns at once
    if events.is_event_dataset(cfg.dataset):
        tokenizer, datasets = events.load_splits(data_dir)  # one patient per row, padded
    else:
        tokenizer = gdata.load_data_tokenizer(data_dir)
        datasets = {s: gdata.TokenDataset(data_dir, s) for s in ("train", "val")}
    for split, ds in datasets.items():
        if len(ds) <= cfg.block_size:
            raise UsageError(f"--block_size={cfg.block_size} is too long for {data_dir}: "
                             f"its {split} split holds {len(ds)} tokens")
    return data_dir, tokenizer, datasets


def build_model(cfg, run, vocab_size, saved_args=None):
    """(model, model_args) on run.device, with activation checkpointing and FSDP applied as
    asked. On resume the architecture is the checkpoint's (``saved_args``; kernels and
    dropout may change); its weights come later, with the optimizer's state."""
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                      block_size=cfg.block_size, bias=cfg.bias, dropout=cfg.dropout,
                      vocab_size=vocab_size, kernels=cfg.kernels, causal=cfg.causal)
    if saved_args is not None:
        for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size"):
            model_args[k] = saved_args[k]
        model_args["causal"] = saved_args.get("causal", True)  # older checkpoints: causal
    if saved_args is None and is_pretrained(cfg.init_from):
        # fine-tuning: GPT-2's architecture and weights, its context cropped to block_size
        model = GPT.from_pretrained(cfg.init_from, ranks_path=cfg.gpt2_ranks or None,
                                    kernels=cfg.kernels, dropout=cfg.dropout,
                                    block_size=cfg.block_size)
        if model.config.vocab_size < vocab_size:
            raise UsageError(f"--init_from={cfg.init_from} has a vocabulary of "
                             f"{model.config.vocab_size} tokens; GPT-2's tokenizer has {vocab_size}")
        model_args = model.config.to_dict()
        model = model.to(run.device)
    else:
        model = GPT(GPTConfig(**model_args)).to(run.device)
    model.activation_checkpointing = cfg.activation_checkpointing
    if run.parallel == "fsdp":
        from gpt.parallel import shard

        shard(model, param_dtype=torch.bfloat16 if run.dtype == "bfloat16" else None)
    return model, model_args


def peak_flops(device_type, dtype):
    """The GPU's datasheet bf16 FLOP/s for the MFU estimate; None on a CPU or in float32."""
    if device_type != "cuda" or dtype == "float32":
        return None  # no meaningful tensor-core peak for CPUs or plain fp32
    return peak_bf16_flops(torch.cuda.get_device_name())
