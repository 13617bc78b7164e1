"""The run folder: every file of a run named in one place, with its saving and loading.

    runs/<run_name>/
        config.json                         exactly the TrainConfig (TrainConfig.from_dict reads it back)
        run_info.json                       derived facts: device, encoder fingerprint, cells, versions
        log.txt                             the human-readable training log
        losses.csv                          one row per epoch and split (LOSSES_CSV_COLUMNS)
        checkpoints/phase{p}/phase{p}_epoch_{e}.pt, phase{p}_best.pt, last.pt
        val_predictions.csv, val_predictions_best.csv
        evaluation/  maps/  figures/

Both phases use the same names, so a Phase 0 run and a Phase 1 run are found the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import logging.handlers
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from geoloc_lib.base.atomic_files import atomic_write_text, write_json
from geoloc_lib.base.folder_lock import LOCK_NAME, lock_holder
from geoloc_lib.base.folder_marks import CONFIG_JSON, RUN_INFO_JSON
from geoloc_lib.data.contract import GeoDataset, load_dataset
from geoloc_lib.evaluate.metrics import EXTRA_METRIC_COLUMNS, SPEC_METRIC_COLUMNS
from geoloc_lib.model.losses import LOSS_TERMS
from geoloc_lib.run.checkpoint import Checkpoint
from geoloc_lib.run.phases import PHASES, predicts
from geoloc_lib.run.spec import TrainConfig

# The specification's columns first, in its order; everything else after them.
LOSS_COLUMNS = [f"loss_{term}" for term in LOSS_TERMS]
LOSSES_CSV_COLUMNS = [
    "epoch",
    "split",
    *LOSS_COLUMNS,
    *SPEC_METRIC_COLUMNS,
    "offset_weight",
    *EXTRA_METRIC_COLUMNS,
    "seconds",
]


def named(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with a run_name: its own, or, when empty, a new one, `phase{phase}_<YYYYMMDD-HHMMSS>` (with a
    suffix if that folder exists), so that running the same command twice makes two runs."""
    if cfg.run_name:
        return cfg
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own time
        raise ValueError("name the run (run_name) when it trains in several processes")
    stem = f"phase{cfg.phase}_{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stem, 1
    while (Path(cfg.runs_dir) / name).exists():
        n += 1
        name = f"{stem}_{n}"
    return dataclasses.replace(cfg, run_name=name)


