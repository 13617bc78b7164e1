"""The loss's weights and soft-label choices, in a module without torch: a run's settings take their defaults
from here (`model/losses.py` computes the loss)."""

from __future__ import annotations

from dataclasses import dataclass

SOFT_LABEL_SUPPORTS = ("province", "neighbours")  # soft geocell targets over the province, or the neighbours


@dataclass
class LossWeights:
    province: float = 0.5
    geocell: float = 1.0
    offset: float = 1.0
    aux: float = 0.1


def offset_ramp(epoch: int, ramp_epochs: int = 5) -> float:
    """Weight of the offset term in `epoch` (counted from 1): min(1, epoch / ramp_epochs)."""
    return min(1.0, epoch / ramp_epochs)
