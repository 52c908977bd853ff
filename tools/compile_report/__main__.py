"""``python -m tools.compile_report``: the command line (``cli.py``); a usage error is one line."""

from gpt.cli import run_main
from tools.compile_report.cli import PROG, main

run_main(main, PROG)
