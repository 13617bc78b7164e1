"""The one checkpoint schema: what an epoch commits, written and read only through `Checkpoint`; and the one
other reader of checkpoint files, `load_phase0_weights`, which also takes a foreign state dict by name.

A checkpoint file is a plain dict of tensors and containers (loaded with `weights_only=True`, as untrusted
input) carrying a `version`; a file of another version is refused with a message to retrain, never half read.
The specification's "losses", "province_accuracies" and "median_error" are views of `metrics`: the file
carries them for readers of the specification's format, and the workbench reads only `metrics`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from geoloc_lib.base.atomic_files import load_checkpoint, to_plain
from geoloc_lib.evaluate.metrics import PROVINCE_ACCURACY_COLUMNS
from geoloc_lib.model.encoders import verify_fingerprint
from geoloc_lib.model.heads import GeolocModel

CHECKPOINT_VERSION = 2  # 1: the unversioned checkpoints before the schema


class CheckpointVersionError(ValueError):
    """A checkpoint written by another version of the workbench."""


@dataclass
class Checkpoint:
    phase: int
    epoch: int
    model_state: dict[str, torch.Tensor]  # the trained weights (the averaged heads when averaging)
    metrics: dict[str, dict]  # {"train": row, "val": row}: the epoch's two rows of losses.csv
    val_predictions: dict[str, list]  # the validation predictions table, column by column
    best_metric: float  # the best selection metric so far (lower is better; see phases.py)
    best_epoch: int
    config: dict  # asdict(TrainConfig)
    head_config: dict  # asdict(HeadConfig)
    encoder_config: dict  # asdict(EncoderConfig)
    cells: dict  # CellTable.signature()
    encoder_fingerprint: str  # of the encoders' weights (frozen ones are not stored)
    prior_shift: list[float]  # the decoder's province prior correction
    data: dict[str, str]  # GeoDataset.signature: rows of each split, the cells, the photo files
    optimizer_state: dict
    train_state: dict[str, torch.Tensor] | None = None  # the raw weights, when `model_state` is an average
    ema_state: dict | None = None  # the average itself, for resuming
    history: list[dict] | None = None  # every epoch's {"train": row, "val": row} so far (early stopping)
    version: int = CHECKPOINT_VERSION

    @property
    def losses(self) -> dict[str, dict[str, float]]:
        return {
            split: {k: v for k, v in row.items() if k.startswith("loss_")}
            for split, row in self.metrics.items()
        }

    @property
    def province_accuracies(self) -> dict[str, dict[str, float]]:
        return {split: {c: row[c] for c in PROVINCE_ACCURACY_COLUMNS} for split, row in self.metrics.items()}

    @property
    def median_error(self) -> float:
        """The end-to-end validation median error, km."""
        return self.metrics["val"]["median_error_km"]

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        optimizer = values.pop("optimizer_state")  # tensors and ints already; to_plain would not change it
        views = {
            "losses": self.losses,
            "province_accuracies": self.province_accuracies,
            "median_error": self.median_error,
        }
        return to_plain(values | views) | {"optimizer_state": optimizer}

    @classmethod
    def from_dict(cls, values: dict, source: str) -> Checkpoint:
        version = values.get("version", 1)
        if version != CHECKPOINT_VERSION:
            raise CheckpointVersionError(
                f"{source} is a version {version} checkpoint; this workbench reads version {CHECKPOINT_VERSION}. "
                "Train the run again (overwrite=True), or use the version of geoloc_lib that wrote it."
            )
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is not None and f.name != "version"}
        missing = sorted(required - set(values))
        if missing:
            raise CheckpointVersionError(
                f"{source} lacks {missing}; it is not a checkpoint of a training run"
            )
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read and check a checkpoint file (ValueError when it is unreadable or of another version)."""
        return cls.from_dict(load_checkpoint(path), str(path))


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
