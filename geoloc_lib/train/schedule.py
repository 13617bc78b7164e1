"""Learning-rate schedules and weight averaging of the heads."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from geoloc_lib.run.spec import LR_SCHEDULES


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str, warmup_steps: int = 0) -> float:
    """Learning rate of training step `step` (counted from 0 over the whole run).

    A linear warm-up over the first `warmup_steps`, then constant or a cosine decay to 0 at `total_steps`.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def exponential_average(module: torch.nn.Module, decay: float) -> AveragedModel:
    """A copy of `module` whose parameters follow decay x average + (1 - decay) x current after each
    `update_parameters(module)`; buffers are copied, not averaged."""
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
