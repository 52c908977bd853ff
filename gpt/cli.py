"""The one command-line parser of every entry point (train.py, gpt.sample, gpt.data, bench/...).

One file although over 500 lines: one parser, whose half is this docstring saying what it adds
to argparse and why.

nanoGPT's convention: options are `--name=value`, a positional argument is a config file of
`name = value` lines (read with `ast`, never executed). Each program declares its options once,
grouped, with a default and a one-line description::

    OPTIONS = {
        "data": dict(
            dataset=Opt("shakespeare_char", "a named dataset, or a text file / folder"),
            batch_size=Opt(12, "sequences per micro-batch", ge=1),
            paths=Opt(("triton", "torch"), "comma-separated paths", choices=PATHS),  # a list
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

A program of several commands (`prog COMMAND [options]`) gives each command its own options
and takes `command, cfg = parse_command(argv, {name: (help, OPTIONS)}, prog)`.

A value is parsed with the type of its default and checked against the option's `choices` and
bounds. An option whose default is a tuple is a list, written `--name=a,b,c`: each item has the
type of the default's items (or `item=`), and `choices` and bounds apply to each item; `all`
stands for every choice; it may be empty only if its default is. A wrong name gets the closest
known one suggested. Every such mistake raises `UsageError`, which `run_main` prints as
`prog: error: ...` (no traceback) and exits with status 2, as argparse does. Any other
exception is a bug and keeps its traceback.

What is argparse and what is added on top
-----------------------------------------
argparse (the standard library's) builds the parser: one argument group per group of OPTIONS
(so `-h` prints the options by group, with argparse's help action and exit status 0), one
`--name` argument per option with `type=` a converter made from the Opt (its default's type,
the list splitting, the choices and bounds), `--name=value` and `--name value` both accepted
(argparse's own), abbreviations refused (`allow_abbrev=False`: `--lr` must not silently mean
`--lr_decay_iters`), and subcommands as argparse subparsers, each with its own options.

Added on top, each because argparse does otherwise:
- Config files. argparse's only file support (`fromfile_prefix_chars`) reads one argument per
  line; ours are `name = value` Python literals, read with `ast` and type-checked like the
  command line. They are the arguments argparse leaves over (`parse_known_args`), so they may
  sit anywhere among the options (argparse's `nargs="*"` positional would take only the first
  run of them), and they are applied first, in order, and the command line over them.
- Bools. A bare `--flag` means `--flag=True`, and `--flag=False` works; the word after a bare
  flag is never its value (it may be a config file), so bare flags are rewritten to
  `--flag=True` before argparse sees them: argparse's `nargs="?"` would swallow the next word,
  and `store_true` would refuse `--flag=False`.
- Messages. argparse says `argument --max_iters: invalid int value: 'ten'`, `invalid choice:
  ... (choose from ...)` and `unrecognized arguments: --max_iter=10` with no suggestion (that
  arrives only in Python 3.14). Ours name the option once and what was expected
  (`--max_iters expects an int, got 'ten'`, `--tokenizer must be one of char, bpe, gpt2`,
  `unknown option --max_iter (did you mean --max_iters?)`); the tests and the docs quote them.
  So the converter raises them itself, choices are not handed to argparse (it would check a
  list option's whole value against them, and word its own message), the arguments left over
  are named here, and a missing or unknown command is checked before argparse's subparsers.
- Errors as exceptions. The parser raises `UsageError` instead of printing and exiting
  (`error()` overridden, `exit_on_error=False`), so a library caller can catch a mistake, and
  the errors a program finds after parsing (a missing checkpoint, n_embd not divisible by
  n_head) take the same road: `run_main` prints every one as `prog: error: ...`, exit 2.
- Help layout. One line per option, `--name=default  description [choices]`, in the form the
  option is written, instead of argparse's `--name NAME` and wrapped help.
"""

import argparse
import ast
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Opt", "UsageError", "ConfigError", "defaults", "parse", "parse_overrides",
           "parse_command", "build_parser", "convert", "check", "check_value", "help_text",
           "resolve_device", "run_main"]


from gpt.errors import UsageError  # noqa: E402  (defined apart so libraries need not import the CLI)


ConfigError = UsageError  # the older name

