"""Every command line the README and docs/ show names a real program, subcommand, config file
and options that program declares.

A page that no longer matches the code is a bug: a renamed module (``bench.compile_report``
became ``tools.compile_report``) or option leaves a command a reader copies that fails. The
commands are read from code blocks and inline code (``python -m ...``, ``python train.py ...``,
``torchrun ... train.py ...``, continuation lines joined) and checked against the programs'
declared options, without running them (most train models or need a GPU). The lines a page
shows on purpose as mistakes are listed below, and must stay mistakes. Every relative link and
image on those pages points at a file that exists (and a heading, where it names one).
"""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from gpt.cli import Opt

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# (page, command) a page shows on purpose to demonstrate the error it gives
MISTAKES = {
    ("docs/training.md", "python train.py --max_iter=10"),
}
# programs run with options that are not ours
NOT_OURS = {"pytest"}


def _code_lines(text):
    """The lines of fenced code blocks and the inline code spans of a markdown page."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield line.removeprefix("$ ").strip()
        else:
            yield from re.findall(r"`([^`]+)`", line)


def _commands(page):
    """[(page name, command line)] with continuation lines joined and comments dropped."""
    found, pending = [], ""
    for line in _code_lines(page.read_text()):
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if re.match(r"(python3? (-m \S+|train\.py)|torchrun .*train\.py)", line):
            found.append((page.relative_to(ROOT).as_posix(), line))
    return found


COMMANDS = sorted({c for page in PAGES for c in _commands(page)})


def _program(words):
    """(module name, the words after it) of a command line's words."""
    if words[0] == "torchrun":
        i = words.index("train.py")
        return "train", words[i + 1:]
    if words[1] == "train.py":
        return "train", words[2:]
    return words[2], words[3:]


def _option_names(declared):
    """The option names in an OPTIONS-like structure: dicts (grouped or not) of ``Opt``,
    possibly inside a subcommand's tuple."""
    if isinstance(declared, dict):
        names = set()
        for name, value in declared.items():
            names |= {name} if isinstance(value, Opt) else _option_names(value)
        return names
    if isinstance(declared, (tuple, list)):
        return set().union(*(_option_names(v) for v in declared))
    return set()


def _main_module(package):
    """The module that declares a package's command line: its __main__ when that only runs
    under ``python -m``, else the module __main__ takes ``main`` from (importing a __main__
    that runs at import would run the program)."""
    source = (Path(package.__file__).parent / "__main__.py").read_text()
    if 'if __name__ == "__main__"' in source:
        return importlib.import_module(package.__name__ + ".__main__")
    found = re.search(r"^from (\S+) import .*\bmain\b", source, re.M)
    assert found, f"{package.__name__}/__main__.py: cannot tell where its main comes from"
    name = found.group(1)
    return importlib.import_module(name if not name.startswith(".") else
                                   package.__name__ + name)


def _problems(module_name, args):
    """What is wrong with running ``module_name`` with ``args``: a list of strings."""
    if module_name in NOT_OURS:
        return []
    if importlib.util.find_spec(module_name) is None:
        return [f"no module {module_name}"]
    module = importlib.import_module(module_name)
    if not hasattr(module, "OPTIONS") and not hasattr(module, "COMMANDS"):
        if not hasattr(module, "__path__"):
            return [f"{module_name} declares no OPTIONS (its options are not inspectable)"]
        module = _main_module(module)
    args = [a for a in args if a != "..."]  # "and more options"
    positional = [a for a in args if not a.startswith("-")]
    options = [a for a in args if a.startswith("-")]
    commands = getattr(module, "COMMANDS", None)
    declared = getattr(module, "OPTIONS", None)
    problems = []
    if commands is not None:
        if not args:  # the program's name in a sentence ("`python -m gpt.scaling` answers")
            return []
        if not positional or positional[0] not in commands:
            return [f"expected one of the commands {sorted(commands)}, got {positional[:1]}"]
        declared = commands[positional.pop(0)]
    elif module_name == "gpt.checkpoint":  # one subcommand, its options under OPTIONS["export"]
        if positional[:1] != ["export"]:
            return [f"expected the command export, got {positional[:1]}"]
        positional.pop(0)
    for path in positional:  # config files, as train.py reads them
        if not (ROOT / path).is_file():
            problems.append(f"{path}: no such config file in the repository")
    names = _option_names(declared) | {"help"}
    for option in options:
        name = option.lstrip("-").split("=", 1)[0]
        if option != "-h" and name not in names:
            problems.append(f"--{name} is not an option of {module_name}")
    return problems


def test_the_pages_show_commands():
    """The extraction works: the README's two commands and a few known others are found."""
    lines = {line for _, line in COMMANDS}
    assert any(line.startswith("python train.py") for line in lines)
    assert any(line.startswith("torchrun") for line in lines)
    assert any(line.startswith("python -m gpt.events predict") for line in lines)
    assert len(COMMANDS) > 50


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_command_uses_real_program_and_options(page, line):
    if "<" in line or "$(" in line:  # a placeholder (<command>) or a Makefile variable
        pytest.skip("a template, not a command")
    words = shlex.split(line.replace("\\n", " "))
    if words[-1].endswith(":") or any(w.endswith(":") and w.startswith("gpt.") for w in words):
        pytest.skip("an error message quoting a program")
    problems = _problems(*_program(words))
    if (page, line) in MISTAKES:
        assert problems, f"{page} shows {line!r} as a mistake, but it is valid now"
    else:
        assert not problems, f"{page}: {line}\n  " + "\n  ".join(problems)


def _links(page):
    """[(target path, anchor)] of the page's relative markdown links and images, outside code."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found


def _anchors(page):
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


LINKS = [(page, path, anchor) for page in PAGES for path, anchor in _links(page)]


def test_the_pages_have_links():
    assert len(LINKS) > 20


@pytest.mark.parametrize("page, path, anchor", LINKS,
                         ids=[f"{p.relative_to(ROOT).as_posix()}: {t}#{a}" for p, t, a in LINKS])
def test_link_targets_exist(page, path, anchor):
    """A relative link or image resolves from the page's folder (a page moved into docs/ keeps
    README-relative links that point nowhere), and an anchor names one of the target's headings."""
    target = (page.parent / path).resolve() if path else page
    assert target.exists(), f"{page.relative_to(ROOT)}: link to {path} (no such file)"
    if anchor and target.suffix == ".md":
        assert anchor in _anchors(target), f"{page.relative_to(ROOT)}: {path}#{anchor} (no such heading)"
