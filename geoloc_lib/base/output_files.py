"""One check for every file a user names as a command's output: it never lands on what the command reads or
on what a run or a data folder owns.

An output is refused (a `CommandError` naming the option, the file and the fix) when it is one of the
command's inputs (the same file by any path or link), when it lies inside a run folder or a data folder, when
it is a folder, or when it is an existing file of another kind (a photo named where a CSV was meant: the shell's
`*.jpg` after `--csv` is an easy slip). `force` writes anyway; the write itself stays atomic.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from geoloc_lib.base.command_line import CommandError
from geoloc_lib.base.folder_marks import DATA_FOLDER_MARKS, RUN_FOLDER_MARKS


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def owning_folder(path: Path) -> tuple[str, Path] | None:
    """("run", folder) or ("data", folder) when `path` lies inside one, else None."""
    for folder in Path(os.path.realpath(path)).parents:
        if all((folder / mark).is_file() for mark in RUN_FOLDER_MARKS):
            return "run", folder
        if all((folder / mark).is_file() for mark in DATA_FOLDER_MARKS):
            return "data", folder
    return None


def check_output(
    path: str | os.PathLike,
    option: str,
    inputs: Iterable[str | os.PathLike] = (),
    suffixes: tuple[str, ...] = (),
    force: bool = False,
) -> Path:
    """The output `path` of `option`, or a CommandError saying why the command will not write it.

    `suffixes` are the kinds the option writes (".csv"): an existing file with another suffix is refused.
    """
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{option} {path}: a folder, not a file; name a file such as {path / 'out'}")
    if force:
        return path
    again = "choose another file, or pass --force to write over it"
    for item in inputs:
        if path.exists() and Path(item).exists() and _same_file(path, Path(item)):
            raise CommandError(f"{option} {path}: that is one of the command's inputs; {again}")
    owner = owning_folder(path)
    if owner is not None:
        kind, folder = owner
        raise CommandError(
            f"{option} {path}: it lies inside the {kind} folder {folder}, whose files the workbench owns; "
            f"write it elsewhere (or pass --force)"
        )
    if path.exists() and suffixes and path.suffix.lower() not in suffixes:
        raise CommandError(
            f"{option} {path}: an existing {path.suffix or 'suffix-less'} file, not a {'/'.join(suffixes)} "
            f"file; {again}"
        )
    if not path.resolve().parent.is_dir():
        raise CommandError(f"{option} {path}: its folder does not exist; create it or name another file")
    return path
