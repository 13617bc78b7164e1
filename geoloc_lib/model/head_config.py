"""The heads' sizes (`HeadConfig`), in a module without torch: a run's settings name them without building them
(`run/spec.py` takes its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HeadConfig:
    proj_dim: int = 512  # projections of both encoders, and the fused feature
    province_emb_dim: int = 32
    cell_emb_dim: int = 96
    province_hidden: int = 256
    geocell_hidden: int = 512
    small_geocell_hidden: int = 256  # capacity of provinces with fewer than small_province_cells cells
    small_province_cells: int = 30
    offset_hidden: int = 256
    aux_hidden: int = 256
    dropout: float = 0.1
    temperature: float = 1.0  # province logits are divided by this
