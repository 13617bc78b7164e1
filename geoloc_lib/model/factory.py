"""The one place where a `GeolocModel` is assembled: for training, for `create_phase1_model`, and from
a checkpoint for the predictor. Loading Phase 0 weights into a model lives here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from geoloc_lib.base.atomic_files import load_checkpoint
from geoloc_lib.data.contract import load_cell_metadata
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.model.encoder_config import EncoderConfig, resolve_encoder_config
from geoloc_lib.model.encoders import DualEncoder, verify_fingerprint
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


@dataclass
class LoadReport:
    path: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    encoders_from: str

    def summary(self) -> str:
        def head(keys):
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        return (
            f"Phase 0 weights from {self.path}\n"
            f"  loaded ({len(self.loaded)}): {head(self.loaded)}\n"
            f"  missing, initialised from scratch ({len(self.missing)}): {head(self.missing)}\n"
            f"  unexpected, ignored ({len(self.unexpected)}): {head(self.unexpected)}\n"
            f"  encoders: {self.encoders_from}"
        )


def load_phase0_weights(model: GeolocModel, path: str | Path) -> LoadReport:
    """Load Phase 0 weights by name (a `module.` prefix is accepted) and report what happened."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("model_state", checkpoint.get("state_dict", checkpoint))
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: its model_state is a {type(state).__name__}, not a dict of weights; pass the "
            "phase0_best.pt that 02b_train_phase0 wrote"
        )
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = model.state_dict()
    if not any(k in own for k in state):
        raise ValueError(
            f"{path}: none of its {len(state)} tensors names a weight of this model, so nothing would be "
            "loaded; pass the phase0_best.pt that 02b_train_phase0 wrote (checkpoints/phase0/)"
        )
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        details = "; ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5])
        raise ValueError(
            f"{path}: Phase 0 weights do not fit this model ({details}); check proj_dim/encoders"
        )
    loaded = [k for k in state if k in own]
    encoder_keys = [k for k in loaded if k.startswith("encoders.")]
    if not encoder_keys:  # heads trained on other encoder weights would read features they never saw
        verify_fingerprint(model.encoders, checkpoint.get("encoder_fingerprint"), str(path))
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    trainable = model.trainable_state_dict()
    return LoadReport(
        path=str(path),
        loaded=loaded,
        missing=[k for k in trainable if k not in state],
        unexpected=[k for k in state if k not in own],
        encoders_from="checkpoint" if encoder_keys else "encoder config (frozen weights are not stored)",
    )


def create_phase1_model(
    cell_metadata_path: str | Path,
    freeze_clip: bool = True,
    freeze_scene: bool = True,
    phase0_checkpoint_path: str | Path | None = None,
    encoder: str | EncoderConfig = "tiny-random",
    head_config: HeadConfig | None = None,
) -> GeolocModel:
    """The specification's entry point: the model for a cell table, optionally started from Phase 0.

    The Phase 0 load report is kept on the model as `phase0_report` (None without a checkpoint).
    """
    cells = CellTable(load_cell_metadata(cell_metadata_path))
    model = build_model(
        cells, resolve_encoder_config(encoder), head_config or HeadConfig(), freeze_clip, freeze_scene
    )
    model.phase0_report = (
        load_phase0_weights(model, phase0_checkpoint_path) if phase0_checkpoint_path else None
    )
    return model
