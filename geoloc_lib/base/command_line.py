"""What every command line shares: a refusal is one line that names the file or option and the fix, and the
command exits with status 2, leaving every file as it was.

`CommandParser` turns argparse's usage-plus-error into that one line; `run_command` runs a command's body and
turns the library's refusals (the `ValueError`s, `OSError`s and `RuntimeError`s it raises with a message for
the user) into it. Set GEOLOC_TRACEBACK=1 to see the traceback behind a refusal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

REFUSED = 2  # the exit status of every refusal (argparse's own)
TRACEBACK_VARIABLE = "GEOLOC_TRACEBACK"


class CommandError(Exception):
    """A problem that stops a command; its message is the whole line the user reads."""


def one_line(error: BaseException) -> str:
    """An exception's message as one line: its lines joined, an OSError's file named."""
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in str(error):
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `prog: error: message (prog --help lists the options)`."""

    def error(self, message: str):
        self.exit(REFUSED, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body and return its exit status; a refusal prints one line on stderr and returns 2."""
    try:
        return body() or 0
    except (CommandError, ValueError, OSError, RuntimeError) as err:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return REFUSED


def run_main(prog: str, cli: argparse.ArgumentParser, run, argv: list[str] | None = None) -> None:
    """A command line's main: `argv` parsed by `cli`, then `run(args)`; a refusal or a non-zero status ends the
    process with that status."""
    args = cli.parse_args(argv)
    status = run_command(prog, lambda: run(args))
    if status:
        raise SystemExit(status)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text) if text.lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text!r}")
    return value
