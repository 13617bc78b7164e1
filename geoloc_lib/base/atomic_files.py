"""Atomic file writes, and reading a checkpoint as untrusted input.

Every file a run, an evaluation or a map writes goes through `_atomic_file`: written under a temporary
name beside its target, flushed, then renamed over it, with the permissions the user's umask gives a new
file (not mkstemp's private 0600, so a shared cache stays readable to the group).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch


class FileWriteError(OSError):
    """A file could not be written (most often: the disk is full); the old file, if any, is unchanged."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"could not write {path} ({reason}); is the disk full? The previous version is kept."
        )


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str):
    """A temporary file beside `path`, flushed to disk and renamed over it when the block ends.

    A kill at any moment leaves either the old file or the new one, never a torn file; the temporary
    name is unique, so two writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, FileWriteError):
            raise
        raise FileWriteError(path, err.strerror or str(err)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_texts(files: dict[Path, str]) -> None:
    """Several text files replaced together: all are written to temporary names first, then renamed one
    after the other, so a kill or a full disk before the renames leaves every old file as it was."""
    written: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            written.append((tmp, path))
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in written:
        os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    with _atomic_file(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:  # torch reports a failed write as "enforce fail at inline_container.cc"
            raise FileWriteError(path, str(err).splitlines()[0]) from err


def atomic_write_text(path: Path, text: str) -> None:
    with _atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_file(path, "wb") as f:
        f.write(data)


def atomic_link(source: Path, path: Path) -> None:
    """`path` becomes another name of `source` (a hard link: no second copy on disk), atomically; where the
    file system has no hard links, a copy."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.link"
    try:
        os.link(source, tmp)
    except OSError:
        with _atomic_file(path, "wb") as f, open(source, "rb") as src:
            shutil.copyfileobj(src, f)
        return
    os.replace(tmp, path)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (=, +, -, @ first) get a leading apostrophe."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            values = out[column]
            risky = values.str.startswith(FORMULA_STARTS).fillna(False).astype(bool)  # NaN and non-text: safe
            out[column] = values.where(~risky, "'" + values.astype(str))
    return out


def atomic_write_csv(frame: pd.DataFrame, path: Path, index: bool = False, **options) -> None:
    """A table as CSV, written atomically, with text cells that could run as formulas neutralised."""
    atomic_write_text(path, neutralise_formulas(frame).to_csv(index=index, **options))


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def to_plain(value):
    """Numpy scalars and nested containers -> plain Python, so checkpoints load with weights_only=True."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint as untrusted input: tensors and plain containers only (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own text advises weights_only=False: the wrong advice for a file that may be hostile
        if "global" in str(err):
            raise ValueError(
                f"{path} holds Python objects besides tensors and plain containers, which could run code when "
                "loaded, so it is refused (the workbench never writes such a checkpoint); use one it wrote"
            ) from None
        raise ValueError(
            f"{path} is not a readable checkpoint (not a file torch wrote); use one the workbench wrote"
        ) from None
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first})") from err
