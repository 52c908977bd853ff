"""The one command-line parser of every entry point (train.py, gpt.sample, gpt.data, bench/...).

nanoGPT's convention: options are `--name=value`, a positional argument is a config file of
`name = value` lines (read with `ast`, never executed). Each program declares its options once,
grouped, with a default and a one-line description::

    OPTIONS = {
        "data": dict(
            dataset=Opt("shakespeare_char", "a named dataset, or a text file / folder"),
            batch_size=Opt(12, "sequences per micro-batch", ge=1),
        ),
        "system": dict(
            device=Opt("auto", "auto | cpu | cuda | cuda:N"),
        ),
    }
    DEFAULTS = defaults(OPTIONS)                       # {"dataset": ..., "batch_size": 12, ...}

    def main(argv=None):
        cfg = parse(argv, OPTIONS, prog="train.py")   # -h/--help prints the options and exits 0
        ...

    if __name__ == "__main__":
        run_main(main, "train.py")                     # UsageError -> one line on stderr, exit 2

A value is parsed with the type of its default and checked against the option's `choices` and
bounds; a wrong name gets the closest known one suggested. Every such mistake raises
`UsageError`, which `run_main` prints as `prog: error: ...` (no traceback) and exits with status 2,
as argparse does. Any other exception is a bug and keeps its traceback.
"""

import ast
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Opt", "UsageError", "ConfigError", "defaults", "parse", "parse_overrides", "check",
           "check_value", "help_text", "resolve_device", "run_main"]


from gpt.errors import UsageError  # noqa: E402  (defined apart so libraries need not import the CLI)


ConfigError = UsageError  # the older name


@dataclass(frozen=True)
class Opt:
    """One option: its default (whose type is the option's type), a one-line description, and
    optional checks: `choices` (allowed values), bounds `ge`/`gt`/`le`/`lt`."""

    default: object
    help: str = ""
    choices: tuple = None
    ge: float = None
    gt: float = None
    le: float = None
    lt: float = None


def _flat(options):
    """{name: Opt} from grouped {group: {name: Opt}} or a flat {name: Opt or default}."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            for name, opt in value.items():
                flat[name] = opt if isinstance(opt, Opt) else Opt(opt)
        else:
            flat[key] = value if isinstance(value, Opt) else Opt(value)
    return flat


def defaults(options):
    """{name: default} of grouped or flat options."""
    return {name: opt.default for name, opt in _flat(options).items()}


def _type_name(default):
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _convert(name, text, default):
    """The text of --name=value as a value of the default's type."""
    kind = _type_name(default)
    if kind == "bool":
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise UsageError(f"--{name} expects a bool (True/False), got {text!r}")
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise UsageError(f"--{name} expects {_article(kind)} {kind}, got {text!r}") from None
    return text


def _check_type(name, value, default):
    """A value from a config file must have the default's type (an int is fine for a float)."""
    kind = _type_name(default)
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str) or (default is None and value is None)
    if not ok:
        raise UsageError(f"--{name} expects {_article(kind)} {kind}, got {value!r}")
    return value


def check_value(name, value, opt):
    """Raise UsageError unless value is one of opt.choices and within opt's bounds."""
    if opt.choices is not None and value not in opt.choices:
        shown = ", ".join(str(c) for c in opt.choices)
        raise UsageError(f"--{name} must be one of {shown}; got {value!r}")
    if opt.ge is not None and not value >= opt.ge:
        raise UsageError(f"--{name} must be >= {opt.ge}; got {value!r}")
    if opt.gt is not None and not value > opt.gt:
        raise UsageError(f"--{name} must be > {opt.gt}; got {value!r}")
    if opt.le is not None and not value <= opt.le:
        raise UsageError(f"--{name} must be <= {opt.le}; got {value!r}")
    if opt.lt is not None and not value < opt.lt:
        raise UsageError(f"--{name} must be < {opt.lt}; got {value!r}")


