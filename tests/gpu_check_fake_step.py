"""A stand-in step for tests of ``bench.gpu_check``'s scheduler: ``python -m
tests.gpu_check_fake_step ACTION`` where ACTION is ok (exit 0), fail (exit 3), hang (sleep
until SIGINT) or deaf (ignore SIGINT: only SIGKILL stops it)."""

import signal
import sys
import time

action = sys.argv[1]
print(f"fake step: {action}", flush=True)
if action == "fail":
    raise SystemExit(3)
if action == "deaf":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
if action in ("hang", "deaf"):
    time.sleep(3600)
