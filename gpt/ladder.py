"""The lecture's ladder, from a bigram table to a GPT, each rung trained the same way.

    python -m gpt.ladder --dataset=/path/to/tinyshakespeare.txt          # CPU-sized, minutes
    python -m gpt.ladder --preset=lecture --device=cuda                  # the lecture's sizes
    python -m gpt.ladder --causal=False                                  # attention sees the future

Karpathy's "Let's build GPT" grows a character model on Tiny Shakespeare one idea at a time.
Each rung here is a small module built from this project's ops (`gpt_kernels`), so it runs on
both kernel paths (`--kernels=torch|triton`):

    bigram     a (V, V) table of next-character logits
    head       + token and position embeddings, one causal self-attention head, an lm_head
    multihead  the same width split into n_head heads
    ffwd       + a position-wise linear + GELU after the attention
    residual   n_layer blocks with residual connections, an output projection after the
               attention and a 4x-wide MLP with its projection
    layernorm  + pre-norm LayerNorm in each block and a final LayerNorm
    gpt        the project's GPT (`gpt.model.GPT`), scaled up (preset), with dropout

Every rung sees the same batches (one seed) for the same number of steps; the val loss is the
mean over `eval_iters` batches drawn from a fixed generator, identical for every rung. Results
go to out_dir: ladder.json (every number), ladder.md (the table next to the lecture's figures)
and ladder.png (val loss curves and the final losses). Departures from the lecture: the
feed-forward's nonlinearity is GPT-2's tanh GELU (the fused `linear_gelu` op), not ReLU; the
CPU preset's heads are 16 wide (2 heads of 16, not 4 of 8: the Triton attention kernel takes
head dims 16, 32, 64, 128); the attention rungs keep PyTorch's default init (the lecture's)
but start with a zero lm_head, so their untrained loss is exactly ln(vocab) = ln 65 = 4.17
nats (the gpt rung, GPT-2's init, is within 0.02 of it), where the bigram keeps the lecture's
N(0, 1) table (about ln 65 + 0.4).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

import gpt_kernels
from gpt.cli import Opt, UsageError, parse, resolve_device, run_main
from gpt.files import atomic_path, write_text
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import CharTokenizer

PROG = "python -m gpt.ladder"
RUNGS = ("bigram", "head", "multihead", "ffwd", "residual", "layernorm", "gpt")

# The lecture's val losses (Karpathy, "Let's build GPT: from scratch, in code, spelled out",
# 2023), as the issue quotes them; "gpt" is the scaled 6x384 model after ~15 min on an A100.
LECTURE_VAL = {"bigram": 2.5, "head": 2.4, "multihead": 2.28, "ffwd": 2.24, "residual": 2.08,
               "layernorm": 2.06, "gpt": 1.48}
LECTURE_INIT_BIGRAM = 4.87

# small: rungs bigram..layernorm; scaled: the gpt rung. The lecture's small rungs are 32 wide
# with a context of 8 and batches of 32, trained 5000 steps at lr 1e-3 (the bigram at 1e-2);
# its scaled model is 6 layers x 384 wide, 6 heads, context 256, batch 64, dropout 0.2, lr 3e-4.
PRESETS = {
    "lecture": dict(
        small=dict(n_embd=32, n_head=2, n_layer=3, block_size=8, batch_size=32),
        scaled=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
                    dropout=0.2, learning_rate=3e-4),
        small_lr=1e-3, bigram_lr=1e-2, max_iters=5000, eval_interval=500, eval_iters=200),
    # the same small rungs; a gpt rung that trains in about a minute on 2 CPU cores
    "cpu": dict(
        small=dict(n_embd=32, n_head=2, n_layer=3, block_size=8, batch_size=32),
        scaled=dict(n_layer=4, n_head=4, n_embd=64, block_size=32, batch_size=16,
                    dropout=0.0, learning_rate=1e-3),
        small_lr=1e-3, bigram_lr=1e-2, max_iters=5000, eval_interval=1000, eval_iters=200),
    # under a minute on one CPU core: for tests and a first look (a larger lr: fewer steps)
    "tiny": dict(
        small=dict(n_embd=32, n_head=2, n_layer=2, block_size=8, batch_size=16),
        scaled=dict(n_layer=2, n_head=4, n_embd=64, block_size=16, batch_size=16,
                    dropout=0.0, learning_rate=3e-3),
        small_lr=3e-3, bigram_lr=1e-2, max_iters=800, eval_interval=200, eval_iters=20),
}

OPTIONS = {
    "data": dict(
        dataset=Opt("tinyshakespeare", "tinyshakespeare (downloaded once), or a text file"),
        cache_dir=Opt("", "download cache; empty: $GPT_CACHE_DIR or ~/.cache/gpt-triton"),
    ),
    "ladder": dict(
        preset=Opt("cpu", "sizes and steps", choices=tuple(PRESETS)),
        rungs=Opt(RUNGS, "comma-separated rungs to train (in ladder order whatever the order "
                  "given), or all", choices=RUNGS),
        max_iters=Opt(0, "training steps of every rung; 0: the preset's", ge=0),
        eval_iters=Opt(0, "val/train batches per evaluation; 0: the preset's", ge=0),
        causal=Opt(True, "causal attention; False lets every position see the future"),
        kernels=Opt("auto", "auto: Triton on CUDA, PyTorch on CPU; or force one",
                    choices=("auto", "triton", "torch")),
        seed=Opt(1337, "one seed for every rung: the same init stream and batches"),
        sample_tokens=Opt(200, "characters sampled from each trained rung", ge=0),
    ),
    "output": dict(
        out_dir=Opt("out-ladder", "where ladder.json, ladder.md and ladder.png go"),
        device=Opt("auto", "auto (cuda if available), cpu, cuda, cuda:N"),
        plot=Opt(True, "write ladder.png (matplotlib)"),
    ),
}


# ----------------------------------------------------------------------------------------
# the rungs


class Bigram(nn.Module):
    """logits[t] = table[idx[t]]: each character predicts the next from itself alone."""

    def __init__(self, vocab_size, backend):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)  # N(0, 1), as the lecture's
        self.block_size = 1
        self.backend = backend

    def forward(self, idx, targets=None):
        logits = self.table(idx)  # (B, T, V)
        if targets is None:
            return logits, None
        V = logits.shape[-1]
        loss = gpt_kernels.cross_entropy(logits.view(-1, V), targets.reshape(-1),
                                         backend=self.backend)
        return None, loss


class Attention(nn.Module):
    """n_head heads of causal (or not) self-attention side by side: one qkv matmul and one
    `flash_attention` call over all heads, the same function as the lecture's list of Head
    modules concatenated. `proj`: an output projection (the residual rungs have one)."""

    def __init__(self, n_embd, n_head, proj, causal, backend):
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)  # the lecture's heads: no bias
        self.proj = nn.Linear(n_embd, n_embd) if proj else None
        self.n_head, self.causal, self.backend = n_head, causal, backend

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        y = gpt_kernels.flash_attention(q, k, v, causal=self.causal, backend=self.backend)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y) if self.proj is not None else y


class FeedForward(nn.Module):
    """Linear + GELU (one fused op), then, when `width` > 1, the projection back to n_embd."""

    def __init__(self, n_embd, width, backend):
        super().__init__()
        self.fc = nn.Linear(n_embd, width * n_embd)
        self.proj = nn.Linear(width * n_embd, n_embd) if width > 1 else None
        self.backend = backend

    def forward(self, x):
        h = gpt_kernels.linear_gelu(x, self.fc.weight, self.fc.bias, backend=self.backend)
        return self.proj(h) if self.proj is not None else h


class LayerNorm(nn.Module):
    def __init__(self, n_embd, backend):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd))
        self.backend = backend

    def forward(self, x):
        return gpt_kernels.layer_norm(x, self.weight, self.bias, 1e-5, backend=self.backend)


class Block(nn.Module):
    """Attention then feed-forward; with `residual`, each adds to the stream; with `norm`,
    each reads a LayerNorm of it (pre-norm, as GPT-2)."""

    def __init__(self, n_embd, n_head, residual, norm, causal, backend):
        super().__init__()
        self.sa = Attention(n_embd, n_head, proj=residual, causal=causal, backend=backend)
        self.ffwd = FeedForward(n_embd, 4 if residual else 1, backend)
        self.ln_1 = LayerNorm(n_embd, backend) if norm else nn.Identity()
        self.ln_2 = LayerNorm(n_embd, backend) if norm else nn.Identity()
        self.residual = residual

    def forward(self, x):
        if not self.residual:
            return self.ffwd(self.sa(x))
        x = x + self.sa(self.ln_1(x))
        return x + self.ffwd(self.ln_2(x))


class LadderLM(nn.Module):
    """Embeddings -> blocks -> (LayerNorm) -> lm_head, the loss from the fused linear
    cross-entropy. idx, targets (B, T) int64 -> (None, loss), or (logits (B, T, V), None)."""

    def __init__(self, rung, vocab_size, n_embd, n_head, n_layer, block_size, causal, backend):
        super().__init__()
        heads = 1 if rung == "head" else n_head
        ffwd = rung != "head" and rung != "multihead"
        residual = rung in ("residual", "layernorm")
        norm = rung == "layernorm"
        layers = n_layer if residual else 1
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        blocks = [Block(n_embd, heads, residual, norm, causal, backend) for _ in range(layers)]
        if not ffwd:
            for b in blocks:
                b.ffwd = nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.ln_f = LayerNorm(n_embd, backend) if norm else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size)
        self.block_size, self.backend = block_size, backend
        # PyTorch's default init, as the lecture's modules have (embeddings N(0, 1)), except
        # a zero lm_head: the untrained model predicts the uniform distribution, loss ln V
        nn.init.zeros_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, C)
        x = self.ln_f(self.blocks(x))
        if targets is None:
            return self.lm_head(x), None
        loss = gpt_kernels.fused_linear_cross_entropy(
            x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1),
            bias=self.lm_head.bias, backend=self.backend)
        return None, loss


def build_rung(rung, vocab_size, preset, causal=True, kernels="auto"):
    """(model, learning rate, batch size, context) of one rung at a preset's sizes."""
    if rung not in RUNGS:
        raise ValueError(f"unknown rung {rung!r}; the ladder is {', '.join(RUNGS)}")
    p = PRESETS[preset] if isinstance(preset, str) else preset
    s, g = p["small"], p["scaled"]
    if rung == "bigram":
        return Bigram(vocab_size, kernels), p["bigram_lr"], s["batch_size"], s["block_size"]
    if rung == "gpt":
        cfg = GPTConfig(block_size=g["block_size"], vocab_size=vocab_size, n_layer=g["n_layer"],
                        n_head=g["n_head"], n_embd=g["n_embd"], dropout=g["dropout"],
                        bias=True, kernels=kernels, causal=causal)
        return GPT(cfg), g["learning_rate"], g["batch_size"], g["block_size"]
    model = LadderLM(rung, vocab_size, s["n_embd"], s["n_head"], s["n_layer"], s["block_size"],
                     causal, kernels)
    return model, p["small_lr"], s["batch_size"], s["block_size"]


