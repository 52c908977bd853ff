"""Writing files so that a crash never leaves half of one: the one atomic-write helper.

Every file this project writes (JSON records, text tables, plots, checkpoints, downloads)
goes to a temporary name beside its destination and is renamed over it when complete.
`os.replace` is atomic on POSIX and Windows when both names are on one filesystem, which a
sibling temporary name guarantees, so a reader sees the old file or the new one, never a mix.

    write_text(path, "...")                 # str
    write_bytes(path, b"...")               # bytes
    write_json(path, {"a": 1})              # JSON, indent 2, trailing newline
    with atomic_path(path) as tmp:          # anything that writes to a path:
        fig.savefig(tmp, dpi=110)           #   the temporary name keeps the suffix (.png),
        torch.save(state, tmp)              #   so writers that read it still do
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json"]


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix); on success rename it over `path`,
    on an exception delete it and leave `path` as it was. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text):
    """Write `text` (UTF-8) to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path, obj, indent=2, **dumps_kwargs):
    """Write `obj` as JSON (with a trailing newline) to `path` atomically; return the path."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")
