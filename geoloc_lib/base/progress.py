"""Progress bars: tqdm's widget bars in an interactive notebook, text bars everywhere else; and progress lines
for the terminal that started a notebook's kernel.

A notebook executed headless (papermill: `make demo`, the tests) keeps only the first frame of a widget
bar ("0% 0/3") in its saved output, so `GEOLOC_TEXT_PROGRESS=1` (set by the demo pipeline and the tests)
switches to text bars, whose saved output ends on their final state.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

TEXT_PROGRESS_ENV = "GEOLOC_TEXT_PROGRESS"
EVERY_ENV = "GEOLOC_PROGRESS_EVERY_S"  # seconds between a long loop's lines on the terminal
EVERY_S = 60.0


def progress_bar(*args, **kwargs):
    """A tqdm bar (same arguments as tqdm) of the kind that suits where the code runs.

    Text bars inside a notebook kernel go to stdout: a saved notebook shows stderr as a pink warning box, and a
    finished bar is no warning. On a command line they stay on stderr, out of the way of the output."""
    if not os.environ.get(TEXT_PROGRESS_ENV):
        return auto_tqdm(*args, **kwargs)
    if "ipykernel" in sys.modules and "file" not in kwargs:
        kwargs["file"] = sys.stdout
    return text_tqdm(*args, **kwargs)


_TERMINAL: list = []  # the kernel's terminal, opened once (empty: not looked up yet)


def kernel_terminal():
    """The terminal that started this notebook kernel (papermill's, or JupyterLab's server), as a text stream,
    or None outside a kernel. ipykernel sends stdout and stderr to the notebook and keeps a copy of the
    original stderr's descriptor (`_original_stdstream_copy`), which still leads to that terminal; where it does
    not watch the descriptors (under pytest), descriptor 2 itself still leads there."""
    if not _TERMINAL:
        descriptor = getattr(sys.stderr, "_original_stdstream_copy", None)
        if descriptor is None and sys.__stderr__ is not None:
            descriptor = sys.__stderr__.fileno()
        stream = None
        if "ipykernel" in sys.modules and isinstance(descriptor, int):
            stream = os.fdopen(os.dup(descriptor), "w", buffering=1, encoding="utf-8", errors="replace")
            stream.write("\n")  # papermill's cell counter leaves its line open: ours start on their own
        _TERMINAL.append(stream)
    return _TERMINAL[0]


def terminal_line(text: str) -> None:
    """One line for whoever watches the command that runs a notebook (`papermill ...`), which otherwise shows
    only its cell counter; nothing outside a kernel, where the log's own lines reach the terminal."""
    stream = kernel_terminal()
    if stream is not None:
        stream.write(text + "\n")


def duration_text(seconds: float) -> str:
    """A time left as a person reads it: seconds under 90 s, minutes under 90 min, then hours."""
    minutes = round(seconds / 60)
    return (
        f"{seconds:.0f} s" if seconds < 90 else f"{minutes} min" if minutes < 90 else f"{minutes / 60:.1f} h"
    )


def every_seconds() -> float:
    """The seconds between a long loop's lines on the terminal: `GEOLOC_PROGRESS_EVERY_S`, or 60."""
    value = os.environ.get(EVERY_ENV) or str(EVERY_S)
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"{EVERY_ENV} is a number of seconds between progress lines, not {value!r}"
        ) from None


class TerminalTicker:
    """A line on the kernel's terminal at most every `GEOLOC_PROGRESS_EVERY_S` seconds (60) of a long loop, so
    that whoever watches `papermill ...` sees an epoch of many minutes move; the loop's own bar shows each step
    in the notebook. `clock` is there for the tests."""

    def __init__(self, label: str, total: int, initial: int = 0, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.initial, self.clock = label, total, initial, clock
        self.every = every_seconds()
        self.start = self.last = clock()

    def update(self, done: int) -> str | None:
        """After `done` of `total` steps (`initial` of them done before this session): the line written, or None
        when the last one is too recent or the loop has ended."""
        now = self.clock()
        if done >= self.total or done <= self.initial or now - self.last < self.every:
            return None
        self.last, spent = now, now - self.start
        left = spent / (done - self.initial) * (self.total - done)  # at this session's pace
        line = (
            f"{self.label} {done}/{self.total} ({100 * done / self.total:.0f} %), {duration_text(spent)} in, "
            f"about {duration_text(left)} left"
        )
        terminal_line(line)
        return line
