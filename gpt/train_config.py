"""What a training run is: its options, declared once as the typed `TrainConfig`, and the
checks that a run can start.

Each field of `TrainConfig` is also a command-line option of `train.py`: its default, its
one-line help and its bounds are written once, on the field, and `OPTIONS` (the grouped
`gpt.cli.Opt` table that `gpt.cli.parse` and `--help` read) is derived from the fields::

    cfg = TrainConfig(dataset="input.txt", max_iters=100)    # typed: cfg.max_iters
    cfg = as_config({**DEFAULTS, "max_iters": 100})          # from a dict, as callers had it
    check_config(cfg)                                        # UsageError before anything runs

The defaults are a small character-level model that trains on a laptop CPU in a few minutes
(nanoGPT's "small CPU" Shakespeare recipe).
"""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from gpt import checkpoint as gckpt
from gpt.cli import Opt, check, defaults
from gpt.errors import UsageError
from gpt.events import data as events
from gpt.hardware import cpu_has_bf16
from gpt.pretrained import HF_NAMES

__all__ = ["TrainConfig", "OPTIONS", "DEFAULTS", "DATASETS", "as_config", "check_config",
           "dataset_source", "is_pretrained", "resolve_device_and_dtype"]


def option(group, default, help, **checks):
    """A TrainConfig field that is also the command-line option --name=value: its `group` in
    --help, its default (whose type is the option's type), help text and checks
    (`choices`, bounds `ge`/`gt`/`le`/`lt`, as gpt.cli.Opt)."""
    return field(default=default, metadata={"group": group,
                                            "opt": Opt(default, help, **checks)})


