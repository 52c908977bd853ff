"""One prompt under several decoding settings, side by side, as a markdown table:

    python -m gpt.sample_table --out_dir=out --start="ROMEO:" --max_new_tokens=120
    python -m gpt.sample_table --out_dir=out --settings="temperature=0.5; temperature=1.0; temperature=1.5"
    python -m gpt.sample_table --out_dir=out --output=docs/sampling.md

Each `;`-separated setting is a list of `name=value` options of `gpt.sample` (temperature,
top_k, top_p, greedy, num_beams, length_penalty); every row uses the same prompt, seed and
length, and the model is loaded once. The table goes to stdout, or with --output to a file
(written atomically). `python -m gpt.sample_table --help` lists the options.
"""

from pathlib import Path

import torch

from gpt.cli import Opt, UsageError, convert, parse, resolve_device, run_main
from gpt.files import write_text
from gpt import checkpoint as gckpt
from gpt import sample as gsample

PROG = "python -m gpt.sample_table"
DECODING = gsample.OPTIONS["decoding"]
# The README's rows: greedy, temperature alone, top-k, nucleus, both, beam search.
DEFAULT_SETTINGS = ("greedy=True; temperature=0.8,top_k=0; temperature=1.0,top_k=10; "
                    "temperature=1.0,top_k=0,top_p=0.9; temperature=0.8,top_k=50,top_p=0.95; "
                    "num_beams=4")

OPTIONS = {
    "checkpoint": dict(
        out_dir=Opt("out", "train.py's output folder (ckpt.pt, tokenizer.json)"),
        device=Opt("cpu", "auto (cuda if available), cpu, cuda, cuda:N"),
    ),
    "table": dict(
        start=Opt("ROMEO:", "the prompt text, or FILE:path to read it from a file"),
        max_new_tokens=Opt(120, "tokens generated per row", ge=1),
        seed=Opt(1337, "random seed, the same for every row"),
        settings=Opt(DEFAULT_SETTINGS, "rows: ';'-separated lists of name=value decoding "
                     f"options ({', '.join(DECODING)})"),
        output=Opt("", "write the table to this file; empty: print it"),
    ),
}


def parse_settings(text):
    """[(label, {option: value})] from "temperature=0.8,top_k=0; greedy=True"."""
    rows = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        values = {}
        for item in part.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep or name not in DECODING:
                raise UsageError(f"--settings: {item.strip()!r} is not name=value with a name "
                                 f"among {', '.join(DECODING)}")
            values[name] = convert(name, value, DECODING[name])  # typed and checked as --name
        label = "`" + " ".join(f"--{k}={v}" for k, v in values.items()) + "`"
        rows.append((label, values))
    if not rows:
        raise UsageError("--settings holds no setting; e.g. --settings='temperature=0.8; greedy=True'")
    return rows


def cell(text):
    """Text as one markdown table cell: newlines as <br>, pipes escaped."""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def sample_table(cfg):
    """The markdown table (| setting | output |) of cfg's prompt under each setting."""
    rows = parse_settings(cfg["settings"])
    device = resolve_device(cfg["device"])
    gckpt.check_checkpoint(cfg["out_dir"])
    prompt = gsample.read_prompt(cfg["start"])
    model, tokenizer = gckpt.load_checkpoint(cfg["out_dir"], device)
    x = torch.tensor([gsample.encode_prompt(tokenizer, prompt, model.config.block_size)],
                     dtype=torch.long, device=device)
    lines = ["| setting | output |", "| --- | --- |"]
    for label, values in rows:
        d = {**gsample.DEFAULTS, **values}
        if d["greedy"] and d["num_beams"] > 1:
            raise UsageError(f"--settings: {label} asks for greedy decoding and beam search")
        torch.manual_seed(cfg["seed"])
        with torch.no_grad():
            y = model.generate(x, cfg["max_new_tokens"], temperature=d["temperature"],
                               top_k=d["top_k"] or None, top_p=d["top_p"], greedy=d["greedy"],
                               num_beams=d["num_beams"], length_penalty=d["length_penalty"],
                               use_cache=d["use_cache"])
        lines.append(f"| {label} | {cell(tokenizer.decode(y[0].tolist()))} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    table = sample_table(cfg)
    if cfg["output"]:
        path = Path(cfg["output"])
        write_text(path, table)
        print(f"wrote {path}")
    else:
        print(table, end="")
    return table


if __name__ == "__main__":
    run_main(main, PROG)