_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}
_PLURALS = {"bool": "bools (True/False)", "int": "ints", "float": "numbers", "str": "strings"}


@dataclass(frozen=True)
class Opt:
    """One option: its default (whose type is the option's type), a one-line description, and
    optional checks: `choices` (allowed values), bounds `ge`/`gt`/`le`/`lt`.

    A tuple (or list) default makes a list option, written `--name=a,b,c`: `item` is the type
    of its items (default: the type of the default's first item, else str), and `choices` and
    the bounds apply to each item."""

    default: object
    help: str = ""
    choices: tuple = None
    ge: float = None
    gt: float = None
    le: float = None
    lt: float = None
    item: type = None

    def __post_init__(self):
        if isinstance(self.default, list):
            object.__setattr__(self, "default", tuple(self.default))
        if self.item is not None and not self.is_list:
            raise TypeError(f"Opt(item={self.item.__name__}) needs a tuple default, "
                            f"got {self.default!r}")
        if self.item is not None and self.item not in _KINDS:
            raise TypeError(f"Opt(item=...) must be bool, int, float or str, got {self.item!r}")

    @property
    def is_list(self):
        return isinstance(self.default, tuple)

    @property
    def kind(self):
        """The type of the value, or of a list's items: "bool", "int", "float" or "str"."""
        if not self.is_list:
            return _type_name(self.default)
        if self.item is not None:
            return _KINDS[self.item]
        return _type_name(self.default[0]) if self.default else "str"


def _groups(options):
    """[(group or None, {name: Opt})] of grouped {group: {name: Opt}} or a flat
    {name: Opt or default}; None holds the options outside any group."""
    groups, loose = [], {}
    for key, value in options.items():
        if isinstance(value, dict):
            groups.append((key, {n: o if isinstance(o, Opt) else Opt(o) for n, o in value.items()}))
        else:
            loose[key] = value if isinstance(value, Opt) else Opt(value)
    return ([(None, loose)] if loose else []) + groups


def _flat(options):
    """{name: Opt} from grouped {group: {name: Opt}} or a flat {name: Opt or default}."""
    return {name: opt for _, opts in _groups(options) for name, opt in opts.items()}


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


def _scalar(kind, text):
    """`text` as a bool/int/float/str; ValueError if it is not one."""
    if kind == "bool":
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def convert(name, text, opt):
    """The text of --name=value as a value of opt's type, checked against its choices and
    bounds; a list option's text `a,b,c` as a tuple (spaces around items and empty items
    dropped; `all`: every choice). Raises UsageError naming --name."""
    kind = opt.kind
    if not opt.is_list:
        try:
            value = _scalar(kind, text)
        except ValueError:
            expected = "a bool (True/False)" if kind == "bool" else f"{_article(kind)} {kind}"
            raise UsageError(f"--{name} expects {expected}, got {text!r}") from None
        check_value(name, value, opt)
        return value
    if text.strip() == "all" and opt.choices is not None and "all" not in opt.choices:
        return tuple(opt.choices)
    try:
        value = tuple(_scalar(kind, t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--{name} expects comma-separated {_PLURALS[kind]}, got {text!r}") from None
    check_value(name, value, opt, text)
    return value


def _shown(values, sep=", "):
    return sep.join(str(c) if c != "" else repr(c) for c in values)


def check_value(name, value, opt, text=None):
    """Raise UsageError unless value is one of opt.choices and within opt's bounds (each item
    of a list option; a list may be empty only if its default is). `text`: the list as the
    user wrote it, for the message."""
    if opt.is_list:
        listed = text.strip() if text is not None else ",".join(str(v) for v in value)
        if not value and opt.default:
            expected = (f"some of {_shown(opt.choices)}" if opt.choices is not None
                        else _PLURALS[opt.kind])
            raise UsageError(f"--{name} is empty; expected comma-separated {expected}")
        if opt.choices is not None:
            bad = [v for v in value if v not in opt.choices]
            if bad:
                raise UsageError(f"--{name}={listed!r}: unknown {_shown(bad)}; choose from "
                                 f"{_shown(opt.choices)}"
                                 + (" (or all)" if "all" not in opt.choices else ""))
        for v in value:
            _check_bounds(name, v, opt, f" (in --{name}={listed!r})")
        return
    if opt.choices is not None and value not in opt.choices:
        raise UsageError(f"--{name} must be one of {_shown(opt.choices)}; got {value!r}")
    _check_bounds(name, value, opt)


def _check_bounds(name, value, opt, where=""):
    for bound, ok, sign in ((opt.ge, lambda b: value >= b, ">="), (opt.gt, lambda b: value > b, ">"),
                            (opt.le, lambda b: value <= b, "<="), (opt.lt, lambda b: value < b, "<")):
        if bound is not None and not ok(bound):
            raise UsageError(f"--{name} must be {sign} {bound}; got {value!r}{where}")


def _check_type(name, value, opt):
    """A value from a config file (or built in Python) must have the option's type (an int is
    fine for a float; a list option takes a list/tuple of items, or an `a,b,c` string); the
    value in that type, checked against choices and bounds."""
    if opt.is_list:
        if isinstance(value, str):
            return convert(name, value, opt)
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"--{name} expects a list of {_PLURALS[opt.kind]}, got {value!r}")
        value = tuple(_typed(name, v, opt.kind, f"a list of {_PLURALS[opt.kind]}", value)
                      for v in value)
    else:
        value = _typed(name, value, opt.kind, None, value, none_ok=opt.default is None)
    check_value(name, value, opt)
    return value


def _typed(name, value, kind, expected, shown, none_ok=False):
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str) or (none_ok and value is None)
    if not ok:
        raise UsageError(f"--{name} expects {expected or _article(kind) + ' ' + kind}, got {shown!r}")
    return value


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


