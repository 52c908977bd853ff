"""Everything a run folder holds, read and written in one place: checkpoints that survive a
crash (one file for a plain run, a sharded folder for FSDP), the tokenizer, the metrics log.
One file although over 500 lines: the run folder's format is defined in one place.

    out_dir/ckpt.pt         one process or DDP: torch.save of {"model", "optimizer", "scaler",
                            "model_args", "config", "iter_num", "best_val_loss", "rng"}
    out_dir/ckpt/           FSDP: torch.distributed.checkpoint (DCP) files (.metadata and
                            __<rank>_0.distcp), each rank writing its own shards of the weights
                            and AdamW state (no full gather on any rank), meta.json
                            (model_args, config, iter_num, best_val_loss) and one
                            rng-rank<r>.pt per rank
    out_dir/tokenizer.json  the tokenizer, so that gpt.sample needs only out_dir
    out_dir/metrics.jsonl   one JSON record per log line and per evaluation (a resume appends)
    out_dir/loss.png        the loss curves drawn from metrics.jsonl (written, never read)

The trainer (gpt/trainer.py) calls `save`, `open_for_resume` and `restore`; generation and
the other tools call `load_checkpoint(out_dir, device) -> (model, tokenizer)`.

Nothing is ever half-written where a resume looks: ``ckpt.pt`` is written to a temporary
name and renamed; the sharded folder is written as ``ckpt.partial/``, its meta.json last,
then swapped in (``ckpt/`` -> ``ckpt.prev/``, ``ckpt.partial/`` -> ``ckpt/``, ``ckpt.prev/``
removed). A crash between the two renames leaves ``ckpt.prev/``, which ``find`` then uses.

A file damaged after it was written (a truncated copy, garbage, a pickle that
``torch.load(weights_only=True)`` refuses, a broken tokenizer.json or metrics.jsonl) is the
user's to fix, not a bug: every reader here raises ``UsageError`` with one line naming the
file, what is wrong with it, and any other checkpoint the folder holds.

A sharded checkpoint loads at any number of processes (DCP reshards on load), with or
without FSDP, and into one process: ``python -m gpt.checkpoint export`` writes it as one
plain ``ckpt.pt`` (for a plain resume, or ``--hf_dir`` for Hugging Face's
``GPT2LMHeadModel``). ``gpt.sample`` also reads the sharded folder directly.
"""

import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from gpt.cli import Opt, parse, run_main
from gpt.errors import UsageError
from gpt.files import atomic_path

__all__ = ["PLAIN", "SHARDED", "TOKENIZER", "METRICS", "find", "check_checkpoint",
           "check_resumable", "load_checkpoint", "load_for_inference", "load_plain", "save_plain",
           "save_sharded", "read_meta", "load_sharded", "rng_state", "set_rng_state", "save",
           "open_for_resume", "restore", "save_tokenizer", "load_run_tokenizer", "open_metrics",
           "read_metrics", "export"]

PLAIN = "ckpt.pt"
SHARDED = "ckpt"
META = "meta.json"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"

# What each reader needs of a checkpoint: generation the weights and their shape, a resume
# everything that continues a run exactly.
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
INFERENCE_KEYS = ("model", "model_args", "iter_num")
RESUME_KEYS = INFERENCE_KEYS + ("optimizer", "scaler", "best_val_loss", "rng")
META_KEYS = ("model_args", "config", "iter_num", "best_val_loss")


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


# ----------------------------------------------------------------------------- damage

