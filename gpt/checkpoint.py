"""Checkpoints that survive a crash: one file for a plain run, a sharded folder for FSDP.

    out_dir/ckpt.pt   one process or DDP: torch.save of {"model", "optimizer", "scaler",
                      "model_args", "config", "iter_num", "best_val_loss", "rng"}
    out_dir/ckpt/     FSDP: torch.distributed.checkpoint (DCP) files, each rank writing its
                      own shards of the weights and AdamW state (no full gather on any rank),
                      meta.json (model_args, config, iter_num, best_val_loss) and one
                      rng-rank<r>.pt per rank

Nothing is ever half-written where a resume looks: ``ckpt.pt`` is written to ``ckpt.pt.tmp``
and renamed; the sharded folder is written as ``ckpt.partial/``, its meta.json last, then
swapped in (``ckpt/`` -> ``ckpt.prev/``, ``ckpt.partial/`` -> ``ckpt/``, ``ckpt.prev/``
removed). A crash between the two renames leaves ``ckpt.prev/``, which ``find`` then uses.

A sharded checkpoint loads at any number of processes (DCP reshards on load), with or
without FSDP, and into one process: ``python -m gpt.checkpoint export`` writes it as one
plain ``ckpt.pt`` (for ``gpt.sample``, a plain resume, or ``--hf_dir`` for Hugging Face's
``GPT2LMHeadModel``). ``gpt.sample`` also reads the sharded folder directly.
"""

import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from gpt.cli import Opt, parse, run_main
from gpt.errors import UsageError
from gpt.files import atomic_path

__all__ = ["PLAIN", "SHARDED", "find", "save_plain", "save_sharded", "read_meta",
           "load_sharded", "rng_state", "set_rng_state", "load_for_inference", "export"]

PLAIN = "ckpt.pt"
SHARDED = "ckpt"
META = "meta.json"


def find(out_dir, prefer=PLAIN):
    """(kind, path) of the checkpoint in out_dir ("plain" or "sharded"), or None.

    ``prefer`` picks when both exist: FSDP runs resume from the sharded one, others from
    ckpt.pt. A sharded folder counts only with its meta.json (written last).
    """
    out_dir = Path(out_dir)
    plain = out_dir / PLAIN
    sharded = next((d for d in (out_dir / SHARDED, out_dir / f"{SHARDED}.prev")
                    if (d / META).is_file()), None)
    found = {"plain": plain if plain.is_file() else None, "sharded": sharded}
    order = ("sharded", "plain") if prefer == SHARDED else ("plain", "sharded")
    return next(((kind, found[kind]) for kind in order if found[kind] is not None), None)


# ----------------------------------------------------------------------------- RNG

def rng_state(device_type):
    """The generators a run draws batches and dropout from, to continue exactly."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None,
            "python": random.getstate()}


def set_rng_state(state, device_type):
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if device_type == "cuda" and cuda is not None:
        if isinstance(cuda, (list, tuple)):  # checkpoints of earlier versions: every device
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            torch.cuda.set_rng_state(cuda.cpu())
    random.setstate(state["python"])


# ----------------------------------------------------------------------------- plain

def save_plain(path, state):
    """torch.save to a temporary file, then rename: a crash never loses the last checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ----------------------------------------------------------------------------- sharded

def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_sharded(folder, model, optimizer, meta, rank, device_type):
    """Every rank writes its shards (DCP) and its RNG state; rank 0 writes meta.json last and
    swaps the folder into place. Collective: every rank must call it."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    previous = folder.with_name(folder.name + ".prev")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    dcp.save(_state_dicts(model, optimizer), checkpoint_id=str(partial))
    torch.save(rng_state(device_type), partial / f"rng-rank{rank}.pt")
    _barrier()
    if rank == 0:
        (partial / META).write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(folder, previous)
        os.replace(partial, folder)
        shutil.rmtree(previous, ignore_errors=True)
    _barrier()


def read_meta(folder):
    """A sharded checkpoint's meta.json: model_args, config, iter_num, best_val_loss."""
    return json.loads((Path(folder) / META).read_text())


