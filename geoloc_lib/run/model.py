"""The model of a run, through one door each way: built from the run's settings to train (`model_for_training`),
or rebuilt from one of its checkpoints to predict (`model_from_checkpoint`); and the specification's entry point,
a model for a cell table started from Phase 0 (`create_phase1_model`)."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path

from geoloc_lib.data.contract import load_cell_metadata
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.model.encoder_config import EncoderConfig, resolve_encoder_config
from geoloc_lib.model.encoders import verify_fingerprint
from geoloc_lib.model.factory import CheckpointMismatchError, build_model
from geoloc_lib.model.head_config import HeadConfig
from geoloc_lib.model.heads import GeolocModel
from geoloc_lib.run.checkpoint import Checkpoint, load_phase0_weights
from geoloc_lib.run.phases import encoder_tops, predicts
from geoloc_lib.run.spec import TrainConfig


def model_for_training(cfg: TrainConfig, cells: CellTable) -> GeolocModel:
    return build_model(
        cells,
        cfg.encoders,
        cfg.heads,
        cfg.freeze_clip,
        cfg.freeze_scene,
        encoder_tops(dataclasses.asdict(cfg)),
        cfg.top_bn_statistics,
    )


def model_from_checkpoint(checkpoint: Checkpoint, cells: CellTable, source: str) -> GeolocModel:
    """Rebuild the model a Phase 1 checkpoint was trained as, on `cells`, and load its weights.

    Refuses other geocells and encoders whose weights changed since training (`source` names the
    checkpoint in the messages).
    """
    if not predicts(checkpoint.phase):
        raise CheckpointMismatchError(
            f"{source} is a Phase {checkpoint.phase} checkpoint; prediction needs a Phase 1 or Phase 2 run"
        )
    if cells.signature() != checkpoint.cells:
        raise CheckpointMismatchError(
            f"{source} was trained with other geocells (checkpoint {checkpoint.cells}, metadata "
            f"{cells.signature()}). Use the cell_metadata.csv the run was trained with."
        )
    head_config = HeadConfig(**{f.name: checkpoint.head_config[f.name] for f in fields(HeadConfig)})
    cfg = checkpoint.config
    model = build_model(
        cells,
        EncoderConfig(**checkpoint.encoder_config),
        head_config,
        cfg["freeze_clip"],
        cfg["freeze_scene"],
        encoder_tops(cfg),  # Phase 2: its trained tops come with the checkpoint
    )
    missing, unexpected = model.load_state_dict(checkpoint.model_state, strict=False)
    missing = [k for k in missing if k in model.trainable_state_dict()]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    verify_fingerprint(model.encoders, checkpoint.encoder_fingerprint, source)
    return model


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
