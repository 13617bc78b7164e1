"""Starting, committing and resuming a training run in its folder, without ever losing or mixing work.

What a run folder guarantees:

- Nothing in the folder is deleted or written before every check that can refuse the start has passed
  (the config, the data, the model and its weights, the resume point, the features): a refused start,
  `overwrite=True` included, leaves an existing run byte for byte as it was, and creates no folder.
- A resume never deletes committed work it cannot read: unreadable checkpoints stop it with their names
  and the ways forward.
- The folder lies strictly inside `runs_dir`; an overwrite deletes that folder's contents only, and a resume
  after a kill removes only this phase's unfinished checkpoints.
- One training at a time: an exclusive OS lock (base/folder_lock.py) is held from the start to the end of a run.
- An epoch is committed once, by its epoch checkpoint, which holds everything else the epoch writes (its
  losses.csv rows and validation predictions). A run killed at any moment resumes after its last committed
  epoch, rewrites whatever of that epoch's files the kill cut short, and retrains nothing that was finished.
- A resume refuses other geocells, other data rows, other encoder weights and any setting that changes the
  result; it accepts a run folder, data folder or cache that moved.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pandas as pd

from geoloc_lib.base.atomic_files import atomic_link, atomic_torch_save, atomic_write_csv
from geoloc_lib.base.distributed import World
from geoloc_lib.base.folder_lock import LOCK_NAME, RunLock
from geoloc_lib.run.checkpoint import Checkpoint, CheckpointVersionError
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.spec import TrainConfig, resume_differences


class RunFolderDamagedError(RuntimeError):
    """A run folder holds committed work that cannot be read; nothing was changed."""


@dataclass(frozen=True)
class StartPlan:
    """How a run starts in its folder, decided by reading only (`inspect`); `begin` carries it out."""

    action: str  # "fresh": nothing to keep; "overwrite": replace what is there; "resume": continue it
    state: Checkpoint | None = None  # the checkpoint a resume continues from (None: no epoch was committed)
    created_folder: bool = False  # the folder did not exist before this start


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


def _epochs(folder: RunFolder, phase: int) -> list[int]:
    """The epochs that have an epoch checkpoint, newest first."""
    names = folder.checkpoints(phase).glob(f"phase{phase}_epoch_*.pt")
    return sorted((int(p.stem.rsplit("_", 1)[1]) for p in names), reverse=True)


def _damaged(folder: RunFolder, what: str, forward: str) -> RunFolderDamagedError:
    return RunFolderDamagedError(
        f"cannot resume {folder.root}: {what}. Nothing was changed. To go on: {forward}, or pass "
        f"overwrite=True (resume=False) to start the run again from scratch, which deletes it."
    )


def _resume_point(cfg: TrainConfig, folder: RunFolder) -> Checkpoint | None:
    """The newest epoch checkpoint, if any; unreadable committed work stops the resume instead of being
    taken for a run that never finished an epoch."""
    unreadable = []
    for epoch in _epochs(folder, cfg.phase):
        path = folder.epoch_checkpoint(cfg.phase, epoch)
        try:
            state = Checkpoint.load(path)
        except CheckpointVersionError:
            raise
        except ValueError:
            unreadable.append(path)
            continue
        if unreadable:
            names = ", ".join(p.name for p in unreadable)
            raise _damaged(
                folder,
                f"the newest epoch checkpoint(s) {names} cannot be read",
                f"move them out of {folder.checkpoints(cfg.phase)} to resume after epoch {epoch}, the newest "
                "readable one",
            )
        return state
    if unreadable:
        raise _damaged(
            folder,
            f"no epoch checkpoint can be read ({', '.join(p.name for p in unreadable)})",
            "restore them from a backup",
        )
    kept = [
        p.name for p in (folder.best_checkpoint(cfg.phase), folder.last_checkpoint(cfg.phase)) if p.exists()
    ]
    if kept:
        raise _damaged(folder, f"it holds {kept} but no epoch checkpoint", "restore the epoch checkpoints")
    if folder.config.is_file():  # killed before its first epoch: the settings must still be the saved ones
        try:
            saved = json.loads(folder.config.read_text())
        except ValueError as err:
            raise _damaged(folder, f"config.json is not JSON ({err})", "restore config.json") from None
        changed = resume_differences(saved, cfg)
        if changed:
            raise ValueError(
                f"cannot resume {folder.root}: the config differs from the saved run in {changed} (saved, "
                "now). Use the saved values, or start a new run_name."
            )
    return None


def inspect(cfg: TrainConfig, folder: RunFolder) -> StartPlan:
    """Decide how `cfg` starts in `folder`, or refuse; reads the folder and changes nothing."""
    if not folder.root.exists() or not any(child.name != LOCK_NAME for child in folder.root.iterdir()):
        return StartPlan("fresh")
    if cfg.overwrite:
        return StartPlan("overwrite")
    saved = _saved_phase(folder)
    if saved is not None and saved != cfg.phase:
        raise FileExistsError(
            f"run folder {folder.root} holds a Phase {saved} run; give this Phase {cfg.phase} run another "
            f"run_name (or pass overwrite=True to replace that run)."
        )
    if cfg.resume:
        return StartPlan("resume", _resume_point(cfg, folder))
    if folder.config.exists():
        raise FileExistsError(
            f"run folder {folder.root} already exists: continue it with resume=True (papermill: -p resume True; "
            "command line: --set resume=True), replace it with overwrite=True, or leave run_name empty for a new run"
        )
    return StartPlan("fresh")


def claim(
    cfg: TrainConfig, folder: RunFolder, world: World | None = None
) -> tuple[RunLock | None, StartPlan]:
    """Lock the folder and decide how the run starts (`inspect`); returns the lock and the plan.

    Only the lock file is written (and the folder, if new). Under torchrun the first process claims the
    folder; the others wait for it, then read the same plan (and hold no lock).
    """
    world = world or World()
    if not world.is_main:
        world.barrier()
        return None, inspect(cfg, folder)
    created = not folder.root.exists()
    lock = RunLock(folder.root)
    try:
        plan = inspect(cfg, folder)
    except BaseException:
        abandon(lock, folder, created)
        raise
    world.barrier()
    return lock, StartPlan(plan.action, plan.state, created)


def abandon(lock: RunLock | None, folder: RunFolder, created: bool) -> None:
    """Release a folder whose start was refused; a folder this start created goes again."""
    if lock is None:
        return
    lock.release()
    if created and [child.name for child in folder.root.iterdir()] == [LOCK_NAME]:
        folder.lock_file.unlink()
        folder.root.rmdir()


def begin(folder: RunFolder, phase: int, plan: StartPlan) -> None:
    """The first change to the folder, once nothing can refuse the start any more."""
    if plan.action == "overwrite":
        clear(folder)
    elif plan.action == "resume" and plan.state is None:  # killed before its first epoch was committed
        shutil.rmtree(folder.checkpoints(phase), ignore_errors=True)
        folder.truncate_losses(0)
    elif plan.action == "resume":
        repair(folder, phase, plan.state)


def check_resumable(cfg: TrainConfig, folder: RunFolder, state: Checkpoint, data_signature: dict) -> None:
    """Refuse to continue a run on settings or data other than the ones its checkpoint was trained on."""
    changed = resume_differences(state.config, cfg)
    if changed:
        raise ValueError(
            f"cannot resume {folder.root}: the config differs from the saved run in {changed} (saved, now). "
            f"Use the saved values, or start a new run_name."
        )
    saved = state.data
    differing = sorted(k for k in data_signature if saved.get(k) != data_signature[k])
    if differing:
        raise ValueError(
            f"cannot resume {folder.root}: {', '.join(differing)} changed since the run started "
            f"(train.csv, test.csv or cell_metadata.csv was edited, or the validation split moved). Restore "
            f"the data the run was trained on, or start a new run_name."
        )


def commit_epoch(folder: RunFolder, phase: int, payload: Checkpoint, improved: bool, keep: int) -> None:
    """Write an epoch: its checkpoint first (the commit point), then the files derived from it; then keep
    only the newest `keep` epoch checkpoints (best and last are links of their own and stay)."""
    epoch_file = folder.epoch_checkpoint(phase, payload.epoch)
    atomic_torch_save(payload.to_dict(), epoch_file)
    _derived_files(folder, phase, payload, improved, rows_written=False)
    for old in _epochs(folder, phase)[keep:]:
        folder.epoch_checkpoint(phase, old).unlink(missing_ok=True)


def repair(folder: RunFolder, phase: int, state: Checkpoint) -> None:
    """After a kill: bring losses.csv, the predictions and best/last in line with the committed epoch."""
    epoch = state.epoch
    folder.truncate_losses(epoch)  # torn rows and an epoch with only one of its two rows are cut
    written = folder.losses.exists() and (folder.read_losses()["epoch"] == epoch).any()
    _derived_files(folder, phase, state, improved=state.best_epoch == epoch, rows_written=written)


def _derived_files(
    folder: RunFolder, phase: int, payload: Checkpoint, improved: bool, rows_written: bool
) -> None:
    epoch_file = folder.epoch_checkpoint(phase, payload.epoch)
    if not rows_written:
        folder.append_losses([payload.metrics["train"], payload.metrics["val"]])
    predictions = pd.DataFrame(payload.val_predictions)
    atomic_write_csv(predictions, folder.val_predictions)
    if improved:
        atomic_link(epoch_file, folder.best_checkpoint(phase))
        atomic_write_csv(predictions, folder.val_predictions_best)
    atomic_link(epoch_file, folder.last_checkpoint(phase))
