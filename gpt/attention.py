"""Pictures of what attention learned: one heat map per head, tokens on the axes.

    python -m gpt.attention --out_dir=out --text="ROMEO: But soft" --layer=0    # one layer
    python -m gpt.attention --out_dir=out --text="To be, or not" --layer=all    # every layer

Writes `--png` (default out_dir/attention.png): a grid with one row per layer and one column
per head; cell (i, j) of a map is how much query token i attends to key token j. The weights
come from the model's own queries and keys, softmax(q k^T / sqrt(hs)) with the causal mask,
computed here in float32 (the flash-attention kernel never materialises them).
"""

import math
import os
import sys
from pathlib import Path

import torch

from gpt.cli import parse_overrides

DEFAULTS = dict(
    out_dir="out",  # train.py's output folder (ckpt.pt, tokenizer.json)
    text="ROMEO:\nBut soft, what light",  # the tokens to look at (at most block_size of them)
    layer="all",  # a layer index (negative counts from the end) or "all"
    png="",  # output file; default out_dir/attention.png
    device="cpu",
)


@torch.no_grad()
def attention_weights(model, idx):
    """Attention probabilities of every layer: a list of (B, n_head, T, T) float32 tensors.

    Hooks capture each block's c_attn output (q, k, v for all heads) during one forward pass;
    the probabilities are recomputed from q and k with the causal mask.
    """
    captured = []
    hooks = [block.attn.c_attn.register_forward_hook(lambda m, i, out: captured.append(out))
             for block in model.transformer.h]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    B, T = idx.shape
    nh, C = model.config.n_head, model.config.n_embd
    hs = C // nh
    mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    weights = []
    for qkv in captured:
        q, k, _ = qkv.float().split(C, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        weights.append(scores.masked_fill(~mask, float("-inf")).softmax(dim=-1))
    return weights


def token_labels(tokenizer, ids):
    """Readable axis labels: each token's text, with newlines and spaces made visible."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        labels.append(text.replace("\n", "\\n").replace(" ", "\u2423") or "\u2205")
    return labels


def plot_attention(weights, labels, layers, path, title=""):
    """Save a (layers x heads) grid of heat maps of weights[layer][0, head] to path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_head = weights[0].shape[1]
    T = len(labels)
    cell = max(2.2, 0.18 * T)
    fig, axes = plt.subplots(len(layers), n_head, figsize=(cell * n_head, cell * len(layers)),
                             squeeze=False)
    for r, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[r][h]
            ax.imshow(weights[layer][0, h].cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {h}", fontsize=8)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels, rotation=90, fontsize=6)
            ax.set_yticklabels(labels, fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv=None):
    from gpt.sample import load_checkpoint

    cfg = parse_overrides(sys.argv[1:] if argv is None else argv, DEFAULTS)
    model, tokenizer = load_checkpoint(cfg["out_dir"], cfg["device"], kernels="torch")
    if not cfg["text"]:
        raise ValueError("text must be non-empty")
    ids = tokenizer.encode(cfg["text"])
    if len(ids) > model.config.block_size:
        raise ValueError(f"text has {len(ids)} tokens; the model sees at most {model.config.block_size}")
    n_layer = model.config.n_layer
    if cfg["layer"] == "all":
        layers = list(range(n_layer))
    else:
        try:
            layer = int(cfg["layer"])
        except ValueError:
            raise ValueError(f"layer must be an int or 'all', got {cfg['layer']!r}") from None
        if not -n_layer <= layer < n_layer:
            raise ValueError(f"layer must be in [{-n_layer}, {n_layer}), got {layer}")
        layers = [layer % n_layer]
    idx = torch.tensor([ids], dtype=torch.long, device=cfg["device"])
    weights = attention_weights(model, idx)
    png = cfg["png"] or str(Path(cfg["out_dir"]) / "attention.png")
    plot_attention(weights, token_labels(tokenizer, ids), layers, png, title=repr(cfg["text"]))
    print(f"wrote {png}")
    return png


if __name__ == "__main__":
    main()
