"""Generation speed with and without the KV cache.

    python -m bench.generate                       # on a CUDA GPU: GPT-2 small's shape
    python -m bench.generate --device=cpu          # on the CPU: a 6x384 model, minutes
    python -m bench.generate --smoke=True          # a tiny model on the CPU: checks the code

Random weights (speed does not depend on them), greedy decoding, a batch of `batch` prompts
of `prompt` tokens, `new_tokens` new tokens. Each path runs `repeats` times after a warm-up;
the median is reported, with the speed-up of the cache, and written as JSON to
bench/results/generate-<device>-<date>.json (never over an existing file: a -2, -3, ...
suffix is added; --out= names the file). Without a GPU it refuses to start unless the CPU
is asked for explicitly (--device=cpu), since the default sizes take minutes there.
"""

import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from bench import common
from gpt.cli import Opt, UsageError, defaults, parse, resolve_device, run_main
from gpt.model import GPT, PRESETS, GPTConfig

PROG = "python -m bench.generate"
OPTIONS = {
    "model": dict(
        preset=Opt("", "a gpt.model preset; empty: gpt2 on CUDA, shakespeare-char (6x384) "
                   "on the CPU"),
        vocab_size=Opt(50304, "vocabulary size", ge=1),
        block_size=Opt(1024, "context length (prompt + new_tokens must fit)", ge=1),
        kernels=Opt("auto", "auto | triton | torch", choices=("auto", "triton", "torch")),
    ),
    "workload": dict(
        prompt=Opt(16, "prompt tokens", ge=1),
        new_tokens=Opt(256, "tokens generated", ge=1),
        batch=Opt(1, "prompts generated together", ge=1),
        repeats=Opt(3, "timed runs per path (after one warm-up run); the median is reported",
                    ge=1),
    ),
    "system": dict(
        device=Opt("auto", "auto (refuses without a GPU), cpu, cuda, cuda:N"),
        dtype=Opt("auto", "auto: bfloat16 on CUDA, float32 on the CPU",
                  choices=("auto", "float32", "bfloat16", "float16")),
        smoke=Opt(False, "a tiny model on the CPU, one repeat: checks the code, times nothing"),
        progress=Opt(True, "progress bar (only when the output is a terminal)"),
    ),
    "output": dict(
        out=Opt("", "results JSON; empty: bench/results/generate-<device>-<date>.json, "
                "with a suffix when that exists"),
    ),
}
DEFAULTS = defaults(OPTIONS)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_generate(model, idx, new_tokens, use_cache, repeats, device, ctx, bar=None):
    times = []
    for i in range(repeats + 1):  # the first run warms up (allocations, kernel compiles)
        _sync(device)
        t0 = time.perf_counter()
        with ctx:
            out = model.generate(idx, new_tokens, greedy=True, use_cache=use_cache)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    return statistics.median(times), out


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def choose_device(cfg):
    """The device to time on: CUDA by default; the CPU only when asked for (--device=cpu or
    --smoke=True), because the default sizes take minutes there."""
    if cfg["smoke"]:
        if cfg["device"] not in ("auto", "cpu"):
            raise UsageError("--smoke=True runs on the CPU; leave --device at auto or cpu")
        return "cpu"
    if cfg["device"] == "auto" and not torch.cuda.is_available():
        raise UsageError("no CUDA GPU: pass --device=cpu to time generation on the CPU "
                         "(minutes at the default sizes), or --smoke=True to only check the code")
    return resolve_device(cfg["device"])


def settings(cfg, device):
    """(preset, dtype, cfg) with the defaults of the device (and of smoke mode) filled in."""
    on_cuda = device.startswith("cuda")
    if cfg["smoke"]:
        cfg = {**cfg, "vocab_size": 128, "block_size": 64, "prompt": 4, "new_tokens": 8,
               "repeats": 1}
    preset = cfg["preset"] or ("tiny" if cfg["smoke"] else "gpt2" if on_cuda else "shakespeare-char")
    if preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    if cfg["prompt"] + cfg["new_tokens"] > cfg["block_size"]:
        raise UsageError(f"--prompt + --new_tokens ({cfg['prompt']} + {cfg['new_tokens']}) must "
                         f"fit in --block_size={cfg['block_size']} (the benchmark times the "
                         "cache, not the sliding window)")
    dtype = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if on_cuda else "float32")
    if dtype == "float16" and not on_cuda:
        raise UsageError("--dtype=float16 needs a CUDA device")
    return preset, dtype, cfg


def results_path(cfg, on_cuda, day):
    if cfg["out"]:
        return Path(cfg["out"])
    kind = "cuda" if on_cuda else "cpu"
    suffix = "-smoke" if cfg["smoke"] else ""
    return common.unique_path(common.RESULTS_DIR / f"generate-{kind}-{day}{suffix}.json")


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    device = choose_device(cfg)
    preset, dtype, cfg = settings(cfg, device)
    on_cuda = device.startswith("cuda")
    mcfg = GPTConfig.from_preset(preset, vocab_size=cfg["vocab_size"], block_size=cfg["block_size"],
                                 dropout=0.0, kernels=cfg["kernels"])
    torch.manual_seed(0)
    model = GPT(mcfg).to(device).eval()
    idx = torch.randint(0, mcfg.vocab_size, (cfg["batch"], cfg["prompt"]), device=device)
    ctx = (torch.autocast("cuda" if on_cuda else "cpu", dtype=getattr(torch, dtype))
           if dtype != "float32" else torch.no_grad())
    print(f"{preset} ({model.num_params() / 1e6:.1f}M params, {dtype}) on {device_name(device)}: "
          f"{cfg['new_tokens']} new tokens after a {cfg['prompt']}-token prompt, batch {cfg['batch']}"
          + (" -- SMOKE RUN: not performance numbers" if cfg["smoke"] else ""), flush=True)
    bar = None
    if cfg["progress"] and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * (cfg["repeats"] + 1), unit="run", desc="generate")
    with torch.no_grad():
        t_cache, out_cache = time_generate(model, idx, cfg["new_tokens"], True, cfg["repeats"],
                                           device, ctx, bar)
        t_full, out_full = time_generate(model, idx, cfg["new_tokens"], False, cfg["repeats"],
                                         device, ctx, bar)
    if bar is not None:
        bar.close()
    n = cfg["batch"] * cfg["new_tokens"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=common.REPO_ROOT).stdout.strip()
    result = dict(
        benchmark="generate", date=date.today().isoformat(), device=device_name(device),
        torch=torch.__version__, commit=commit, smoke=cfg["smoke"], preset=preset,
        n_params=model.num_params(), dtype=dtype, kernels=cfg["kernels"], batch=cfg["batch"],
        prompt=cfg["prompt"], new_tokens=cfg["new_tokens"], repeats=cfg["repeats"],
        with_cache=dict(seconds=t_cache, tokens_per_sec=n / t_cache),
        without_cache=dict(seconds=t_full, tokens_per_sec=n / t_full),
        speedup=t_full / t_cache, same_output=bool(torch.equal(out_cache, out_full)),
    )
    print(f"  with KV cache:    {n / t_cache:10.1f} tokens/s  ({t_cache:.2f} s, median of {cfg['repeats']})")
    print(f"  without KV cache: {n / t_full:10.1f} tokens/s  ({t_full:.2f} s)")
    print(f"  speed-up {t_full / t_cache:.1f}x, identical greedy output: {result['same_output']}")
    out = common.write_json(results_path(cfg, on_cuda, result["date"]), result)
    print(f"  wrote {out}")
    return result


if __name__ == "__main__":
    run_main(main, PROG)
