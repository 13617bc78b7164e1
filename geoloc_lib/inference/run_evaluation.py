"""Evaluate a finished run on a labelled split (`evaluate_run`) and keep the result as an evaluation folder.

The folder's tables are written one by one, atomically, then `source.json` names the split, the checkpoint and
each table's hash; `read_evaluation` refuses any table that is not the one `source.json` was written with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geoloc_lib.base.atomic_files import atomic_write_text, neutralise_formulas, write_json
from geoloc_lib.base.folder_lock import RunLock
from geoloc_lib.data.contract import GeoDataset, load_split
from geoloc_lib.data.feature_cache import clean_features
from geoloc_lib.evaluate.baselines import baseline_ladder, ladder_table
from geoloc_lib.evaluate.calibration import coverage_table, radius_confidence
from geoloc_lib.evaluate.metrics import (
    SUMMARY_METRICS,
    confusion_matrix,
    mode_view,
    per_province_table,
    prediction_metrics,
)
from geoloc_lib.evaluate.selective import selective_accuracy, selective_figures
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.model.decode_modes import DECODE_MODES
from geoloc_lib.run.folder import RunFolder, load_run_data

EVALUATION_SOURCE = "source.json"


@dataclass
class RunEvaluation:
    """The tables of `evaluate_run`, and the data they were computed on."""

    tables: dict[str, pd.DataFrame]  # predictions, summary, per_province, confusion
    dataset: GeoDataset  # the run's data folder: cells, train and test splits
    split: pd.DataFrame  # the evaluated split
    split_name: str  # "test", "val", or the CSV it was read from
    predictor: Predictor  # the model that made the predictions

    @property
    def predictions(self) -> pd.DataFrame:
        return self.tables["predictions"]


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str | os.PathLike = "test",
    checkpoint: str = "best",
    device: str = "auto",
    out_dir: str | os.PathLike | None = None,
    baselines: bool = True,
    progress: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> RunEvaluation:
    """Evaluate a run on `split` and write the tables into `out_dir` (default RUN_DIR/evaluation).

    `split`: "test" (the data folder's test.csv, the final report), "val" (the validation split the run
    made its choices on), or the path of another labelled CSV. Writes predictions.csv, summary.csv (every
    decoding mode), per_province.csv and confusion.csv; with `baselines`, also baselines.csv (the
    baseline ladder on the same rows and features, see evaluate/baselines.py) and ladder.csv (the model above it).
    """
    folder = RunFolder(run_dir)
    cfg = folder.read_config(data_dir)
    out_dir = Path(out_dir) if out_dir else folder.evaluation
    lock = RunLock(out_dir)  # one evaluation into a folder at a time
    try:
        predictor = Predictor.from_run(run_dir, checkpoint, device, data_dir, config=cfg)
        dataset = load_run_data(cfg)
        split_name = str(split)
        if split_name in ("test", "val"):
            rows = getattr(dataset, split_name)
        else:
            rows = load_split(split, dataset.cells, cfg.images_root)
        pred = predictor.evaluate(rows, progress=progress)
        pred, trust = _trust_tables(predictor, pred, dataset.cells)
        tables = {
            "predictions": pred,
            "summary": summary_table(pred),
            "per_province": per_province_table(pred),
            "confusion": confusion_matrix(pred["province_id"], pred["pred_province_id"]),
            **trust,
        }
        if baselines:
            tables |= _ladder_tables(cfg, predictor, dataset, rows, pred)
        source = {"run_dir": str(run_dir), "split": split_name, "checkpoint": checkpoint, "rows": len(rows)}
        write_evaluation(out_dir, tables, source)
    finally:
        lock.release()
    return RunEvaluation(tables, dataset, rows, split_name, predictor)


def _trust_tables(predictor: Predictor, pred: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The predictions with their credible radii, and the tables of how well radii and confidence held."""
    if predictor.calibration is None:  # a run trained before credible radii
        return pred, {}
    radii = predictor.calibration.radii(pred, cells)
    pred = pred.join(radii).assign(confidence=radius_confidence(radii.iloc[:, -1]))
    curve, ranking = selective_accuracy(pred)
    tables = {
        "coverage": coverage_table(pred, radii, predictor.calibration),
        "selective_accuracy": curve,
        "selective_figures": selective_figures(curve),
        "confidence_ranking": pd.DataFrame({"value": ranking}),
    }
    return pred, tables


def _ladder_tables(
    cfg, predictor: Predictor, dataset: GeoDataset, rows: pd.DataFrame, pred: pd.DataFrame
) -> dict:
    """The baseline ladder on the same rows and the same frozen features, and the model above it."""
    encoders = predictor.model.encoders
    fingerprint = encoders.fingerprint()
    train_features, features = (
        clean_features(cfg.cache, part, encoders, fingerprint, predictor.device, log=lambda _: None)
        for part in (dataset.train, rows)
    )
    ladder = baseline_ladder(train_features, dataset.train, features, rows, dataset.cells)
    model_name = f"model ({cfg.decode_mode} decoding)"
    return {"baselines": ladder, "ladder": ladder_table(prediction_metrics(pred), ladder, model_name)}


class EvaluationFolderError(ValueError):
    """An evaluation folder whose tables were not all written by the evaluation its source.json names."""


def write_evaluation(out_dir: Path, tables: dict[str, pd.DataFrame], source: dict) -> None:
    """Each table atomically, then source.json last, naming the split, the checkpoint and each file's hash:
    a kill part-way leaves tables that `read_evaluation` recognises as not belonging to source.json."""
    files = {}
    for name, table in tables.items():
        text = neutralise_formulas(table).to_csv(index=name != "predictions")
        atomic_write_text(out_dir / f"{name}.csv", text)
        files[f"{name}.csv"] = hashlib.sha256(text.encode()).hexdigest()
    write_json(out_dir / EVALUATION_SOURCE, source | {"files": files})


def read_evaluation(out_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    """One table of an evaluation folder, refused unless it is the one its source.json was written with."""
    out_dir = Path(out_dir)
    try:
        source = json.loads((out_dir / EVALUATION_SOURCE).read_text())
        expected = source["files"][f"{name}.csv"]
    except (OSError, ValueError, KeyError) as err:
        raise EvaluationFolderError(
            f"{out_dir} has no complete evaluation with a {name} table ({type(err).__name__}: {err}); run "
            "evaluate_run (04_error_maps) again"
        ) from None
    data = (out_dir / f"{name}.csv").read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise EvaluationFolderError(
            f"{out_dir / (name + '.csv')} is not the table of the evaluation in {EVALUATION_SOURCE} (split "
            f"{source.get('split')}, checkpoint {source.get('checkpoint')}): an evaluation was stopped part-way "
            "or two ran into this folder; run evaluate_run (04_error_maps) again"
        )
    return pd.read_csv(io.BytesIO(data), index_col=None if name == "predictions" else 0)


def summary_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Metrics of every decoding mode side by side (rows: SUMMARY_METRICS and the oracle median)."""
    keys = [*SUMMARY_METRICS, "oracle_median_error_km"]
    columns = {mode: prediction_metrics(mode_view(pred, mode)) for mode in DECODE_MODES}
    return pd.DataFrame({mode: [m[k] for k in keys] for mode, m in columns.items()}, index=keys)