class RunFolder:
    """Paths and files of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def of(cls, cfg: TrainConfig) -> RunFolder:
        """The folder of a training config, which must lie strictly inside `runs_dir`.

        Absolute names, `..` and symbolic links that lead out are refused: an overwrite deletes the folder.
        """
        runs_dir = Path(cfg.runs_dir).resolve()
        name = Path(cfg.run_name)
        target = (runs_dir / name).resolve()
        if name.is_absolute() or ".." in name.parts or runs_dir not in target.parents:
            raise ValueError(
                f"run_name {cfg.run_name!r} must name a folder inside runs_dir ({runs_dir}), not "
                f"{target}: use a plain name such as 'phase1_try2'"
            )
        return cls(target)

    config = property(lambda self: self.root / CONFIG_JSON)
    run_info = property(lambda self: self.root / RUN_INFO_JSON)
    log = property(lambda self: self.root / "log.txt")
    losses = property(lambda self: self.root / "losses.csv")
    val_predictions = property(lambda self: self.root / "val_predictions.csv")
    val_predictions_best = property(lambda self: self.root / "val_predictions_best.csv")
    calibration = property(lambda self: self.root / "calibration.json")  # credible radii (Phase 1)
    novelty = property(lambda self: self.root / "novelty.pt")  # the out-of-domain index (Phase 1)
    evaluation = property(lambda self: self.root / "evaluation")
    maps = property(lambda self: self.root / "maps")
    figures = property(lambda self: self.root / "figures")

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_NAME

    def checkpoints(self, phase: int) -> Path:
        return self.root / "checkpoints" / f"phase{phase}"

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> RunFolder:
        """The run folder a checkpoint file belongs to: <run>/checkpoints/phase{p}/<file>."""
        return cls(Path(path).parents[2])

    @classmethod
    def with_best(cls, runs_dir: str | Path, phase: int) -> list[RunFolder]:
        """Every run folder under `runs_dir` that holds a best checkpoint of `phase`, oldest first."""
        found = Path(runs_dir).glob(str(cls(Path("*")).best_checkpoint(phase)))
        return [cls.of_checkpoint(p) for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def epoch_checkpoint(self, phase: int, epoch: int) -> Path:
        return self.checkpoints(phase) / f"phase{phase}_epoch_{epoch}.pt"

    def best_checkpoint(self, phase: int) -> Path:
        return self.checkpoints(phase) / f"phase{phase}_best.pt"

    def last_checkpoint(self, phase: int) -> Path:
        return self.checkpoints(phase) / "last.pt"

    def unfinished(self, phase: int) -> str | None:
        """Why this folder's `phase` run is not finished, or None when it is: not training now (its lock is
        free), trained to its last epoch, and calibrated where its phase places photos. Its best checkpoint
        can change until then, so nothing starts from it before."""
        if not self.config.is_file():
            return "has no config.json"
        holder = lock_holder(self.root)
        if holder is not None:
            return f"is still training ({holder})"
        epochs, last = self.read_config().epochs, self.last_checkpoint(phase)
        done = Checkpoint.load(last).epoch if last.is_file() else 0
        if done < epochs:
            return f"stopped after epoch {done} of {epochs}"
        if predicts(phase) and not self.calibration.is_file():
            return "stopped before its calibration"
        return None

    def checkpoint(self, phase: int, name: str = "best") -> Path:
        """`best`, `last`, or a file name inside this phase's checkpoint folder."""
        if name == "best":
            return self.best_checkpoint(phase)
        if name == "last":
            return self.last_checkpoint(phase)
        return self.checkpoints(phase) / name

    # ------------------------------------------------------------------ config and facts
    def write_config(self, cfg: TrainConfig) -> None:
        write_json(self.config, asdict(cfg))

    def read_config(self, data_dir: str | os.PathLike | None = None) -> TrainConfig:
        """The run's config, its folders found again if the run, the data or the working directory moved.

        A folder that does not exist as saved is looked up relative to the run folder, then by its absolute
        path at training time (both recorded in run_info.json); `data_dir` points the run at moved data.
        """
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.root} is not a run folder: it has no config.json")
        cfg = TrainConfig.from_dict(json.loads(self.config.read_text()))
        info = json.loads(self.run_info.read_text()) if self.run_info.is_file() else {}
        found = {}
        for name, recorded in info.get("locations", {}).items():
            if getattr(cfg, name) is None or Path(getattr(cfg, name)).exists():
                continue
            candidates = [self.root / recorded["from_run"], Path(recorded["absolute"])]
            found[name] = str(next((c for c in candidates if c.exists()), getattr(cfg, name)))
        if data_dir is not None:
            found["data_dir"] = str(data_dir)
        return dataclasses.replace(cfg, **found)

    def locations(self, cfg: TrainConfig) -> dict:
        """Where the run's folders are, absolutely and from the run folder: for run_info.json."""
        paths = {name: getattr(cfg, name) for name in ("data_dir", "images_root", "cache_dir")}
        return {
            name: {
                "absolute": str(Path(p).resolve()),
                "from_run": os.path.relpath(Path(p).resolve(), self.root),
            }
            for name, p in paths.items()
            if p is not None
        }

    def write_run_info(self, info: dict) -> None:
        write_json(self.run_info, info)

    # ------------------------------------------------------------------ losses.csv
    def append_losses(self, rows: list[dict]) -> None:
        """Append rows as one write, flushed to disk: a kill or a full disk can cut at most the tail, which
        `truncate_losses` removes on resume."""
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=LOSSES_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        if not self.losses.exists():
            writer.writeheader()
        writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
        with open(self.losses, "a", encoding="utf-8") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())

    def truncate_losses(self, last_epoch: int) -> None:
        """Keep only the whole rows of finished epochs (a train and a val row each), so a resumed run neither
        repeats nor loses a row, and a row torn by a kill or a full disk is cut."""
        if not self.losses.exists():
            return
        text = self.losses.read_text(encoding="utf-8", errors="replace")
        lines = list(csv.reader(text.split("\n")[:-1]))  # a last line without its newline is torn
        header, rows = (lines[0], lines[1:]) if lines else (LOSSES_CSV_COLUMNS, [])
        if header != LOSSES_CSV_COLUMNS:
            raise ValueError(
                f"{self.losses} does not start with the columns of this version; start the run again "
                "(overwrite=True) or move the file away"
            )
        whole = [r for r in rows if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= last_epoch]
        splits: dict[str, set[str]] = {}
        for row in whole:
            splits.setdefault(row[0], set()).add(row[1])
        kept = [r for r in whole if splits[r[0]] >= {"train", "val"}]
        if not kept and last_epoch == 0:
            self.losses.unlink()
        elif kept != rows:
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([header, *kept])
            atomic_write_text(self.losses, out.getvalue())

    def read_losses(self) -> pd.DataFrame:
        return pd.read_csv(self.losses)

    # ------------------------------------------------------------------ checkpoints
    def load_checkpoint(self, phase: int, name: str = "best") -> Checkpoint:
        return Checkpoint.load(self.checkpoint(phase, name))

    # ------------------------------------------------------------------ log


