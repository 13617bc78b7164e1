"""What ingest reads: every entry under a photo folder, or every row of a CSV, as a path against one root
resolved once, with the reason why an entry cannot be read as a photo.

A folder is walked without following links to folders (a link may lead back up, or anywhere); links to files
are read. For a CSV, each photo's folder is resolved (links included) and its name kept, so a list exported
from a data folder, whose paths pass through its `photos` link, names the photos where they really are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd

from geoloc_lib.base.user_tables import read_user_csv
from geoloc_lib.data.photo_exif import UNREADABLE

NOT_A_FILE = "not a regular file"
BAD_NAME = "file name not UTF-8"
LISTING_COLUMNS = ("path", "csv_latitude", "csv_longitude", "csv_position", "reason", "detail")
DECIMAL_COMMA = r"^(-?\d+),(\d+)$"  # "33,72" as a spreadsheet in many locales writes 33.72
SPECIAL_FILES = (
    (
        stat.S_ISDIR,
        "a folder reached through a link (not followed: ingest that folder itself, or move its photos in)",
    ),
    (stat.S_ISFIFO, "a named pipe (FIFO), not a photo file"),
    (stat.S_ISSOCK, "a socket, not a photo file"),
    (stat.S_ISCHR, "a device, not a photo file"),
    (stat.S_ISBLK, "a device, not a photo file"),
)


class IngestError(ValueError):
    """The photos cannot become a data folder; the message says why and what to do."""


def shown(path: str) -> str:
    """A path as text that any file can hold: bytes of a name that are not UTF-8 become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def entry_problem(path: str) -> tuple[str, str] | None:
    """(reason, detail) when `path` cannot be read as a photo file, else None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return (
            BAD_NAME,
            "rename it: its name is not UTF-8 text (old cameras and Windows shares write such names)",
        )
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError as err:
        if os.path.islink(path):
            return NOT_A_FILE, "a link that leads nowhere (its target is missing, or the links form a loop)"
        return UNREADABLE, f"{err.strerror} (the CSV names a file that is not there?)"
    if stat.S_ISREG(mode):
        return None
    return NOT_A_FILE, next((text for test, text in SPECIAL_FILES if test(mode)), "not a photo file")


def _listing(paths: list[str], problems: dict[str, tuple[str, str]], **csv_columns) -> pd.DataFrame:
    judged = [problems.get(p) or entry_problem(p) or ("", "") for p in paths]
    frame = pd.DataFrame({"path": paths, "csv_latitude": float("nan"), "csv_longitude": float("nan")})
    frame = frame.assign(**({"csv_position": ""} | csv_columns))
    frame["reason"] = [reason for reason, _ in judged]
    frame["detail"] = [detail for _, detail in judged]
    return frame[list(LISTING_COLUMNS)]


def list_folder(folder: Path) -> pd.DataFrame:
    """Every entry under `folder` (recursive, in path order) as LISTING_COLUMNS."""
    root = folder.resolve()
    entries: list[str] = []
    problems: dict[str, tuple[str, str]] = {}

    def unreadable(err: OSError) -> None:
        entries.append(err.filename)
        problems[err.filename] = (NOT_A_FILE, f"a folder that cannot be read ({err.strerror})")

    for here, dirs, names in os.walk(root, onerror=unreadable):
        links = [d for d in dirs if os.path.islink(os.path.join(here, d))]
        dirs[:] = [d for d in dirs if d not in links]
        entries += [os.path.join(here, name) for name in names + links]
    if not entries:
        raise IngestError(f"{folder}: the folder holds no files; point at the folder of your photos")
    return _listing(sorted(entries), problems)


def _resolved_folder(path: str) -> str:
    """`path` absolute, its folder resolved through every link, its own name kept."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def list_csv(source: Path, image: str, latitude: str, longitude: str) -> pd.DataFrame:
    """Every row of a CSV of photos (paths relative to the CSV's folder) as LISTING_COLUMNS, with the CSV's
    position where both its numbers read (a decimal comma too)."""
    table = read_user_csv(source, dtype=str, keep_default_na=False)
    missing = [c for c in (image, latitude, longitude) if c not in table.columns]
    if missing:
        raise IngestError(
            f"{source}: no column(s) {missing} (it has {list(table.columns)}); name the columns with "
            "--image-column, --latitude-column and --longitude-column"
        )
    texts = [table[c].str.strip() for c in (latitude, longitude)]
    lat, lon = (
        pd.to_numeric(t.str.replace(DECIMAL_COMMA, r"\1.\2", regex=True), errors="coerce") for t in texts
    )
    paths, problems = [], {}
    for line, name in enumerate(table[image].str.strip(), start=2):  # the header is line 1
        if name:
            paths.append(_resolved_folder(str(source.parent / name)))
        else:
            paths.append(f"{source}:{line}")
            problems[paths[-1]] = (NOT_A_FILE, f"line {line} of the CSV names no image")
    position = [f"{a!r}, {b!r}" if a or b else "" for a, b in zip(*texts, strict=True)]
    frame = _listing(paths, problems, csv_position=position)
    frame["csv_latitude"], frame["csv_longitude"] = lat.to_numpy(), lon.to_numpy()
    return frame
