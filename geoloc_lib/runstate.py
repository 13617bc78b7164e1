"""Starting, committing and resuming a training run in its folder, without ever losing or mixing work.

What a run folder guarantees:

- Nothing is deleted or written before the config and the data have passed every check; a refused start
  leaves an existing run untouched.
- The folder lies strictly inside `runs_dir`; an overwrite deletes that folder's contents only, and a resume
  after a kill removes only this phase's unfinished checkpoints.
- One training at a time: an exclusive OS lock (runlock.py) is held from the start to the end of a run.
- An epoch is committed once, by its epoch checkpoint, which holds everything else the epoch writes (its
  losses.csv rows and validation predictions). A run killed at any moment resumes after its last committed
  epoch, rewrites whatever of that epoch's files the kill cut short, and retrains nothing that was finished.
- A resume refuses other geocells, other data rows, other encoder weights and any setting that changes the
  result; it accepts a run folder, data folder or cache that moved.
"""

from __future__ import annotations

import shutil

import pandas as pd

from .checkpoints import atomic_copy, atomic_torch_save
from .config import TrainConfig, resume_differences
from .distributed import World
from .runfolder import RunFolder
from .runlock import LOCK_NAME, RunLock


def _saved_phase(folder: RunFolder) -> int | None:
    try:
        return folder.read_config().phase
    except (FileNotFoundError, ValueError):
        return None


def clear(folder: RunFolder) -> None:
    """Delete everything in the folder but its lock."""
    for child in folder.root.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def last_committed(folder: RunFolder, phase: int) -> dict | None:
    """The checkpoint of the latest epoch whose epoch checkpoint is complete and readable, if any."""
    epochs = sorted(
        (int(p.stem.rsplit("_", 1)[1]) for p in folder.checkpoints(phase).glob(f"phase{phase}_epoch_*.pt")),
        reverse=True,
    )
    for epoch in epochs:
        try:
            return folder.load_checkpoint(phase, folder.epoch_checkpoint(phase, epoch).name)
        except ValueError:  # unreadable: an older epoch is the resume point
            continue
    return None


def claim(
    cfg: TrainConfig, folder: RunFolder, world: World | None = None
) -> tuple[RunLock | None, dict | None]:
    """Lock the folder and make it ready for `cfg`; returns the lock and the checkpoint to resume from.

    Call only after the config and the data have been checked. Under torchrun the first process claims
    the folder; the others wait for it, then read the resume point (and hold no lock).
    """
    world = world or World()
    if not world.is_main:
        world.barrier()
        return None, last_committed(folder, cfg.phase) if cfg.resume else None
    lock = RunLock(folder.root)
    try:
        state = _prepare(cfg, folder)
    except BaseException:
        lock.release()
        raise
    world.barrier()
    return lock, state


def _prepare(cfg: TrainConfig, folder: RunFolder) -> dict | None:
    if not any(child.name != LOCK_NAME for child in folder.root.iterdir()):
        return None
    if cfg.overwrite:
        clear(folder)
        return None
    saved = _saved_phase(folder)
    if saved is not None and saved != cfg.phase:
        raise FileExistsError(
            f"run folder {folder.root} holds a Phase {saved} run; give this Phase {cfg.phase} run another "
            f"run_name (or pass overwrite=True to replace that run)."
        )
    if cfg.resume:
        state = last_committed(folder, cfg.phase)
        if state is None:  # killed before its first epoch was committed
            shutil.rmtree(folder.checkpoints(cfg.phase), ignore_errors=True)
        return state
    if folder.config.exists():
        raise FileExistsError(
            f"run folder {folder.root} already exists. Pass resume=True to continue it, overwrite=True to "
            f"replace it, or choose another run_name."
        )
    return None


def check_resumable(cfg: TrainConfig, folder: RunFolder, state: dict, data_signature: dict) -> None:
    """Refuse to continue a run on settings or data other than the ones its checkpoint was trained on."""
    changed = resume_differences(state["config"], cfg)
    if changed:
        raise ValueError(
            f"cannot resume {folder.root}: the config differs from the saved run in {changed} (saved, now). "
            f"Use the saved values, or start a new run_name."
        )
    saved = state.get("data", {})
    differing = sorted(k for k in data_signature if saved.get(k) != data_signature[k])
    if differing:
        raise ValueError(
            f"cannot resume {folder.root}: {', '.join(differing)} changed since the run started "
            f"(train.csv, test.csv or cell_metadata.csv was edited, or the validation split moved). Restore "
            f"the data the run was trained on, or start a new run_name."
        )


def commit_epoch(folder: RunFolder, phase: int, epoch: int, payload: dict, improved: bool) -> None:
    """Write an epoch: its checkpoint first (the commit point), then the files derived from it."""
    epoch_file = folder.epoch_checkpoint(phase, epoch)
    atomic_torch_save(payload, epoch_file)
    _derived_files(folder, phase, payload, improved, rows_written=False)


def repair(folder: RunFolder, phase: int, state: dict) -> None:
    """After a kill: bring losses.csv, the predictions and best/last in line with the committed epoch."""
    epoch = int(state["epoch"])
    folder.truncate_losses(epoch)
    written = folder.losses.exists() and (folder.read_losses()["epoch"] == epoch).any()
    _derived_files(folder, phase, state, improved=int(state["best_epoch"]) == epoch, rows_written=written)


def _derived_files(folder: RunFolder, phase: int, payload: dict, improved: bool, rows_written: bool) -> None:
    epoch_file = folder.epoch_checkpoint(phase, int(payload["epoch"]))
    if not rows_written:
        folder.append_losses([payload["metrics"]["train"], payload["metrics"]["val"]])
    predictions = pd.DataFrame(payload["val_predictions"])
    predictions.to_csv(folder.val_predictions, index=False)
    if improved:
        atomic_copy(epoch_file, folder.best_checkpoint(phase))
        predictions.to_csv(folder.val_predictions_best, index=False)
    atomic_copy(epoch_file, folder.last_checkpoint(phase))
