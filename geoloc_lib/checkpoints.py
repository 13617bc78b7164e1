"""Atomic file writes, and reading a checkpoint as untrusted input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str):
    """A temporary file beside `path`, flushed to disk and renamed over it when the block ends.

    A kill at any moment leaves either the old file or the new one, never a torn file; the temporary
    name is unique, so two writers never share one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    with _atomic_file(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: Path, text: str) -> None:
    with _atomic_file(path, "w") as f:
        f.write(text)


def atomic_copy(source: Path, path: Path) -> None:
    with _atomic_file(path, "wb") as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)


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
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
