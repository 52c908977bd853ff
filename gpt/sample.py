"""Sample from a model trained by train.py:

    python -m gpt.sample --out_dir=out --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python -m gpt.sample --out_dir=out --start="ROMEO:" --top_p=0.9 --top_k=0
    python -m gpt.sample --out_dir=out --start="ROMEO:" --greedy=True
    python -m gpt.sample --out_dir=out --start="ROMEO:" --num_beams=4

`--start` is the prompt text, or FILE:path to read it from a file. Options take the
--name=value form; unknown names and wrong types are errors.
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from gpt.checkpoint import load_for_inference
from gpt.cli import parse_overrides
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import load_tokenizer

DEFAULTS = dict(
    out_dir="out",  # folder with ckpt.pt and tokenizer.json from train.py
    start="\n",  # prompt, or FILE:path
    num_samples=3,
    max_new_tokens=300,
    temperature=0.8,  # < 1 sharper, > 1 more random
    top_k=200,  # keep the k most likely tokens; 0 keeps all
    top_p=1.0,  # nucleus sampling: keep the most likely tokens up to this total probability
    greedy=False,  # argmax decoding (ignores temperature, top_k, top_p)
    num_beams=1,  # > 1: beam search
    length_penalty=1.0,  # beam search: score / length ** length_penalty
    stop_at_eot=False,  # stop a sample at the tokenizer's end-of-text token (BPE / GPT-2)
    use_cache=True,  # KV cache (False recomputes the whole context every step)
    seed=1337,
    device="auto",
    dtype="auto",  # float32 on CPU, bfloat16 on GPUs that have it
    kernels="",  # override the checkpoint's kernels setting ("auto" | "triton" | "torch")
)


def load_checkpoint(out_dir, device="cpu", **overrides):
    """Return (model in eval mode, tokenizer) from train.py's out_dir (ckpt.pt, or the sharded
    ckpt/ folder of an FSDP run)."""
    model, _, _ = load_for_inference(out_dir, device, **overrides)
    return model, load_tokenizer(Path(out_dir) / "tokenizer.json")


def sample(cfg):
    """Generate cfg["num_samples"] continuations of cfg["start"]; return them as strings."""
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = cfg["dtype"]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if cfg["num_samples"] < 1 or cfg["max_new_tokens"] < 0:
        raise ValueError("num_samples must be >= 1 and max_new_tokens >= 0")
    ptdtype = getattr(torch, dtype)
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=ptdtype)

    overrides = {"kernels": cfg["kernels"]} if cfg["kernels"] else {}
    model, tokenizer = load_checkpoint(cfg["out_dir"], device, **overrides)
    start = cfg["start"]
    if start.startswith("FILE:"):
        start = Path(start[5:]).read_text(encoding="utf-8")
    if not start:
        raise ValueError("start must be a non-empty prompt")
    ids = tokenizer.encode(start)  # raises ValueError for characters outside the vocabulary
    x = torch.tensor([ids], dtype=torch.long, device=device)
    eos = tokenizer.eot_token if cfg["stop_at_eot"] else None
    if cfg["stop_at_eot"] and eos is None:
        raise ValueError(f"stop_at_eot: the {tokenizer.name} tokenizer has no end-of-text token")

    torch.manual_seed(cfg["seed"])
    texts = []
    with torch.no_grad(), ctx:
        for _ in range(cfg["num_samples"]):
            y = model.generate(x, cfg["max_new_tokens"], temperature=cfg["temperature"],
                               top_k=cfg["top_k"] or None, top_p=cfg["top_p"],
                               greedy=cfg["greedy"], num_beams=cfg["num_beams"],
                               length_penalty=cfg["length_penalty"], eos_token_id=eos,
                               use_cache=cfg["use_cache"])
            texts.append(tokenizer.decode(y[0].tolist()))
    return texts


def main(argv=None):
    cfg = parse_overrides(sys.argv[1:] if argv is None else argv, DEFAULTS)
    for text in sample(cfg):
        print(text)
        print("---------------")


if __name__ == "__main__":
    main()
