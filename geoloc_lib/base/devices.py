"""Which device to run on, and the mixed-precision context that goes with it."""

from __future__ import annotations

import contextlib

import torch


def select_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, then Apple MPS, then the CPU; any other name must be a device this machine has."""
    if name != "auto":
        return _available(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _available(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {name!r} is not a device name ({err}); use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"device {name!r} is not available: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use auto, cpu, or an index below that count"
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {name!r} is not available on this machine; use auto or cpu")
    return device


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, full precision elsewhere.

    The autocast weight cache is off: cached casts and CUDA-graph capture do not mix (pytorch#71631).
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
