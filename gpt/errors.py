"""The one exception for a user's mistake, importable by library and command line alike.

`UsageError` is a bad option, a bad value, a missing or damaged file: something the user can
fix, not a bug. Library modules raise it; `gpt.cli.run_main` prints it as one line
(`prog: error: ...`) and exits with status 2, as argparse does. It is a ValueError, so library
callers can catch it as one. It lives here, not in `gpt.cli`, so that a library module never
imports the command-line module.
"""

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A mistake of the user's (bad option, bad value, missing or damaged file), not a bug."""
