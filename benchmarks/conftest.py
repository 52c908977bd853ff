"""pytest-benchmark setup for the CPU path's timings (``make benchmark``).

These benchmarks live outside ``tests/`` (pyproject's ``testpaths``), so ``make test`` never
collects them. One torch thread, as nanoGPT's CPU comparison runs (``bench.nanogpt_cpu``):
timings on a shared machine vary less, and a slowdown in our code is not hidden by threads.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
