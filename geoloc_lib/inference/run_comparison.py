"""Several training runs side by side: the settings in which they differ, their best validation epoch, the
per-province medians and error distributions of their best validation predictions, and the test-split report of
those that 04_error_maps has evaluated (notebooks/05_compare_runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from geoloc_lib.evaluate.metrics import per_province_table
from geoloc_lib.inference.run_evaluation import EvaluationFolderError, read_evaluation
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.phases import phase_of

COMPARED = ["median_error_km", "p90_error_km", "acc_25km", "province_acc", "geoscore"]
# settings that name places, not choices: two runs always differ in them
NOT_SETTINGS = {"run_name", "runs_dir", "cache_dir", "resume", "overwrite", "phase0_checkpoint", "device"}


def finished_runs(runs_dir: str | Path = "runs", phase: int = 1) -> list[RunFolder]:
    """Every run folder under `runs_dir` with a best checkpoint of `phase`, oldest first."""
    return RunFolder.with_best(runs_dir, phase)


def _checked(folders: list[RunFolder]) -> list[RunFolder]:
    missing = [str(f.root) for f in folders if not f.config.is_file()]
    if missing:
        raise ValueError(f"not run folders (no config.json): {missing}; pass folders under runs/")
    phases = {f.read_config().phase for f in folders}
    if 0 in phases and len(phases) > 1:  # Phases 1 and 2 both place photos and select on the same median
        raise ValueError(
            f"the runs are of phases {sorted(phases)}: compare Phase 0 runs with each other, and Phase 1 and 2 "
            "runs with each other"
        )
    if len(folders) < 2:
        raise ValueError(f"{len(folders)} run(s) given: a comparison needs at least two")
    return folders


def differing_settings(folders: list[RunFolder]) -> pd.DataFrame:
    """One column per run, one row per setting whose value is not the same in every run."""
    configs = {f.root.name: dataclasses.asdict(f.read_config()) for f in _checked(folders)}
    table = pd.DataFrame(configs).drop(index=list(NOT_SETTINGS), errors="ignore")
    same = table.apply(lambda values: len(set(map(str, values))) == 1, axis=1)  # None counts as a value
    return table[~same]


def best_validation(folders: list[RunFolder]) -> pd.DataFrame:
    """One row per run: the epoch its phase selects on validation, and that epoch's validation metrics."""
    rows = {}
    for folder in _checked(folders):
        phase = phase_of(folder.read_config())
        val = folder.read_losses().query("split == 'val'")
        best = val.loc[val.apply(phase.selection_metric, axis=1).idxmin()]
        rows[folder.root.name] = {"epochs": int(val["epoch"].max()), "best_epoch": int(best["epoch"])} | {
            k: float(best[k]) for k in COMPARED if k in best
        }
    return pd.DataFrame(rows).T


def test_reports(folders: list[RunFolder]) -> pd.DataFrame:
    """The model row of each evaluated run's test-split summary (runs not yet evaluated are left out)."""
    rows = {}
    for folder in folders:
        try:
            ladder = read_evaluation(folder.evaluation, "ladder")
        except EvaluationFolderError:
            continue
        model = ladder.iloc[0]  # the model's row comes first, above the baselines
        rows[folder.root.name] = {k: float(model[k]) for k in COMPARED if k in model}
    return pd.DataFrame(rows).T


def validation_curves(folders: list[RunFolder]) -> pd.DataFrame:
    """Long table (run, epoch, median_error_km) of every run's validation median per epoch."""
    parts = [
        f.read_losses().query("split == 'val'")[["epoch", "median_error_km"]].assign(run=f.root.name)
        for f in folders
    ]
    return pd.concat(parts, ignore_index=True)


def best_val_predictions(folders: list[RunFolder]) -> dict[str, pd.DataFrame]:
    """Each run's validation predictions at its best epoch (val_predictions_best.csv)."""
    return {f.root.name: pd.read_csv(f.val_predictions_best) for f in folders}


def province_medians(predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per province, one column per run: the median error (km) of its photos."""
    return pd.DataFrame(
        {run: per_province_table(pred)["median_error_km"] for run, pred in predictions.items()}
    )
