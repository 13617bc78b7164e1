"""Where Phase 2 starts: a Phase 1 run's best checkpoint, checked against the new run and loaded into it.

Phase 2 continues the very model Phase 1 selected, so everything that shaped that model must be the same: the
data and its validation split (or Phase 2 would validate on Phase 1's training photos), the cells, the heads'
sizes, and the encoders' configuration and weights. Anything else is refused with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from geoloc_lib.model.heads import GeolocModel
from geoloc_lib.run.checkpoint import Checkpoint
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.phases import starts_fine_tuning
from geoloc_lib.run.spec import TrainConfig


class Phase1StartError(ValueError):
    """phase1_checkpoint does not name a usable Phase 1 best checkpoint for this run."""


def phase1_checkpoint_path(value: str) -> Path:
    """A run folder stands for its best Phase 1 checkpoint."""
    path = Path(value)
    if path.is_dir():
        folder = RunFolder(path)
        if not folder.config.is_file():
            raise Phase1StartError(
                f"phase1_checkpoint {value!r} is not a run folder (it has no config.json); pass a Phase 1 run "
                "folder (runs/<name>)"
            )
        phase = folder.read_config().phase
        if not starts_fine_tuning(phase):
            raise Phase1StartError(
                f"phase1_checkpoint {value!r} is a Phase {phase} run; Phase 2 starts from a Phase 1 run "
                "(notebooks/03_train_phase1)"
            )
        path = folder.best_checkpoint(1)
    if not path.is_file():
        raise Phase1StartError(
            f"phase1_checkpoint {value!r}: no such file; pass a Phase 1 run folder (runs/<name>) or its "
            "checkpoints/phase1/phase1_best.pt"
        )
    return path


def phase1_run_config(phase1_checkpoint: str) -> TrainConfig:
    """The config of the Phase 1 run that `phase1_checkpoint` names: the base of a Phase 2 config, so that the
    data, split, heads and encoders are Phase 1's without being repeated (03b_train_phase2)."""
    path = phase1_checkpoint_path(phase1_checkpoint)
    folder = finished_phase1_run(path)
    # the Phase 1 run's own run-control settings are not Phase 2's
    return dataclasses.replace(folder.read_config(), resume=False, overwrite=False, phase0_checkpoint=None)


def finished_phase1_run(path: Path) -> RunFolder:
    """The run folder of the Phase 1 checkpoint `path`, if that run is finished: not training now (its lock is
    free), trained to its last epoch, and calibrated. Its best checkpoint can change until then."""
    folder = RunFolder.of_checkpoint(path)
    if not folder.config.is_file():
        raise Phase1StartError(f"{path} is not inside a run folder with a config.json")
    why = folder.unfinished(1)
    if why is not None:
        raise Phase1StartError(
            f"the Phase 1 run {folder.root} {why}; Phase 2 starts from a finished one (let it finish, or resume "
            "it: resume=True in 03_train_phase1, or --set resume=True)"
        )
    return folder


def load_phase1_start(cfg, model: GeolocModel, data_signature: dict, head_config: dict) -> Checkpoint:
    """Check the Phase 1 best checkpoint `cfg.phase1_checkpoint` against this run and load its weights into
    `model` (the averaged heads where Phase 1 averaged: the weights it validated). Returns the checkpoint."""
    path = phase1_checkpoint_path(cfg.phase1_checkpoint)
    try:
        start = Checkpoint.load(path)
    except ValueError as err:
        raise Phase1StartError(f"phase1_checkpoint {path}: {err}") from err
    if not starts_fine_tuning(start.phase):
        raise Phase1StartError(
            f"{path} is a Phase {start.phase} checkpoint; Phase 2 starts from a Phase 1 run's best checkpoint"
        )
    if start.epoch != start.best_epoch:
        raise Phase1StartError(
            f"{path} is epoch {start.epoch} of its run, not the best one (epoch {start.best_epoch}); pass "
            f"{path.with_name('phase1_best.pt')}"
        )
    finished_phase1_run(path)
    differences = _differences(start, model, data_signature, head_config)
    if differences:
        raise Phase1StartError(f"{path} does not fit this Phase 2 run: {'; '.join(differences)}")
    model.load_state_dict(start.model_state, strict=False)
    return start


def _differences(start: Checkpoint, model: GeolocModel, data_signature: dict, head_config: dict) -> list[str]:
    found = []
    if start.data != data_signature:
        found.append(
            "its data or validation split differ (use the same data_dir, val_fraction, val_block_km and val_seed)"
        )
    if start.cells != model.cells.signature():
        found.append("its geocells differ")
    if start.head_config != head_config:
        changed = sorted(k for k in head_config if start.head_config.get(k) != head_config[k])
        found.append(f"its heads differ in {changed} (use the Phase 1 run's values)")
    if start.encoder_config != asdict(model.encoders.config):
        found.append(f"its encoders were {start.encoder_config}, not {asdict(model.encoders.config)}")
    elif start.encoder_fingerprint != model.encoders.fingerprint():
        found.append("its encoders' weights differ from the ones configured (a weights file changed)")
    return found
