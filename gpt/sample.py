"""Sample from a model trained by train.py:

    python -m gpt.sample --out_dir=out --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python -m gpt.sample --out_dir=out --start="ROMEO:" --top_p=0.9 --top_k=0
    python -m gpt.sample --out_dir=out --start="ROMEO:" --greedy=True
    python -m gpt.sample --out_dir=out --start="ROMEO:" --num_beams=4

`--start` is the prompt text, or FILE:path to read it from a file. Greedy decoding and beam
search are deterministic, so they produce one text whatever --num_samples says.
`python -m gpt.sample --help` lists the options.
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from gpt.checkpoint import check_checkpoint, load_checkpoint
from gpt.cli import Opt, UsageError, check, defaults, parse, resolve_device, run_main

PROG = "python -m gpt.sample"
OPTIONS = {
    "checkpoint": dict(
        out_dir=Opt("out", "train.py's output folder (ckpt.pt, tokenizer.json)"),
        kernels=Opt("", "override the checkpoint's kernels setting; empty: keep it",
                    choices=("", "auto", "triton", "torch")),
        device=Opt("auto", "auto (cuda if available), cpu, cuda, cuda:N"),
        dtype=Opt("auto", "auto: bfloat16 on GPUs that have it, else float32",
                  choices=("auto", "float32", "bfloat16", "float16")),
    ),
    "prompt": dict(
        start=Opt("\n", "the prompt text, or FILE:path to read it from a file"),
        num_samples=Opt(3, "continuations to print (1 for greedy and beam search)", ge=1),
        max_new_tokens=Opt(300, "tokens generated per continuation", ge=0),
        stop_at_eot=Opt(False, "stop at the tokenizer's end-of-text token (bpe, gpt2)"),
        seed=Opt(1337, "random seed: the same seed gives the same text"),
    ),
    "decoding": dict(
        temperature=Opt(0.8, "< 1 sharper, > 1 more random (sampling only)", ge=0),
        top_k=Opt(200, "keep the k most likely tokens; 0 keeps all", ge=0),
        top_p=Opt(1.0, "nucleus: keep the most likely tokens up to this probability mass",
                  gt=0, le=1),
        greedy=Opt(False, "argmax decoding (ignores temperature, top_k, top_p)"),
        num_beams=Opt(1, "> 1: beam search with this many beams", ge=1),
        length_penalty=Opt(1.0, "beam search: a beam's score is log p / length ** this"),
        use_cache=Opt(True, "KV cache; False recomputes the whole context every step"),
    ),
}
DEFAULTS = defaults(OPTIONS)


def read_prompt(start):
    """The prompt text of --start (FILE:path reads the file)."""
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UsageError(f"--start=FILE:{path}: no such file")
        start = path.read_text(encoding="utf-8")
    if not start:
        raise UsageError("--start must be a non-empty prompt")
    return start


def encode_prompt(tokenizer, text, block_size, option="start"):
    """Token ids of the prompt; UsageError for characters the tokenizer lacks or a prompt
    longer than the model's context."""
    try:
        ids = tokenizer.encode(text)
    except ValueError as err:
        raise UsageError(f"--{option}: {err}") from None
    if len(ids) > block_size:
        raise UsageError(f"--{option} has {len(ids)} tokens, more than the model's "
                         f"block_size of {block_size}")
    return ids


def is_deterministic(cfg):
    """Greedy decoding and beam search give the same text every time."""
    return cfg["greedy"] or cfg["num_beams"] > 1


def sample(cfg):
    """Generate continuations of cfg["start"]: cfg["num_samples"] of them when sampling, one
    for greedy decoding and beam search. Returns them as strings."""
    check(cfg, OPTIONS)
    if cfg["greedy"] and cfg["num_beams"] > 1:
        raise UsageError("--greedy=True and --num_beams > 1 are different strategies; pick one")
    if not is_deterministic(cfg) and cfg["temperature"] <= 0:
        raise UsageError("--temperature must be > 0 when sampling (or use --greedy=True)")
    device = resolve_device(cfg["device"])
    device_type = torch.device(device).type
    dtype = cfg["dtype"]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    ptdtype = getattr(torch, dtype)
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=ptdtype)
    check_checkpoint(cfg["out_dir"])
    start = read_prompt(cfg["start"])

    overrides = {"kernels": cfg["kernels"]} if cfg["kernels"] else {}
    model, tokenizer = load_checkpoint(cfg["out_dir"], device, **overrides)
    ids = encode_prompt(tokenizer, start, model.config.block_size)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    eos = tokenizer.eot_token if cfg["stop_at_eot"] else None
    if cfg["stop_at_eot"] and eos is None:
        raise UsageError(f"--stop_at_eot: the {tokenizer.name} tokenizer has no end-of-text token")

    torch.manual_seed(cfg["seed"])
    texts = []
    n = 1 if is_deterministic(cfg) else cfg["num_samples"]
    with torch.no_grad(), ctx:
        for _ in range(n):
            y = model.generate(x, cfg["max_new_tokens"], temperature=cfg["temperature"],
                               top_k=cfg["top_k"] or None, top_p=cfg["top_p"],
                               greedy=cfg["greedy"], num_beams=cfg["num_beams"],
                               length_penalty=cfg["length_penalty"], eos_token_id=eos,
                               use_cache=cfg["use_cache"])
            texts.append(tokenizer.decode(y[0].tolist()))
    return texts


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    texts = sample(cfg)
    if is_deterministic(cfg) and cfg["num_samples"] > 1:
        how = "greedy decoding" if cfg["greedy"] else "beam search"
        print(f"({how} is deterministic: one text, not --num_samples={cfg['num_samples']})",
              file=sys.stderr)
    for text in texts:
        print(text)
        print("---------------")
    return texts


if __name__ == "__main__":
    run_main(main, PROG)
