"""`--name=value` command-line overrides for a dict of defaults (nanoGPT's configurator).

A value is parsed with the type of its default: unknown names and values of the wrong type
are errors, never silently ignored. A positional argument names a Python config file
(e.g. `config/train_shakespeare_char.py`) whose top-level assignments override the defaults
first, exactly as nanoGPT's `configurator.py` allows.
"""

import ast
from pathlib import Path


class ConfigError(ValueError):
    """A bad command-line or config-file value."""


def _convert(name, text, default):
    if isinstance(default, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{name} expects a bool (True/False), got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{name} expects an int, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--{name} expects a float, got {text!r}") from None
    if default is None or isinstance(default, str):
        return text
    raise ConfigError(f"--{name}: cannot parse a value for a default of type {type(default).__name__}")


def _check_type(name, value, default):
    """For values from a config file: the type must match the default's (int accepted for float)."""
    if default is None or isinstance(default, str):
        ok = isinstance(value, str) or (default is None and value is None)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{name} expects a {type(default).__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def _read_config_file(path):
    """Top-level `name = literal` assignments of a Python file, read without executing it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    values = {}
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring carries no setting
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path}:{node.lineno}: only `name = value` assignments are allowed")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ConfigError(f"{path}:{node.lineno}: the value must be a literal") from None
    return values


def parse_overrides(argv, defaults):
    """Return a copy of `defaults` updated from config files and `--name=value` arguments."""
    config = dict(defaults)
    for arg in argv:
        if not arg.startswith("--"):
            for name, value in _read_config_file(arg).items():
                if name not in defaults:
                    raise ConfigError(f"unknown config name {name!r} in {arg}; known: {sorted(defaults)}")
                config[name] = _check_type(name, value, defaults[name])
            continue
        name, sep, text = arg[2:].partition("=")
        if not sep:
            raise ConfigError(f"expected --name=value, got {arg!r}")
        if name not in defaults:
            raise ConfigError(f"unknown config name {name!r}; known: {sorted(defaults)}")
        config[name] = _convert(name, text, defaults[name])
    return config