def _reason(err):
    """One short line of what an exception says about a file: its last non-empty line (DCP's
    CheckpointException carries a whole traceback, the innermost error last; torch.load's
    weights-only error the line after "WeightsUnpickler error:"), first sentence."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error:" in line), None)
    text = lines[marker + 1] if marker is not None and marker + 1 < len(lines) else (
        lines[-1] if lines else "")
    text = text.split(". ")[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    if type(err).__name__ == "CheckpointException":
        return text or "CheckpointException"  # its last line reads "SomeError: what"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _others(damaged):
    """Where else the run folder of a damaged checkpoint (ckpt.pt, or a sharded folder) holds
    a checkpoint, as a clause for the error, e.g. "; out/ckpt.prev/ holds another ..."."""
    damaged = Path(damaged)
    out_dir = damaged.parent
    candidates = [(out_dir / PLAIN, out_dir / PLAIN),
                  (out_dir / SHARDED, out_dir / SHARDED / META),
                  (out_dir / f"{SHARDED}.prev", out_dir / f"{SHARDED}.prev" / META)]
    others = [f"{path}/" if path.name != PLAIN else str(path)
              for path, marker in candidates if marker.is_file() and path != damaged]
    if not others:
        return f"; {out_dir} holds no other checkpoint"
    # find() takes ckpt.pt, then ckpt/, then ckpt.prev/: with the damaged one moved away, it
    # takes the next
    return (f"; {' and '.join(others)} {'holds' if len(others) == 1 else 'hold'} another "
            f"checkpoint (move {damaged.name} away to use it)")


def _torch_load(path, device="cpu", checkpoint=None):
    """torch.load(path, weights_only=True), with every way the file can be damaged as one
    UsageError naming it (and the other checkpoints beside `checkpoint`, the ckpt.pt or
    sharded folder the file belongs to; default the file itself)."""
    path = Path(path)
    where = _others(checkpoint or path)
    try:
        # weights_only: a checkpoint someone hands you cannot run code when loaded
        return torch.load(path, map_location=device, weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.load of a broken file raises OSError,
        # EOFError, KeyError, RuntimeError, UnpicklingError...: each is the file's fault
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and refused:
            raise UsageError(f"{path} holds Python objects that torch.load(weights_only=True) "
                             f"refuses to unpickle ({refused.group(1)}); checkpoints are "
                             f"loaded only as tensors and plain values{where}") from None
        raise UsageError(f"{path} is damaged: truncated or not a PyTorch checkpoint "
                         f"({_reason(err)}){where}") from None


def _require(record, keys, path, what="a train.py checkpoint", checkpoint=None):
    """UsageError naming path unless record is a dict with every key (and model_args the
    keys of a model's shape); `checkpoint` as for _torch_load."""
    where = _others(checkpoint or path)
    if not isinstance(record, dict):
        raise UsageError(f"{path} is not {what}: it holds {type(record).__name__}, not a dict"
                         f"{where}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise UsageError(f"{path} is not {what}: it has no {', '.join(missing)}{where}")
    if "model_args" in keys:
        args = record["model_args"]
        lacking = [k for k in ARCH_KEYS if not isinstance(args, dict) or k not in args]
        if lacking:
            raise UsageError(f"{path} is damaged: its model_args lack {', '.join(lacking)}"
                             f"{where}")
    return record


# ----------------------------------------------------------------------------- finding

def check_checkpoint(out_dir):
    """UsageError unless out_dir holds what train.py writes (ckpt.pt, or the sharded ckpt/
    folder of an FSDP run, and tokenizer.json)."""
    train_first = f"(train first: python train.py --out_dir={out_dir})"
    if find(out_dir) is None:
        raise UsageError(f"--out_dir={out_dir}: no ckpt.pt (or sharded ckpt/) there {train_first}")
    if not (Path(out_dir) / TOKENIZER).is_file():
        raise UsageError(f"--out_dir={out_dir}: no tokenizer.json there {train_first}")


def check_resumable(out_dir, sharded=False):
    """Before a resume writes anything: UsageError unless out_dir holds a checkpoint of the
    kind the run resumes from (``sharded``: an FSDP run), with a readable meta.json and DCP
    .metadata if sharded, and any tokenizer.json and metrics.jsonl readable. (A plain
    ckpt.pt is read whole once, by open_for_resume, still before anything is written.)"""
    found = find(out_dir, prefer=SHARDED if sharded else PLAIN)
    if found is None:
        raise UsageError(f"--init_from=resume but {out_dir} holds no checkpoint "
                         f"({PLAIN} or {SHARDED}/); train once with "
                         f"--out_dir={out_dir} first")
    kind, path = found
    if sharded and kind == "plain":
        raise UsageError(f"--fsdp=True resumes from a sharded checkpoint, but "
                         f"{out_dir} holds only {PLAIN}; resume without --fsdp")
    if kind == "sharded":
        read_meta(path)
        _read_dcp_metadata(path)
    out_dir = Path(out_dir)
    if (out_dir / TOKENIZER).exists():
        _check_tokenizer_file(out_dir / TOKENIZER)
    if (out_dir / METRICS).exists():
        read_metrics(out_dir / METRICS)


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


def load_plain(path, device="cpu", keys=INFERENCE_KEYS):
    """A ckpt.pt as its dict, on `device`, checked to hold `keys` (INFERENCE_KEYS, or
    RESUME_KEYS for a resume); UsageError naming the file when it does not load or lacks one."""
    return _require(_torch_load(path, device), keys, path)


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
    """A sharded checkpoint's meta.json: model_args, config, iter_num, best_val_loss.
    UsageError naming the file when it is not that JSON."""
    folder = Path(folder)
    path = folder / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise UsageError(f"{path} is damaged: not JSON ({_reason(err)}){_others(folder)}") from None
    return _require(meta, META_KEYS, path, what="a sharded checkpoint's meta.json",
                    checkpoint=folder)


def _read_dcp_metadata(folder):
    """DCP's .metadata of a sharded folder, read before dcp.load: on a broken file dcp.load
    logs tracebacks to stderr and raises a BaseException, this raises one UsageError."""
    from torch.distributed.checkpoint import FileSystemReader

    folder = Path(folder)
    try:
        return FileSystemReader(str(folder)).read_metadata()
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - an unreadable .metadata is the file's fault
        raise UsageError(f"{folder / '.metadata'} is damaged: truncated or not DCP metadata "
                         f"({_reason(err)}){_others(folder)}") from None


def load_sharded(folder, model, optimizer=None, rank=0):
    """Load a sharded checkpoint into model (FSDP or plain) and optimizer, resharding to
    this run's processes. Returns (meta dict, this rank's RNG state or None). UsageError
    naming the damaged file when the folder does not load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         set_model_state_dict, set_state_dict)

    folder = Path(folder)
    meta = read_meta(folder)
    _read_dcp_metadata(folder)
    rng_path = folder / f"rng-rank{rank}.pt"
    rng = _torch_load(rng_path, checkpoint=folder) if rng_path.is_file() else None
    try:
        with warnings.catch_warnings():
            # one process reading a sharded folder (gpt.sample, a resume without torchrun) is
            # what is meant: DCP's warning that it assumes so is noise on the user's terminal
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            if optimizer is None:
                state = {"model": get_model_state_dict(model)}
                dcp.load(state, checkpoint_id=str(folder))
                set_model_state_dict(model, state["model"])
            else:
                state = _state_dicts(model, optimizer)
                dcp.load(state, checkpoint_id=str(folder))
                set_state_dict(model, optimizer, model_state_dict=state["model"],
                               optim_state_dict=state["optim"])
    except (CheckpointException, RuntimeError, ValueError, KeyError) as err:
        # CheckpointException (a BaseException) gathers every rank's error: a shard file
        # that does not read, or tensors that do not fit the model meta.json describes
        shards = ", ".join(sorted(p.name for p in folder.glob("*.distcp"))) or "no .distcp files"
        raise UsageError(f"{folder}/ is damaged: its shards ({shards}) do not load into the "
                         f"model of its meta.json ({_reason(err)}){_others(folder)}") from None
    return meta, rng


# ----------------------------------------------------------------------------- training

def save(out_dir, model, optimizer, scaler, model_args, config, iter_num, best_val_loss, run):
    """Everything a run needs to continue exactly: ckpt.pt from the master process, or (FSDP)
    the sharded ckpt/ folder from every one. `config` is the run's options as a dict, `run`
    where this process runs (gpt.run_setup.Run)."""
    out_dir = Path(out_dir)
    if run.parallel == "fsdp":
        meta = dict(model_args=model_args, config=config, iter_num=iter_num,
                    best_val_loss=best_val_loss, world_size=run.world_size)
        save_sharded(out_dir / SHARDED, model, optimizer, meta, run.rank, run.device_type)
    elif run.master:
        save_plain(out_dir / PLAIN, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "model_args": model_args,
            "config": config,
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "rng": rng_state(run.device_type),
        })


def open_for_resume(out_dir, run):
    """(kind, path, contents) of the checkpoint to resume from: a plain one is read whole and
    checked, a sharded one only its meta.json (each process reads its shards in `restore`)."""
    kind, path = find(out_dir, prefer=SHARDED if run.parallel == "fsdp" else PLAIN)
    if kind == "plain":
        return kind, path, load_plain(path, run.device, keys=RESUME_KEYS)
    return kind, path, read_meta(path)


def restore(opened, model, optimizer, scaler, run, seed):
    """Load an opened checkpoint into model, optimizer, scaler and the RNGs; returns
    (iter_num, best_val_loss). A sharded one reshards to this run's processes. A rank the
    checkpoint has no RNG state for draws a fresh stream from `seed`."""
    kind, path, ckpt = opened
    if kind == "sharded":
        _, rng = load_sharded(path, model, optimizer, run.rank)
    else:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{path} is damaged: its weights or optimizer state do not fit "
                             f"the model of its model_args ({_reason(err)}){_others(path)}") from None
        # one file holds rank 0's generators: the other DDP ranks must not draw its batches
        rng = ckpt["rng"] if run.rank == 0 else None
    iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
    if rng is not None:
        try:
            set_rng_state(rng, run.device_type)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{path} is damaged: its random generator states do not load "
                             f"({_reason(err)}){_others(path)}") from None
    else:  # a rank the checkpoint did not have (resumed on more processes): a fresh stream
        torch.manual_seed(seed + run.rank + iter_num)
        random.seed(seed + run.rank + iter_num)
    return iter_num, best_val_loss


# ----------------------------------------------------------------------------- run files

def save_tokenizer(out_dir, tokenizer):
    """out_dir/tokenizer.json (atomically), so that gpt.sample needs only out_dir."""
    tokenizer.save(Path(out_dir) / TOKENIZER)


def load_run_tokenizer(out_dir, hint=""):
    """The tokenizer of out_dir/tokenizer.json; UsageError naming the file when it is not
    one (`hint` ends that message)."""
    from gpt.tokenizer import load_tokenizer

    path = Path(out_dir) / TOKENIZER
    if not path.is_file():
        raise UsageError(f"{path} is missing (train.py writes it beside the checkpoint)")
    try:
        return load_tokenizer(path)
    except UsageError:
        raise  # already a user's error (GPT-2's ranks not on this machine)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        # ValueError covers JSONDecodeError and UnicodeDecodeError (truncated, garbage) and
        # a JSON value that is no tokenizer; Key/Type/AttributeError a dict missing its fields
        reason = _reason(err).replace(f"{path}: ", "")  # load_tokenizer's own names the file
        raise UsageError(f"{path} is damaged: not a tokenizer file ({reason}){hint}") from None


def _check_tokenizer_file(path):
    """For a resume, which writes tokenizer.json again from the prepared data: UsageError when
    the file is damaged. GPT-2's names only its ranks file, a thing of the machine (the resume
    takes GPT-2's tokenizer from the data), so it is read as JSON, not built."""
    hint = "; delete it, and the resumed run writes it again from the data"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is damaged: not a tokenizer file ({_reason(err)}){hint}") from None
    if not (isinstance(record, dict) and record.get("type") == "gpt2"):
        load_run_tokenizer(path.parent, hint)


def open_metrics(out_dir, append):
    """out_dir/metrics.jsonl open for writing one JSON record per line (flushed by the
    writer); `append` on a resume, so the log of the whole run stays in one file."""
    return open(Path(out_dir) / METRICS, "a" if append else "w")


def read_metrics(path):
    """The records of a metrics.jsonl, in order; UsageError naming the file and line when a
    line is not a JSON object."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is damaged: not text ({_reason(err)})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise UsageError(f"{path}:{number} is damaged: not a JSON record of the log "
                             f"(truncated? delete the broken lines, or the file, to go on)")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- consumers

def _model(model_args, path, **overrides):
    """GPT(GPTConfig(**model_args, **overrides)); UsageError naming the checkpoint `path`
    when its model_args do not make one."""
    from gpt.model import GPT, GPTConfig

    try:
        return GPT(GPTConfig(**{**model_args, **overrides}))
    except (TypeError, ValueError) as err:
        raise UsageError(f"{path} is damaged: its model_args do not make a model "
                         f"({_reason(err)}){_others(path)}") from None


def _load_weights(model, state, path):
    """model.load_state_dict(state); UsageError naming the checkpoint `path` when they do
    not fit."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(f"{path} is damaged: its weights do not fit the model of its "
                         f"model_args ({_reason(err)}){_others(path)}") from None


def load_for_inference(out_dir, device="cpu", **overrides):
    """(model in eval mode, model_args, iter_num) from out_dir's checkpoint, plain or sharded;
    `overrides` change GPTConfig fields that do not change the weights (kernels)."""
    found = find(out_dir)
    if found is None:
        raise UsageError(f"no checkpoint in {out_dir} ({PLAIN} or {SHARDED}/): train with "
                         f"train.py --out_dir={out_dir} first")
    kind, path = found
    if kind == "plain":
        ckpt = load_plain(path, device)
        model_args, iter_num = ckpt["model_args"], ckpt["iter_num"]
    else:
        meta = read_meta(path)
        model_args, iter_num = meta["model_args"], meta["iter_num"]
    model = _model(model_args, path, **{**overrides, "dropout": 0.0})
    if kind == "plain":
        _load_weights(model, ckpt["model"], path)
    else:
        load_sharded(path, model)
    return model.to(device).eval(), model_args, iter_num


def load_checkpoint(out_dir, device="cpu", **overrides):
    """(model in eval mode, tokenizer) from train.py's out_dir (ckpt.pt, or the sharded ckpt/
    folder of an FSDP run, and tokenizer.json); UsageError naming any file that is missing
    or damaged."""
    tokenizer = load_run_tokenizer(out_dir)  # first: small, so a broken one fails fast
    model, _, _ = load_for_inference(out_dir, device, **overrides)
    return model, tokenizer


def export(out_dir, to=None, hf_dir=None):
    """A sharded checkpoint as one plain ckpt.pt (model, AdamW state, iteration: a plain
    run resumes from it, gpt.sample reads it); optionally also a Hugging Face folder."""
    found = find(out_dir, prefer=SHARDED)
    if found is None:
        raise UsageError(f"--out_dir={out_dir} holds no checkpoint ({PLAIN} or {SHARDED}/)")
    kind, path = found
    if kind == "plain":
        ckpt = load_plain(path, "cpu")
        model = _model(ckpt["model_args"], path)
        _load_weights(model, ckpt["model"], path)
    else:
        meta = read_meta(path)
        model = _model(meta["model_args"], path)
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
