"""A look at the tokenizer: compression against vocabulary size, token frequencies, merges.

    python -m gpt.tokenizer_analysis --dataset=/path/to/tinyshakespeare.txt
    python -m gpt.tokenizer_analysis --dataset=input.txt --vocab_sizes=512,2048 --gpt2_ranks=r50k_base.tiktoken

Our byte-level BPE is trained once, on the first 90% of the text, at the largest vocabulary
asked for; BPE learns merges greedily, so the first k merges of that run are exactly the
merges a run with vocabulary 256 + k + 1 would learn, and each smaller size is that prefix.
On the held-out last 10% each tokenizer reports characters per token (compression), bytes per
token and the share of its vocabulary used; the token-frequency curve (count against rank,
log-log: Zipf's law would be a straight line) goes to a plot, and the first and last merges
of the largest BPE are listed. GPT-2's BPE (50257 tokens, trained on WebText) and the
character tokenizer are measured on the same text for comparison. Writes out_dir/
tokenizers.json, tokenizers.md and tokenizers.png.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from gpt.cli import Opt, convert, parse, run_main
from gpt.errors import UsageError
from gpt.files import atomic_path, write_text
from gpt.tokenizer import BPETokenizer, CharTokenizer, GPT2Tokenizer

PROG = "python -m gpt.tokenizer_analysis"
OPTIONS = {
    "dataset": Opt("tinyshakespeare", "tinyshakespeare (downloaded once), shakespeare, a text "
                   "file or a folder of .txt files"),
    "vocab_sizes": Opt((300, 512, 1024, 2048, 4096), "comma-separated BPE vocabulary sizes, each "
                       "> 257 (the 256 bytes and <|endoftext|>)", gt=257),
    "gpt2_ranks": Opt("", "GPT-2's ranks file (r50k_base.tiktoken); empty: tiktoken's, and "
                      "GPT-2 is left out if it cannot be had"),
    "n_merges_shown": Opt(12, "first and last merges listed", ge=0),
    "out_dir": Opt("out-tokenizers", "where tokenizers.json, .md and .png go"),
    "plot": Opt(True, "write tokenizers.png (matplotlib)"),
}


def parse_sizes(text):
    """The text of --vocab_sizes as sorted distinct sizes (parse() checks the option's value
    the same way); raises UsageError."""
    return sorted(set(convert("vocab_sizes", text, OPTIONS["vocab_sizes"])))


def stats(tok, text):
    """Compression and frequency numbers of one tokenizer on `text`."""
    ids = tok.encode(text)
    counts = Counter(ids)
    return {"name": tok.name, "vocab_size": tok.vocab_size, "tokens": len(ids),
            "chars_per_token": len(text) / len(ids),
            "bytes_per_token": len(text.encode("utf-8")) / len(ids),
            "distinct_tokens": len(counts), "vocab_used": len(counts) / tok.vocab_size,
            "frequencies": sorted(counts.values(), reverse=True)}


def merge_text(tok, rank):
    """Merge number `rank` as 'left' + 'right' -> 'merged' (bytes shown as text)."""
    a, b = tok.merges[rank]
    piece = tok.enc.decode_single_token_bytes
    show = lambda t: piece(t).decode("utf-8", errors="backslashreplace")  # noqa: E731
    return {"rank": rank, "left": show(a), "right": show(b), "token": show(256 + rank)}


def analyze(text, sizes, gpt2=None, n_shown=12, log=print):
    """{'tokenizers': [stats...], 'first_merges': [...], 'last_merges': [...]}."""
    n = int(0.9 * len(text))
    train, held = text[:n], text[n:]
    t0 = time.perf_counter()
    largest = BPETokenizer.train(train, sizes[-1])
    log(f"trained a {largest.vocab_size}-token BPE on {len(train):,} characters in "
        f"{time.perf_counter() - t0:.1f} s")
    rows = [stats(CharTokenizer.from_text(text), held)]
    for size in sizes:
        k = min(size - 257, len(largest.merges))  # merges of a size-token BPE: a prefix
        tok = BPETokenizer(largest.merges[:k], pat_str=largest.pat_str)
        rows.append(stats(tok, held))
    if gpt2 is not None:
        rows.append(stats(gpt2, held))
    shown = min(n_shown, len(largest.merges))
    return {"train_chars": len(train), "held_out_chars": len(held), "tokenizers": rows,
            "first_merges": [merge_text(largest, r) for r in range(shown)],
            "last_merges": [merge_text(largest, r) for r in
                            range(len(largest.merges) - shown, len(largest.merges))]}


def _cell(s):
    return "`" + s.replace("\n", "\\n").replace("|", "\\|").replace("`", "'") + "`"


def markdown(result):
    lines = ["| tokenizer | vocabulary | chars/token | bytes/token | tokens (held out) | "
             "vocabulary used |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["tokenizers"]:
        lines.append(f"| {r['name']} | {r['vocab_size']:,} | {r['chars_per_token']:.2f} | "
                     f"{r['bytes_per_token']:.2f} | {r['tokens']:,} | {100 * r['vocab_used']:.0f}% |")
    for key, title in (("first_merges", "First merges"), ("last_merges", "Last merges")):
        lines += ["", f"{title} of the largest BPE (rank: left + right -> token):", ""]
        lines.append(", ".join(f"{m['rank']}: {_cell(m['left'])} + {_cell(m['right'])}"
                               for m in result[key]))
    return "\n".join(lines) + "\n"


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in result["tokenizers"]:
        f = r["frequencies"]
        a.loglog(range(1, len(f) + 1), f, label=f"{r['name']} {r['vocab_size']:,}")
    a.set_xlabel("token rank")
    a.set_ylabel("count in the held-out text")
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=8)
    bpe = [r for r in result["tokenizers"] if r["name"] == "bpe"]
    b.semilogx([r["vocab_size"] for r in bpe], [r["chars_per_token"] for r in bpe], "o-",
               label="our BPE")
    for r in result["tokenizers"]:
        if r["name"] != "bpe":
            b.semilogx([r["vocab_size"]], [r["chars_per_token"]], "s", label=r["name"])
    b.set_xlabel("vocabulary size")
    b.set_ylabel("characters per token (held out)")
    b.grid(alpha=0.3, which="both")
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


_write = write_text


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    sizes = sorted(set(cfg["vocab_sizes"]))
    from gpt.data import check_dataset, load_text

    check_dataset(cfg["dataset"])
    if cfg["gpt2_ranks"] and not Path(cfg["gpt2_ranks"]).is_file():
        raise UsageError(f"--gpt2_ranks={cfg['gpt2_ranks']}: no such file")
    text = load_text(cfg["dataset"])
    try:
        gpt2 = GPT2Tokenizer(cfg["gpt2_ranks"] or None)
    except ValueError as err:  # offline without a copy: the rest still runs
        print(f"GPT-2's tokenizer left out: {err}")
        gpt2 = None
    result = analyze(text, sizes, gpt2, cfg["n_merges_shown"])
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "tokenizers.json", json.dumps(result))
    _write(out / "tokenizers.md", markdown(result))
    if cfg["plot"]:
        plot(result, out / "tokenizers.png")
    print(markdown(result), end="")
    return result


if __name__ == "__main__":
    run_main(main, PROG)