@dataclass
class TrainConfig:
    """Every option of a training run (`python train.py --help` lists them by group)."""

    # data
    dataset: str = option("data", "shakespeare_char", "a named dataset (shakespeare_char, "
                          "shakespeare, tinyshakespeare), a path to a text file / folder of "
                          ".txt files, or patient timelines: synthetic_ehr or meds:<MEDS folder>")
    tokenizer: str = option("data", "", "char | bpe | gpt2; empty: the dataset's default (char)",
                            choices=("", "char", "bpe", "gpt2"))
    bpe_vocab_size: int = option("data", 1024, "vocabulary size when --tokenizer=bpe", ge=257)
    gpt2_ranks: str = option("data", "", "GPT-2's ranks file (r50k_base.tiktoken) for "
                             "--tokenizer=gpt2; empty: tiktoken's (downloads once), else a copy "
                             "cached with pip")
    special_tokens: bool = option("data", False, "char/bpe: <PAD> <BOS> <EOS> <UNK>, each "
                                  "document stored as <BOS> text <EOS> (gpt2: text "
                                  "<|endoftext|>); samples stop at <EOS>")
    data_dir: str = option("data", "data", "prepared token files go to "
                           "data_dir/<dataset>-<tokenizer>/")
    batch_size: int = option("data", 12, "sequences per micro-batch, per process", ge=1)
    block_size: int = option("data", 64, "context length in tokens", ge=1)
    gradient_accumulation_steps: int = option("data", 1, "micro-batches per optimizer step "
                                              "(summed over torchrun processes)", ge=1)
    # model
    n_layer: int = option("model", 4, "transformer blocks", ge=1)
    n_head: int = option("model", 4, "attention heads (must divide n_embd)", ge=1)
    n_embd: int = option("model", 128, "width of the residual stream", ge=1)
    dropout: float = option("model", 0.0, "dropout probability (embeddings, attention, "
                            "residuals)", ge=0, lt=1)
    bias: bool = option("model", False, "biases in Linears and LayerNorms (GPT-2 has them; "
                        "nanoGPT's default is no)")
    kernels: str = option("model", "auto", "auto: Triton on CUDA, PyTorch on CPU; or force one",
                          choices=("auto", "triton", "torch"))
    causal: bool = option("model", True, "causal attention mask; False lets each position see "
                          "the future (a lesson: low loss, garbage samples; docs/curriculum.md)")
    # optimizer
    learning_rate: float = option("optimizer", 1e-3, "peak AdamW learning rate", gt=0)
    max_iters: int = option("optimizer", 2000, "optimizer steps in all", ge=0)
    weight_decay: float = option("optimizer", 1e-1, "AdamW weight decay (2-D weights only)",
                                 ge=0)
    beta1: float = option("optimizer", 0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = option("optimizer", 0.99, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = option("optimizer", 1.0, "clip gradients at this global norm; 0 "
                              "disables", ge=0)
    # schedule
    decay_lr: bool = option("schedule", True, "linear warmup then cosine decay; False: "
                            "constant learning_rate")
    warmup_iters: int = option("schedule", 100, "steps of linear warmup", ge=0)
    lr_decay_iters: int = option("schedule", 2000, "step at which the cosine reaches min_lr",
                                 ge=0)
    min_lr: float = option("schedule", 1e-4, "learning rate at the end of the decay", ge=0)
    # I/O
    out_dir: str = option("I/O", "out", "folder for ckpt.pt, tokenizer.json, metrics.jsonl, "
                          "loss.png")
    eval_interval: int = option("I/O", 250, "evaluate (and maybe checkpoint) every this many "
                                "steps", ge=1)
    log_interval: int = option("I/O", 10, "print a log line every this many steps", ge=1)
    eval_iters: int = option("I/O", 20, "batches per split in each evaluation", ge=1)
    eval_only: bool = option("I/O", False, "evaluate once and exit")
    always_save_checkpoint: bool = option("I/O", False, "save at every evaluation, not only "
                                          "when val loss improves")
    init_from: str = option("I/O", "scratch", "scratch, resume (out_dir/ckpt.pt), or fine-tune "
                            "GPT-2: gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded) or a "
                            "local Hugging Face GPT-2 folder; GPT-2's tokenizer, block_size "
                            "crops its context")
    plot: bool = option("I/O", True, "write loss.png at each evaluation and at the end "
                        "(matplotlib: about 1 s of CPU a run)")
    num_samples: int = option("I/O", 2, "samples printed at the end", ge=0)
    sample_tokens: int = option("I/O", 300, "tokens per sample", ge=0)
    eval_sample_tokens: int = option("I/O", 64, "tokens of a short sample at every evaluation, "
                                     "into the log and metrics.jsonl; 0: none", ge=0)
    # system
    device: str = option("system", "auto", "auto (cuda if available), cpu, cuda, cuda:N")
    dtype: str = option("system", "auto", "auto: bf16 on GPUs that have it, else fp16; on a "
                        "CPU bf16 where it has native bf16 (AVX512-BF16/AMX), else fp32", choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = option("system", False, "torch.compile the model")
    fsdp: bool = option("system", False, "shard weights, gradients and AdamW state over the "
                        "torchrun processes (FSDP2; bf16 compute, fp32 master weights and "
                        "reductions) instead of DDP")
    activation_checkpointing: bool = option("system", False, "recompute each block in "
                                            "backward: activation memory of one block instead "
                                            "of all, ~1/3 more compute")
    seed: int = option("system", 1337, "random seed (each torchrun process adds its rank)")
    progress: bool = option("system", True, "progress bar (only when the output is a terminal)")

    def to_dict(self):
        """{name: value}: what a checkpoint stores as its "config"."""
        return asdict(self)


def _options():
    """{group: {name: Opt}} from TrainConfig's fields, in their order."""
    grouped = {}
    for f in fields(TrainConfig):
        opt = f.metadata["opt"]
        # the annotation is what a reader trusts; the default's type is what parse() converts
        # to: a mismatch is a bug in this file, caught at import
        if type(opt.default) is not f.type:
            raise TypeError(f"TrainConfig.{f.name}: annotated {f.type.__name__} but its default "
                            f"{opt.default!r} is a {type(opt.default).__name__}")
        grouped.setdefault(f.metadata["group"], {})[f.name] = opt
    return grouped


OPTIONS = _options()
DEFAULTS = defaults(OPTIONS)

# Named datasets: source for gpt.data.load_text and default tokenizer.
DATASETS = {
    "shakespeare_char": ("shakespeare", "char"),
    "shakespeare": ("shakespeare", "gpt2"),
    "tinyshakespeare": ("tinyshakespeare", "char"),
    "tinyshakespeare_char": ("tinyshakespeare", "char"),
}


def as_config(cfg):
    """A TrainConfig from a TrainConfig or a {name: value} dict (missing names keep their
    defaults). UsageError for an unknown name, a value of the wrong type, outside its choices
    or bounds, as `gpt.cli.parse` gives for a command line."""
    values = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    check(values, OPTIONS)
    # an int is a fine float (learning_rate=1): stored as the float the field says it is
    return TrainConfig(**{k: float(v) if isinstance(DEFAULTS[k], float) else v
                          for k, v in values.items()})


def dataset_source(cfg):
    """(name for the data folder, source for gpt.data, default tokenizer) of --dataset."""
    name = cfg.dataset
    if events.is_event_dataset(name):  # patient timelines: gpt.events tokenizes them
        if cfg.tokenizer:
            raise UsageError(f"--tokenizer={cfg.tokenizer} does not apply to --dataset={name} "
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
    """(device, device_type, dtype name) for --device and --dtype on this machine; under
    torchrun "cuda" is this process's GPU, cuda:<local_rank>."""
    cfg = as_config(cfg)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if device_type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={cfg.device} but CUDA is not available (use --device=cpu)")
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{local_rank}"
    dtype = cfg.dtype
    if dtype == "auto":
        if device_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            # bf16 autocast pays on a CPU only with native bf16 dot products (AVX512-BF16,
            # AMX): there a CPU step is ~1.3x faster at the same loss (docs/training.md)
            dtype = "bfloat16" if cpu_has_bf16() else "float32"
    if dtype == "float16" and device_type != "cuda":
        raise UsageError("--dtype=float16 needs a CUDA device (use bfloat16 or float32 on CPU)")
    return device, device_type, dtype


def is_pretrained(init_from):
    """True when --init_from names GPT-2 weights: a Hub name or a folder with config.json."""
    return init_from in HF_NAMES or (Path(init_from) / "config.json").is_file()


def check_pretrained(cfg):
    """Fine-tuning GPT-2: its tokenizer, a causal model, a context no longer than its own."""
    if cfg.tokenizer not in ("", "gpt2"):
        raise UsageError(f"--init_from={cfg.init_from} fine-tunes GPT-2, which reads GPT-2's "
                         f"tokens: leave --tokenizer empty or gpt2, not {cfg.tokenizer}")
    if events.is_event_dataset(cfg.dataset):
        raise UsageError(f"--init_from={cfg.init_from} fine-tunes a text model; "
                         f"--dataset={cfg.dataset} is patient timelines")
    if not cfg.causal:
        raise UsageError("--causal=False: GPT-2's weights were trained with the causal mask")
    n_positions = 1024
    if cfg.init_from not in HF_NAMES:
        n_positions = json.loads((Path(cfg.init_from) / "config.json").read_text()).get(
            "n_positions", 1024)
    if cfg.block_size > n_positions:
        raise UsageError(f"--block_size={cfg.block_size} is longer than the context of "
                         f"{cfg.init_from} ({n_positions} positions)")


def check_config(cfg):
    """Every mistake a run can know about before it starts, raised as a UsageError before
    anything is written: option types, choices and bounds, combinations, missing inputs, and
    (resume) a run folder whose files are missing or damaged. Returns the TrainConfig."""
    cfg = as_config(cfg)
    if cfg.n_embd % cfg.n_head:
        raise UsageError(f"--n_embd={cfg.n_embd} must be divisible by --n_head={cfg.n_head} "
                         f"(each head gets n_embd / n_head dimensions)")
    dataset_source(cfg)
    _, device_type, _ = resolve_device_and_dtype(cfg)
    if (cfg.kernels == "triton" and device_type == "cpu"
            and os.environ.get("TRITON_INTERPRET") != "1"):
        raise UsageError("--kernels=triton needs a CUDA device; on a CPU use --kernels=auto/torch, "
                         "or TRITON_INTERPRET=1 to run the Triton kernels in Triton's interpreter")
    if cfg.fsdp:
        if int(os.environ.get("WORLD_SIZE", -1)) == -1:
            raise UsageError("--fsdp=True shards over torchrun's processes: launch it as "
                             "torchrun --nproc_per_node=N train.py --fsdp=True ...")
        if cfg.dtype == "float16":
            raise UsageError("--fsdp=True computes in bfloat16 or float32; --dtype=float16 "
                             "needs the loss scaler of the DDP path (drop --fsdp or pick "
                             "--dtype=bfloat16)")
    if is_pretrained(cfg.init_from):
        check_pretrained(cfg)
    elif cfg.init_from not in ("scratch", "resume"):
        raise UsageError(f"--init_from={cfg.init_from!r} is none of scratch, resume, "
                         f"{', '.join(HF_NAMES)} nor a Hugging Face GPT-2 folder (config.json)")
    if cfg.init_from == "resume":
        gckpt.check_resumable(cfg.out_dir, sharded=cfg.fsdp)
    return cfg
