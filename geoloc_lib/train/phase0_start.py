"""Where Phase 1 starts: Phase 0's province head, given as a checkpoint or found among the runs.

`phase0_checkpoint="auto"` (the default) looks under `runs_dir` for the newest Phase 0 run that can stand
in for the one the user would name: finished (not training, trained to its last epoch), on the same data
and validation split (otherwise its province head saw photos this run validates on), with the same encoders
and tensor shapes. "" starts from scratch; a path is used as given (model/factory.py checks it). Either way
the start is said where the user looks: the log, and the terminal under papermill.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from geoloc_lib.base.progress import terminal_line
from geoloc_lib.model.heads import GeolocModel
from geoloc_lib.run.checkpoint import Checkpoint, load_phase0_weights
from geoloc_lib.run.folder import RunFolder

AUTO = "auto"

NO_PHASE0 = (
    "NO PHASE 0: {why}, so the province head starts from scratch. Phase 0 first usually helps the thin "
    "provinces: run notebooks/02b_train_phase0 on the same data (same val_fraction, val_block_km, val_seed); "
    "the next Phase 1 run finds it (phase0_checkpoint=auto) or takes -p phase0_checkpoint "
    "runs/<its run>/checkpoints/phase0/phase0_best.pt"
)


def find_phase0_run(runs_dir: str | Path, model: GeolocModel, data_signature: dict) -> Path | None:
    """The best checkpoint of the newest finished Phase 0 run under `runs_dir` that fits `model` and was
    trained on the data and split `data_signature` describes; None when there is none."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for folder in reversed(RunFolder.with_best(runs_dir, 0)):  # the newest first
        path = folder.best_checkpoint(0)
        try:
            if folder.unfinished(0) is not None:
                continue
            best = Checkpoint.load(path)
        except (OSError, ValueError):  # unreadable, or another version
            continue
        fits = all(shapes.get(k) == v.shape for k, v in best.model_state.items())
        if (
            best.data == data_signature
            and best.encoder_config == asdict(model.encoders.config)
            and best.encoder_fingerprint == model.encoders.fingerprint(frozen_only=True)
            and fits
        ):
            return path
    return None


def chosen_phase0(value: str | None, runs_dir: str | Path, model: GeolocModel, data_signature: dict) -> str:
    """`phase0_checkpoint` as the run will record it: "auto" becomes the checkpoint found, or ""."""
    if value != AUTO:
        return value or ""
    found = find_phase0_run(runs_dir, model, data_signature)
    return str(found) if found else ""


def start_from_phase0(requested: str | None, chosen: str, model: GeolocModel, run_name: str, log) -> None:
    """Load the chosen Phase 0 weights into `model`, or say loudly that there are none."""
    if chosen:
        how = (
            "found by phase0_checkpoint=auto; an empty one starts from scratch"
            if requested == AUTO
            else "given"
        )
        log.info(f"Phase 1 starts from Phase 0 ({how}): {load_phase0_weights(model, chosen).summary()}")
        terminal_line(f"{run_name}: Phase 1 starts from the Phase 0 weights {chosen} ({how})")
        return
    why = (
        "no finished Phase 0 run of this data and validation split is under runs_dir"
        if requested == AUTO
        else "phase0_checkpoint is empty"
    )
    message = NO_PHASE0.format(why=why)
    log.info(message)
    terminal_line(f"{run_name}: {message}")