# ----------------------------------------------------------------------------- argparse


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing usage and exiting, so that
    run_main prints every mistake, found while parsing or after, the same one-line way."""

    def error(self, message):
        raise UsageError(message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """`--name=default  description [choices]`, one line per option, the descriptions in one
    column: an option is shown as it is written. The description (the program's docstring)
    keeps its own line breaks."""

    def __init__(self, prog):
        # no wrapping: an option and its description stay on one line, as grep finds them
        super().__init__(prog, max_help_position=10_000, width=10_000)

    def _format_action_invocation(self, action):
        if getattr(action, "opt", None) is not None:
            return f"{action.option_strings[0]}={action.metavar}"
        return super()._format_action_invocation(action)


def _shown_default(opt):
    if opt.is_list:
        if opt.choices is not None and opt.default == tuple(opt.choices) and opt.default:
            return "all"
        return repr(",".join(str(v) for v in opt.default))
    return repr(opt.default)


def _converter(name, opt):
    """argparse's `type=` for the option: convert(), its message passed on through
    ArgumentTypeError (which argparse turns into an ArgumentError for this argument)."""

    def to_value(text):
        try:
            return convert(name, text, opt)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return to_value


def _add_options(parser, options):
    for group, opts in _groups(options):
        target = parser if group is None else parser.add_argument_group(group)
        for name, opt in opts.items():
            extra = f" [{_shown(opt.choices, ' | ')}]" if opt.choices else ""
            action = target.add_argument(
                f"--{name}", dest=name, default=argparse.SUPPRESS, type=_converter(name, opt),
                metavar=_shown_default(opt),
                help=(opt.help + extra).replace("%", "%%") or None)  # argparse %-formats help
            action.opt = opt


_CONFIG_NOTE = "A positional argument is a config file of `name = value` lines, applied first."


def build_parser(options, prog, description=""):
    """The argparse parser of grouped (or flat) OPTIONS: one group per group, one `--name`
    per option (see the top of this file for what parse() adds around it)."""
    parser = _Parser(prog=prog, usage=f"{prog} [config_file.py ...] [--name=value ...]",
                     description=description.strip() or None, epilog=_CONFIG_NOTE,
                     formatter_class=_Formatter, allow_abbrev=False, exit_on_error=False)
    _add_options(parser, options)
    return parser


def help_text(options, prog, description=""):
    """The --help page: usage, description, then each group's options with default and help."""
    return build_parser(options, prog, description).format_help().rstrip("\n")


def _bare_flags(argv, flat):
    """A bare `--flag` of a bool option as `--flag=True` (see the top of this file)."""
    return [f"{a}=True" if a.startswith("--") and a[2:] in flat and flat[a[2:]].kind == "bool"
            and not flat[a[2:]].is_list else a for a in argv]


def _parse_known(parser, argv, flat):
    """argparse's (namespace, left-over arguments), its errors as UsageError."""
    try:
        return parser.parse_known_args(_bare_flags(argv, flat))
    except argparse.ArgumentError as err:
        name = (err.argument_name or "").lstrip("-")
        if name in flat and err.message.startswith("expected one argument"):
            raise UsageError(f"--{name} needs a value: --{name}=<{flat[name].kind}>") from None
        # an option's own converter already wrote the whole message
        raise UsageError(err.message if name in flat else str(err)) from None


def _config(namespace, extras, flat):
    """Defaults, then the config files among `extras` in order, then the options given."""
    files = []
    for arg in extras:
        if arg.startswith("--") and len(arg) > 2:
            raise _unknown(arg[2:].partition("=")[0], list(flat))
        if arg.startswith("-"):
            raise UsageError(f"expected --name=value, got {arg!r}")
        files.append(arg)
    config = {name: opt.default for name, opt in flat.items()}
    for path in files:
        for name, value in _read_config_file(path).items():
            if name not in flat:
                raise _unknown(name, list(flat), where=f" in {path}")
            config[name] = _check_type(name, value, flat[name])
    config.update({k: v for k, v in vars(namespace).items() if k in flat})
    return config


def parse(argv, options, prog=None, description=""):
    """Config files and `--name=value` arguments applied to the options' defaults -> a dict.

    `argv` None means sys.argv[1:]. `-h`/`--help` prints help_text and exits with status 0.
    Raises UsageError for an unknown name, a value of the wrong type, outside its choices or
    bounds, a malformed argument or a missing / bad config file.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    flat = _flat(options)
    parser = build_parser(options, prog or Path(sys.argv[0]).name, description)
    namespace, extras = _parse_known(parser, argv, flat)
    return _config(namespace, extras, flat)


parse_overrides = parse  # the older name


def parse_command(argv, commands, prog, description=""):
    """`prog COMMAND [config_file.py ...] [--name=value ...]` -> (COMMAND, its config dict).

    `commands` is {name: (one-line help, OPTIONS)}; each command's options are parsed as
    parse() parses a program's. `prog -h` lists the commands, `prog COMMAND -h` a command's
    options (both exit 0). Raises UsageError for a missing or unknown command (the closest
    one suggested) and for every mistake parse() names.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    names = list(commands)
    if not argv:
        raise UsageError(f"expected a command: {', '.join(names)} (see {prog} --help)")
    if argv[0] not in commands and argv[0] not in ("-h", "--help"):
        close = difflib.get_close_matches(argv[0], names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown command {argv[0]!r}{hint}; expected one of {', '.join(names)}")
    parser = _Parser(prog=prog, usage=f"{prog} <command> [config_file.py ...] [--name=value ...]",
                     description=description.strip() or None, formatter_class=_Formatter,
                     epilog=f"`{prog} <command> --help` lists a command's options.",
                     allow_abbrev=False, exit_on_error=False)
    sub = parser.add_subparsers(title="commands", dest="_command", metavar="<command>",
                                parser_class=_Parser)
    for name, (help_, options) in commands.items():
        _add_options(sub.add_parser(name, help=help_, prog=f"{prog} {name}",
                                    usage=f"{prog} {name} [config_file.py ...] [--name=value ...]",
                                    description=help_, epilog=_CONFIG_NOTE,
                                    formatter_class=_Formatter, allow_abbrev=False,
                                    exit_on_error=False), options)
    flat = _flat(commands[argv[0]][1]) if argv[0] in commands else {}
    namespace, extras = _parse_known(parser, argv, flat)
    return namespace._command, _config(namespace, extras, flat)


def check(config, options):
    """For a config dict built in Python (not parsed): every name known, every value of its
    option's type, choices and bounds; raises UsageError like parse() would."""
    flat = _flat(options)
    for name, value in config.items():
        if name not in flat:
            raise _unknown(name, list(flat))
        _check_type(name, value, flat[name])


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
