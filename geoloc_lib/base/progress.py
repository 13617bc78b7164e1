"""Progress bars: tqdm's widget bars in an interactive notebook, text bars everywhere else.

A notebook executed headless (papermill: `make demo`, the tests) keeps only the first frame of a widget
bar ("0% 0/3") in its saved output, so `GEOLOC_TEXT_PROGRESS=1` (set by the demo pipeline and the tests)
switches to text bars, whose saved output ends on their final state.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

TEXT_PROGRESS_ENV = "GEOLOC_TEXT_PROGRESS"


def progress_bar(*args, **kwargs):
    """A tqdm bar (same arguments as tqdm) of the kind that suits where the code runs.

    Text bars inside a notebook kernel go to stdout: a saved notebook shows stderr as a pink warning box, and a
    finished bar is no warning. On a command line they stay on stderr, out of the way of the output."""
    if not os.environ.get(TEXT_PROGRESS_ENV):
        return auto_tqdm(*args, **kwargs)
    if "ipykernel" in sys.modules and "file" not in kwargs:
        kwargs["file"] = sys.stdout
    return text_tqdm(*args, **kwargs)
