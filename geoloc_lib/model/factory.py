"""The one place where a `GeolocModel` is assembled (`build_model`), and what training takes from one: the
parameters it updates and the weights a checkpoint stores. A run's model is built and rebuilt through
`run/model.py`; checkpoint files are read in `run/checkpoint.py`.
"""

from __future__ import annotations

import torch

from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.model.encoder_config import EncoderConfig
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.model.head_config import HeadConfig
from geoloc_lib.model.heads import GeoHeads, GeolocModel


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model, cells or encoders it is being used with."""


def build_model(
    cells: CellTable,
    encoder_config: EncoderConfig,
    head_config: HeadConfig,
    freeze_clip: bool = True,
    freeze_scene: bool = True,
    tops: tuple[int, int] = (0, 0),
    top_bn_statistics: bool = False,
) -> GeolocModel:
    """`tops`: the CLIP blocks and scene stages trained on top of frozen encoders (Phase 2; 0: none)."""
    encoders = DualEncoder(encoder_config, freeze_clip, freeze_scene, *tops, top_bn_statistics)
    return GeolocModel(encoders, cells, head_config)


def trainable_parameters(
    model: GeolocModel, prefixes: tuple[str, ...] | None = None
) -> list[torch.nn.Parameter]:
    """What the optimiser updates: every parameter that requires a gradient (only those under `prefixes`,
    when given: a phase that trains part of the heads)."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and (prefixes is None or name.startswith(prefixes))
    ]


def checkpoint_state(
    model: GeolocModel, prefixes: tuple[str, ...] | None = None, heads: GeoHeads | None = None
) -> dict[str, torch.Tensor]:
    """The trained weights a checkpoint stores (only those under `prefixes`, when given), on the CPU; `heads`
    replace the model's own (an average)."""
    state = model.trainable_state_dict()
    if heads is not None:
        state |= {f"heads.{k}": v for k, v in heads.state_dict().items() if f"heads.{k}" in state}
    if prefixes is not None:
        state = {k: v for k, v in state.items() if k.startswith(prefixes)}
    return {k: v.detach().cpu() for k, v in state.items()}