# ----------------------------------------------------------------------------------------
# data, training, evaluation, sampling


def load_corpus(dataset, cache_dir=None):
    """(tokenizer, train ids, val ids): characters of the text, the first 90% as train."""
    from gpt.data import load_text

    text = load_text(dataset, cache_dir=cache_dir)
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    n = int(0.9 * len(data))
    return tok, data[:n], data[n:]


def get_batch(data, batch_size, block_size, generator, device):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate(model, splits, batch_size, block_size, eval_iters, seed, device):
    """Mean loss over eval_iters batches per split; the batches come from a generator seeded
    with `seed`, so every rung and every evaluation is measured on the same windows."""
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator().manual_seed(seed)
        losses = [model(*get_batch(data, batch_size, block_size, gen, device))[1].item()
                  for _ in range(eval_iters)]
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


@torch.no_grad()
def sample(model, tokenizer, n_tokens, block_size, device, seed=0):
    """n_tokens characters after a newline, sampled at temperature 1 (the lecture's way),
    re-running the last block_size characters each step (no cache: it also serves
    bidirectional models)."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([tokenizer.encode("\n")], dtype=torch.long, device=device)
    for _ in range(n_tokens):
        logits, _ = model(idx[:, -block_size:])
        probs = torch.softmax(logits[:, -1].float(), dim=-1)
        idx = torch.cat([idx, torch.multinomial(probs, 1, generator=gen)], dim=1)
    model.train()
    return tokenizer.decode(idx[0, 1:].tolist())


def train_rung(rung, tokenizer, train, val, preset="cpu", max_iters=None, eval_iters=None,
               causal=True, kernels="auto", seed=1337, device="cpu", sample_tokens=0,
               log=print):
    """Train one rung from a fresh init; returns its record (losses, curve, time, sample)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    max_iters = p["max_iters"] if max_iters is None else max_iters
    eval_iters = p["eval_iters"] if eval_iters is None else eval_iters
    torch.manual_seed(seed)
    model, lr, batch_size, block_size = build_rung(rung, tokenizer.vocab_size, p, causal, kernels)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    splits = {"train": train, "val": val}
    gen = torch.Generator().manual_seed(seed)  # the training batches: the same for every rung
    curve = []
    init = evaluate(model, splits, batch_size, block_size, eval_iters, seed + 1, device)
    curve.append({"iter": 0, **init})
    t0 = time.perf_counter()
    for it in range(1, max_iters + 1):
        _, loss = model(*get_batch(train, batch_size, block_size, gen, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % p["eval_interval"] == 0 or it == max_iters:
            losses = evaluate(model, splits, batch_size, block_size, eval_iters, seed + 1, device)
            curve.append({"iter": it, **losses})
            log(f"{rung:>9} step {it}: train {losses['train']:.4f}, val {losses['val']:.4f}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0  # training and evaluation, after the initial one
    record = {
        "rung": rung, "params": sum(q.numel() for q in model.parameters()),
        "batch_size": batch_size, "block_size": block_size, "learning_rate": lr,
        "iters": max_iters, "init_val": init["val"], "train": curve[-1]["train"],
        "val": curve[-1]["val"], "lecture_val": LECTURE_VAL[rung], "seconds": seconds,
        "curve": curve,
    }
    if sample_tokens:
        record["sample"] = sample(model, tokenizer, sample_tokens, block_size, device, seed)
    return record


# ----------------------------------------------------------------------------------------
# reporting


def table(records, causal=True):
    """The markdown table of a ladder run, next to the lecture's figures."""
    head = "val loss" if causal else "val loss (no causal mask)"
    lines = [f"| rung | parameters | context | steps | untrained val | {head} | lecture val | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['rung']} | {r['params']:,} | {r['block_size']} | {r['iters']} | "
                     f"{r['init_val']:.3f} | {r['val']:.3f} | {r['lecture_val']:.2f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


_write_atomic = write_text


def plot(records, path, vocab_size):
    """Val loss against steps for every rung, and the final val loss next to the lecture's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in records:
        a.plot([c["iter"] for c in r["curve"]], [c["val"] for c in r["curve"]], "o-", ms=3,
               label=r["rung"])
    a.set_xlabel("step")
    a.set_ylabel("val loss (nats per character)")
    a.set_ylim(top=min(5.0, a.get_ylim()[1]))
    a.grid(alpha=0.3)
    a.legend()
    xs = range(len(records))
    b.bar([x - 0.2 for x in xs], [r["val"] for r in records], 0.4, label="this run")
    b.bar([x + 0.2 for x in xs], [r["lecture_val"] for r in records], 0.4, label="lecture")
    b.set_xticks(list(xs), [r["rung"] for r in records], rotation=30)
    b.set_ylabel("final val loss")
    b.axhline(math.log(vocab_size), ls=":", c="gray", label="uniform (ln V)")
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run(cfg, log=print):
    """Train the chosen rungs one after another; write ladder.json/.md/.png; return records."""
    rungs = sorted(set(cfg["rungs"]), key=RUNGS.index)
    device = resolve_device(cfg["device"])
    if cfg["kernels"] == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("--kernels=triton needs a CUDA device, or TRITON_INTERPRET=1 on a CPU")
    from gpt.data import check_dataset

    check_dataset(cfg["dataset"])
    tok, train, val = load_corpus(cfg["dataset"], cfg["cache_dir"] or None)
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"{len(train):,} train and {len(val):,} val characters, vocabulary {tok.vocab_size}; "
        f"preset {cfg['preset']}, causal={cfg['causal']}, kernels={cfg['kernels']}, {device}")
    records = []
    for rung in rungs:
        records.append(train_rung(
            rung, tok, train, val, cfg["preset"], cfg["max_iters"] or None,
            cfg["eval_iters"] or None, cfg["causal"], cfg["kernels"], cfg["seed"], device,
            cfg["sample_tokens"], log))
        result = {"config": cfg, "device": device, "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d"), "vocab_size": tok.vocab_size,
                  "records": records}
        # rewritten after every rung: an interrupted ladder keeps what it measured
        _write_atomic(out_dir / "ladder.json", json.dumps(result, indent=1))
        _write_atomic(out_dir / "ladder.md", table(records, cfg["causal"]) + "\n")
    if cfg["plot"]:
        plot(records, out_dir / "ladder.png", tok.vocab_size)
    log(table(records, cfg["causal"]))
    for r in records:
        if "sample" in r:
            log(f"--- {r['rung']} sample ---\n{r['sample']}")
    return records


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    return run(cfg)


if __name__ == "__main__":
    run_main(main, PROG)
