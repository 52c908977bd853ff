"""`python -m gpt.scaling <command>`: the command line is `cli.py`; a usage error is one line."""

from gpt.cli import run_main
from gpt.scaling.cli import PROG, main

run_main(main, PROG)