def _unknown(name, known, where=""):
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return UsageError(f"unknown option --{name}{where}{hint}; see --help for the options")


def _read_config_file(path):
    """Top-level `name = literal` assignments of a Python file, read without executing it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist "
                         f"(options are written --name=value)")
    values = {}
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise UsageError(f"{path}:{err.lineno}: not a config file of `name = value` lines") from None
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring carries no setting
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise UsageError(f"{path}:{node.lineno}: only `name = value` assignments are allowed")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise UsageError(f"{path}:{node.lineno}: the value must be a literal") from None
    return values


def help_text(options, prog, description=""):
    """The --help page: usage, description, then each group's options with default and help."""
    lines = [f"usage: {prog} [config_file.py ...] [--name=value ...]", ""]
    if description:
        lines += [description.strip(), ""]
    groups = options.items() if all(isinstance(v, dict) for v in options.values()) \
        else [("options", options)]
    for group, opts in groups:
        lines.append(f"{group}:")
        flat = _flat(opts)
        width = max((len(f"--{n}={flat[n].default!r}") for n in flat), default=0)
        for name, opt in flat.items():
            left = f"--{name}={opt.default!r}"
            extra = (f" [{' | '.join(str(c) if c != '' else repr(c) for c in opt.choices)}]"
                     if opt.choices else "")
            lines.append(f"  {left:<{width}}  {opt.help}{extra}".rstrip())
        lines.append("")
    lines.append("A positional argument is a config file of `name = value` lines, applied first.")
    return "\n".join(lines)


def parse(argv, options, prog=None, description=""):
    """Config files and `--name=value` arguments applied to the options' defaults -> a dict.

    `argv` None means sys.argv[1:]. `-h`/`--help` prints help_text and exits with status 0.
    Raises UsageError for an unknown name, a value of the wrong type, outside its choices or
    bounds, a malformed argument or a missing / bad config file.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    flat = _flat(options)
    if "-h" in argv or "--help" in argv:
        print(help_text(options, prog or Path(sys.argv[0]).name, description))
        raise SystemExit(0)
    config = {name: opt.default for name, opt in flat.items()}
    for arg in argv:
        if not arg.startswith("-"):
            for name, value in _read_config_file(arg).items():
                if name not in flat:
                    raise _unknown(name, list(flat), where=f" in {arg}")
                config[name] = _check_type(name, value, flat[name].default)
                check_value(name, config[name], flat[name])
            continue
        name, sep, text = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or not name:
            raise UsageError(f"expected --name=value, got {arg!r}")
        if name not in flat:
            raise _unknown(name, list(flat))
        if not sep:
            if isinstance(flat[name].default, bool):
                text = "True"  # a bare flag turns a bool on
            else:
                raise UsageError(f"--{name} needs a value: --{name}=<{_type_name(flat[name].default)}>")
        config[name] = _convert(name, text, flat[name].default)
        check_value(name, config[name], flat[name])
    return config


parse_overrides = parse  # the older name


def check(config, options):
    """For a config dict built in Python (not parsed): every name known, every value of its
    option's type, choices and bounds; raises UsageError like parse() would."""
    flat = _flat(options)
    for name, value in config.items():
        if name not in flat:
            raise _unknown(name, list(flat))
        _check_type(name, value, flat[name].default)
        check_value(name, value, flat[name])


def resolve_device(device, option="device"):
    """The torch device string for a --device value: "auto" is "cuda" when a GPU is there,
    else "cpu"; "cpu", "cuda" and "cuda:N" are checked. Raises UsageError naming --option."""
    import torch  # here, not at the top: --help needs no torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"--{option} must be auto, cpu, cuda or cuda:N; got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--{option}={device} but CUDA is not available (use --{option}=cpu)")
    return device


def run_main(main, prog, argv=None):
    """Call main(argv); a UsageError becomes `prog: error: message` on stderr and exit status 2."""
    try:
        return main(argv)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
