"""Pictures of what attention learned: one heat map per head, tokens on the axes.

    python -m gpt.attention_maps --out_dir=out --text="ROMEO: But soft" --layer=0    # one layer
    python -m gpt.attention_maps --out_dir=out --text='ROMEO:\nBut soft' --layer=all # every layer

Writes `--png` (default out_dir/attention.png): a grid with one row per layer and one column
per head; cell (i, j) of a map is how much query token i attends to key token j (a shared
colour bar gives the scale). The weights come from the model's own queries and keys,
softmax(q k^T / sqrt(hs)) with the causal mask, computed here in float32 (the flash-attention
kernel never materialises them). In --text a typed backslash-n is a newline and backslash-t
a tab (a shell passes them through as two characters); a double backslash is one backslash.
"""

import math
import re
from pathlib import Path

import torch

from gpt.cli import Opt, UsageError, defaults, parse, resolve_device, run_main
from gpt.files import atomic_path

PROG = "python -m gpt.attention_maps"
OPTIONS = {
    "input": dict(
        out_dir=Opt("out", "train.py's output folder (ckpt.pt, tokenizer.json)"),
        text=Opt("ROMEO:\nBut soft, what light", "the tokens to look at (at most block_size); "
                 "a typed \\n is a newline, \\t a tab"),
        layer=Opt("all", "a layer index (negative counts from the end) or all"),
        device=Opt("cpu", "cpu, cuda, cuda:N or auto"),
    ),
    "output": dict(
        png=Opt("", "the image to write; empty: out_dir/attention.png"),
    ),
}
DEFAULTS = defaults(OPTIONS)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text):
    """A typed backslash-n / backslash-t / double backslash as newline / tab / backslash."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


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
    """Readable axis labels: each token's text with newlines, tabs and spaces made visible
    (\\n, \\t, an open box for a space; an empty token shows as an empty-set sign)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        text = text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")
        labels.append(text or "\u2205")
    return labels


def plot_attention(weights, labels, layers, path, title=""):
    """Save a (layers x heads) grid of heat maps of weights[layer][0, head] to path, with
    one colour bar for all of them (every map is on the same 0..1 scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_head = weights[0].shape[1]
    T = len(labels)
    cell = max(2.5, 0.2 * T)  # inches per map: at least 0.2 inch per token once T > 12
    # the font fills about 70% of a token's row, between 5 and 10 points
    fontsize = min(10.0, max(5.0, 0.7 * 72 * cell / T))
    fig, axes = plt.subplots(len(layers), n_head, squeeze=False,
                             figsize=(cell * n_head + 1.2, cell * len(layers) + 0.6),
                             layout="constrained")
    image = None
    for r, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[r][h]
            image = ax.imshow(weights[layer][0, h].cpu().numpy(), cmap="viridis",
                              vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {h}", fontsize=max(fontsize, 8))
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels, rotation=60, ha="right", rotation_mode="anchor",
                               fontsize=fontsize)
            ax.set_yticklabels(labels, fontsize=fontsize)
            ax.set_xlabel("key", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def layer_option(value):
    """--layer as "all" or an int; UsageError otherwise."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--layer must be an int or all, got {value!r}") from None


def select_layers(layer, n_layer):
    """The layer indices to draw for --layer ("all" or an index, negative from the end)."""
    if layer == "all":
        return list(range(n_layer))
    if not -n_layer <= layer < n_layer:
        raise UsageError(f"--layer must be in [{-n_layer}, {n_layer}) for this "
                         f"{n_layer}-layer model, got {layer}")
    return [layer % n_layer]


def main(argv=None):
    from gpt.checkpoint import check_checkpoint, load_checkpoint
    from gpt.sample import encode_prompt

    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    layer = layer_option(cfg["layer"])
    device = resolve_device(cfg["device"])
    check_checkpoint(cfg["out_dir"])
    text = unescape(cfg["text"])
    if not text:
        raise UsageError("--text must be non-empty")
    png = Path(cfg["png"] or Path(cfg["out_dir"]) / "attention.png")
    if not png.parent.is_dir():
        raise UsageError(f"--png={png}: folder {png.parent} does not exist")
    model, tokenizer = load_checkpoint(cfg["out_dir"], device, kernels="torch")
    ids = encode_prompt(tokenizer, text, model.config.block_size, option="text")
    layers = select_layers(layer, model.config.n_layer)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    weights = attention_weights(model, idx)
    plot_attention(weights, token_labels(tokenizer, ids), layers, png, title=repr(text))
    print(f"wrote {png}")
    return str(png)


if __name__ == "__main__":
    run_main(main, PROG)
