"""Generation speed with and without the KV cache.

    python -m bench.generate                       # GPT-2 small shape on CUDA, a smaller model on CPU
    python -m bench.generate --preset=gpt2 --new_tokens=512 --device=cpu

Random weights (speed does not depend on them), greedy decoding, batch of `batch` prompts of
`prompt` tokens, `new_tokens` new tokens. Each path runs `repeats` times after a warm-up;
the median is reported, with the speed-up of the cache, and written as JSON to
bench/results/generate-<device>-<date>.json (--out= to change).
"""

import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from gpt.cli import parse_overrides
from gpt.model import GPT, GPTConfig

DEFAULTS = dict(
    preset="",  # a GPTConfig preset; default: gpt2 on CUDA, shakespeare-char (6x384) on CPU
    vocab_size=50304,
    block_size=1024,
    prompt=16,
    new_tokens=256,
    batch=1,
    repeats=3,
    device="auto",
    dtype="auto",  # bfloat16 on CUDA, float32 on CPU
    kernels="auto",
    out="",
)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_generate(model, idx, new_tokens, use_cache, repeats, device, ctx):
    times = []
    for i in range(repeats + 1):  # the first run warms up (allocations, kernel compiles)
        _sync(device)
        t0 = time.perf_counter()
        with ctx:
            out = model.generate(idx, new_tokens, greedy=True, use_cache=use_cache)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None):
    cfg = parse_overrides(sys.argv[1:] if argv is None else argv, DEFAULTS)
    device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.startswith("cuda")
    preset = cfg["preset"] or ("gpt2" if on_cuda else "shakespeare-char")
    dtype = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if on_cuda else "float32")
    if cfg["prompt"] + cfg["new_tokens"] > cfg["block_size"]:
        raise ValueError("prompt + new_tokens must fit in block_size (the benchmark times the cache, "
                         "not the sliding window)")
    mcfg = GPTConfig.from_preset(preset, vocab_size=cfg["vocab_size"], block_size=cfg["block_size"],
                                 dropout=0.0, kernels=cfg["kernels"])
    torch.manual_seed(0)
    model = GPT(mcfg).to(device).eval()
    idx = torch.randint(0, mcfg.vocab_size, (cfg["batch"], cfg["prompt"]), device=device)
    ctx = (torch.autocast("cuda" if on_cuda else "cpu", dtype=getattr(torch, dtype))
           if dtype != "float32" else torch.no_grad())
    with torch.no_grad():
        t_cache, out_cache = time_generate(model, idx, cfg["new_tokens"], True, cfg["repeats"], device, ctx)
        t_full, out_full = time_generate(model, idx, cfg["new_tokens"], False, cfg["repeats"], device, ctx)
    n = cfg["batch"] * cfg["new_tokens"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = dict(
        benchmark="generate", date=date.today().isoformat(), device=device_name(device),
        torch=torch.__version__, commit=commit, preset=preset, n_params=model.num_params(),
        dtype=dtype, kernels=cfg["kernels"], batch=cfg["batch"], prompt=cfg["prompt"],
        new_tokens=cfg["new_tokens"], repeats=cfg["repeats"],
        with_cache=dict(seconds=t_cache, tokens_per_sec=n / t_cache),
        without_cache=dict(seconds=t_full, tokens_per_sec=n / t_full),
        speedup=t_full / t_cache, same_output=bool(torch.equal(out_cache, out_full)),
    )
    print(f"{preset} ({model.num_params() / 1e6:.1f}M params, {dtype}) on {result['device']}: "
          f"{cfg['new_tokens']} new tokens after a {cfg['prompt']}-token prompt, batch {cfg['batch']}")
    print(f"  with KV cache:    {n / t_cache:10.1f} tokens/s  ({t_cache:.2f} s, median of {cfg['repeats']})")
    print(f"  without KV cache: {n / t_full:10.1f} tokens/s  ({t_full:.2f} s)")
    print(f"  speed-up {t_full / t_cache:.1f}x, identical greedy output: {result['same_output']}")
    out = Path(cfg["out"] or Path(__file__).parent / "results" /
               f"generate-{'cuda' if on_cuda else 'cpu'}-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out}")
    return result


if __name__ == "__main__":
    main()