def load_sharded(folder, model, optimizer=None, rank=0):
    """Load a sharded checkpoint into model (FSDP or plain) and optimizer, resharding to
    this run's processes. Returns (meta dict, this rank's RNG state or None)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         set_model_state_dict, set_state_dict)

    folder = Path(folder)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(model, state["model"])
    else:
        state = _state_dicts(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
    meta = read_meta(folder)
    rng_path = folder / f"rng-rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.is_file() else None
    return meta, rng


# ----------------------------------------------------------------------------- consumers

def load_for_inference(out_dir, device="cpu", **overrides):
    """(model in eval mode, model_args, iter_num) from out_dir's checkpoint, plain or sharded."""
    from gpt.model import GPT, GPTConfig

    found = find(out_dir)
    if found is None:
        raise UsageError(f"no checkpoint in {out_dir} ({PLAIN} or {SHARDED}/): train with "
                         f"train.py --out_dir={out_dir} first")
    kind, path = found
    if kind == "plain":
        # weights_only: a checkpoint someone hands you cannot run code when loaded
        ckpt = torch.load(path, map_location=device, weights_only=True)
        model_args, iter_num = ckpt["model_args"], ckpt["iter_num"]
    else:
        meta = read_meta(path)
        model_args, iter_num = meta["model_args"], meta["iter_num"]
    model = GPT(GPTConfig(**{**model_args, **overrides, "dropout": 0.0}))
    if kind == "plain":
        model.load_state_dict(ckpt["model"])
    else:
        load_sharded(path, model)
    return model.to(device).eval(), model_args, iter_num


def export(out_dir, to=None, hf_dir=None):
    """A sharded checkpoint as one plain ckpt.pt (model, AdamW state, iteration: a plain
    run resumes from it, gpt.sample reads it); optionally also a Hugging Face folder."""
    from gpt.model import GPT, GPTConfig

    found = find(out_dir, prefer=SHARDED)
    if found is None:
        raise UsageError(f"--out_dir={out_dir} holds no checkpoint ({PLAIN} or {SHARDED}/)")
    kind, path = found
    if kind == "plain":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    else:
        meta = read_meta(path)
        model = GPT(GPTConfig(**meta["model_args"]))
        optimizer = model.configure_optimizers(meta["config"]["weight_decay"],
                                               meta["config"]["learning_rate"],
                                               (meta["config"]["beta1"], meta["config"]["beta2"]),
                                               "cpu")
        _, rng = load_sharded(path, model, optimizer, rank=0)
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
                "model_args": meta["model_args"], "config": meta["config"],
                "iter_num": meta["iter_num"], "best_val_loss": meta["best_val_loss"],
                "rng": rng if rng is not None else rng_state("cpu")}
    written = []
    if to is not None or kind == "sharded":
        target = Path(to) if to else Path(out_dir) / PLAIN
        save_plain(target, ckpt)
        written.append(str(target))
    if hf_dir:
        model.save_pretrained(hf_dir)
        written.append(str(hf_dir))
    return written


OPTIONS = {
    "export": dict(
        out_dir=Opt("out", "the training run's folder (ckpt.pt or ckpt/)"),
        to=Opt("", "where to write the plain checkpoint; default out_dir/ckpt.pt"),
        hf_dir=Opt("", "also write a Hugging Face GPT-2 folder (config.json + "
                   "model.safetensors) here"),
    ),
}


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m gpt.checkpoint export --out_dir=DIR [--to=PATH] [--hf_dir=DIR]\n\n"
              "export: a (sharded) checkpoint as one plain ckpt.pt, and optionally a Hugging "
              "Face folder")
        if not argv:
            raise UsageError("expected a command: export")
        return None
    if argv[0] != "export":
        raise UsageError(f"unknown command {argv[0]!r}; commands: export")
    cfg = parse(argv[1:], OPTIONS, prog="python -m gpt.checkpoint export")
    for path in export(cfg["out_dir"], cfg["to"] or None, cfg["hf_dir"] or None):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main, "python -m gpt.checkpoint")
