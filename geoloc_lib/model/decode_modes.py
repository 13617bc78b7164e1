"""The decoding modes and settings (`DecodeConfig`), in a module without torch: command lines offer the modes at
once, and a run's settings take their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

DECODE_MODES = ("hierarchical", "joint", "mixture")  # see model/decoding.py
MODE_HELP = (
    "how the top provinces x top cells hypotheses become one place: 'joint' takes the most probable "
    "hypothesis (p(province) x p(cell | province)); 'hierarchical' the most probable province, then its most "
    "probable cell; 'mixture' the probability-weighted mean of all hypotheses (it can fall between cells). "
    "Default: the mode the run was trained with."
)


@dataclass(frozen=True)
class DecodeConfig:
    mode: str = "joint"  # see MODE_HELP
    top_provinces: int = 2
    top_cells: int = 5
    prior_correction: float = 1.0  # logit adjustment of the province head: 1 undoes the training prior, 0 off

    def __post_init__(self):
        if self.mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, not {self.mode!r}")
