"""Shared pytest setup: per-session random seed, TRITON_INTERPRET on CPU, the gpu marker.

Inputs are fresh random numbers every run; the session seed is printed in the header and,
when a test fails, again at the end (``-q`` hides the header), and each test is seeded from
it and its own node id, so ``GPT_TEST_SEED=<seed> pytest <test id>`` reproduces a failure
exactly, even when that test runs alone.
"""

import os
import random
import zlib

import numpy as np
import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when `gpt_kernels` is first
# imported: set it before any test module imports it, so CPU-only machines run the real
# Triton kernels in the interpreter (DESIGN.md section 5). An explicit value is kept.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_SEED_ENV = "GPT_TEST_SEED"
SESSION_SEED = (
    int(os.environ[_SEED_ENV]) if os.environ.get(_SEED_ENV)
    else random.SystemRandom().randrange(2**31)
)


def pytest_report_header(config):
    return (f"{_SEED_ENV}={SESSION_SEED} (set it to reproduce these inputs); "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}; "
            f"cuda={torch.cuda.is_available()}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The seed, where a failing run shows it: in the final summary, also under -q."""
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(
            f"{_SEED_ENV}={SESSION_SEED}: rerun a failing test with its inputs as "
            f"{_SEED_ENV}={SESSION_SEED} python -m pytest <test id>")


@pytest.fixture(autouse=True)
def seed(request):
    """Seed torch, numpy and random from the session seed and this test's id; return it."""
    value = (SESSION_SEED ^ zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    return value


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