def run_logger(folder: RunFolder) -> logging.Logger:
    """A logger that writes plain lines to stdout at once and to log.txt from `open_log_file` on.

    Lines logged before are held and written then, so that a start that is refused leaves no log.txt.
    """
    logger = logging.getLogger(f"geoloc.run.{folder.root.resolve()}")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stdout = logging.StreamHandler(sys.stdout)
    held = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)
    for handler in (stdout, held):
        handler.setFormatter(RelativePaths(folder.root))
        logger.addHandler(handler)
    return logger


class RelativePaths(logging.Formatter):
    """Plain lines in which this machine's absolute paths read relative to the run folder (a checkpoint is
    `checkpoints/phase1/phase1_best.pt`, the shared cache `../feature_cache/...`), so a log reads the same
    wherever the project lives."""

    def __init__(self, root: Path):
        super().__init__("%(message)s")
        run = os.path.join(os.path.abspath(root), "")
        parent = os.path.join(os.path.dirname(os.path.abspath(root)), "")
        self.prefixes = [(run, ""), (os.path.join(os.path.realpath(root), ""), ""), (parent, "../")]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for prefix, replacement in self.prefixes:
            text = text.replace(prefix, replacement)
        return text


def open_log_file(folder: RunFolder, logger: logging.Logger) -> None:
    """Start writing `logger` (from `run_logger`) to log.txt, beginning with the lines it held."""
    to_file = logging.FileHandler(folder.log, encoding="utf-8")
    to_file.setFormatter(RelativePaths(folder.root))
    for held in [h for h in logger.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        held.setTarget(to_file)
        held.flush()
        logger.removeHandler(held)
        held.close()
    logger.addHandler(to_file)


def silent_logger() -> logging.Logger:
    """The logger of a process that does not write the run folder (all but the first under torchrun)."""
    logger = logging.getLogger("geoloc.run.silent")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    return logger


def latest_run(runs_dir: str | Path = "runs", phase: int = 1) -> RunFolder:
    """The most recently modified run folder that holds a best checkpoint of `phase`."""
    candidates = RunFolder.with_best(runs_dir, phase)
    if not candidates:
        raise FileNotFoundError(
            f"no finished Phase {phase} run under {runs_dir}/; run {PHASES[phase].notebook} first"
        )
    return candidates[-1]


def load_run_data(cfg: TrainConfig, image_check: str = "exists") -> GeoDataset:
    """The run's data folder, validated, with its validation split carved out of train."""
    data = load_dataset(
        cfg.data_dir, cfg.images_root, image_check, cfg.allow_missing_provinces, cfg.allow_images_outside
    )
    return data.with_validation(cfg.val_fraction, cfg.val_block_km, cfg.val_seed, cfg.val_buffer_km)
