"""A pytest plugin that keeps each test's result as it finishes: one JSON line per test,
appended and flushed to the file named by ``GPT_TEST_LOG`` (nothing when it is unset).

pytest writes its junit XML only when the session ends, so a run stopped by a time limit
leaves none; this file keeps every finished test. ``bench.gpu_check`` loads it with
``-p bench.pytest_progress``. Under pytest-xdist the controller receives every worker's
reports and writes them; the workers write nothing.
"""

import json
import os

_PATH = None


def pytest_configure(config):
    global _PATH
    worker = hasattr(config, "workerinput")  # an xdist worker: the controller writes
    _PATH = None if worker else os.environ.get("GPT_TEST_LOG") or None


def pytest_runtest_logreport(report):
    # a test's result is its call, or the setup / teardown phase that failed or skipped it
    if _PATH is None or not (report.when == "call" or report.outcome != "passed"):
        return
    outcome = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
    line = dict(nodeid=report.nodeid, when=report.when, outcome=outcome,
                seconds=round(report.duration, 3))
    with open(_PATH, "a") as f:
        f.write(json.dumps(line) + "\n")
