"""Predict photos with a trained run (`Predictor`), and evaluate a run on a labelled split (`evaluate_run`).

The hypotheses (top provinces x top cells) become one coordinate by the run's decoding mode
(hierarchical, joint or mixture; see decoding.py). The command line is in predict.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import provinces as prov
from .baselines import baseline_ladder, ladder_table
from .cells import CellTable
from .checkpoints import atomic_write_text, load_checkpoint, neutralise_formulas, write_json
from .config import TrainConfig
from .contract import GeoDataset, load_cell_metadata, load_split
from .datasets import open_rgb
from .decoding import Decoder
from .devices import select_device
from .evaluation import evaluate
from .factory import model_from_checkpoint
from .features import clean_features
from .metrics import (
    DECODE_MODES,
    SUMMARY_METRICS,
    confusion_matrix,
    mode_view,
    per_province_table,
    prediction_metrics,
)
from .model import GeolocModel
from .progress import progress_bar
from .retrieval import RetrievalIndex
from .runfolder import RunFolder
from .runlock import RunLock
from .sources import EncodedImages
from .transforms import eval_transform

EVALUATION_SOURCE = "source.json"


class Predictor:
    """A trained Phase 1 model on a device, with the decoding its run was trained with."""

    def __init__(self, model: GeolocModel, device: torch.device, decoder: Decoder):
        self.model = model.to(device).eval()
        self.device = device
        self.decoder = decoder
        self.transform = eval_transform(model.encoders.image_size)

    @classmethod
    def from_checkpoint(
        cls, checkpoint_path: str | os.PathLike, cell_metadata_path: str | os.PathLike, device: str = "auto"
    ) -> Predictor:
        """Rebuild the model of a Phase 1 checkpoint (read with weights_only=True) on these cells."""
        checkpoint = load_checkpoint(checkpoint_path)
        cells = CellTable(load_cell_metadata(cell_metadata_path))
        model = model_from_checkpoint(checkpoint, cells, str(checkpoint_path))
        decoder = Decoder(
            TrainConfig.from_dict(checkpoint["config"]).decode_config, torch.tensor(checkpoint["prior_shift"])
        )
        return cls(model, select_device(device), decoder)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        checkpoint: str = "best",
        device: str = "auto",
        data_dir: str | os.PathLike | None = None,
    ) -> Predictor:
        """The predictor of a run folder, decoding as the run was configured (retrieval included).

        `data_dir` points the run at its data folder when that moved (see RunFolder.read_config).
        """
        folder = RunFolder(run_dir)
        cfg = folder.read_config(data_dir)
        predictor = cls.from_checkpoint(
            folder.checkpoint(1, checkpoint), Path(cfg.data_dir) / "cell_metadata.csv", device
        )
        if cfg.retrieval_k > 0:
            train = cfg.load_data().train
            encoders = predictor.model.encoders
            features = clean_features(
                cfg, train, encoders, encoders.fingerprint(), predictor.device, log=lambda _: None
            )
            index = RetrievalIndex(
                predictor.model.heads, features, train, cfg.retrieval_k, cfg.retrieval_temperature
            )
            predictor.decoder = dataclasses.replace(predictor.decoder, retrieval=index)
        return predictor

    @torch.no_grad()
    def _predict_batch(self, images: list) -> dict[str, np.ndarray]:
        batch = torch.stack([self.transform(_as_image(x)) for x in images]).to(self.device)  # [B, 3, H, W]
        pred = self.decoder(self.model.heads, self.model(batch))
        return {
            k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in pred.items()
        }

    def predict(self, images: list, batch_size: int = 64, mode: str | None = None) -> pd.DataFrame:
        """One row per image: the coordinate and province of `mode` (default: the run's), every mode's
        coordinate, and the hypotheses (province, cell, probability, coordinate), most probable first."""
        mode = mode or self.decoder.config.mode
        if mode not in DECODE_MODES:
            raise ValueError(f"mode must be one of {DECODE_MODES}, not {mode!r}")
        images = list(images)
        starts = range(0, len(images), batch_size)
        parts = [
            self._predict_batch(images[i : i + batch_size])
            for i in progress_bar(starts, desc="predict", leave=False, disable=len(starts) < 2)
        ]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        names = np.array(prov.PROVINCE_NAMES)
        frame = pd.DataFrame(
            {
                "image": [
                    f"<image {i}>" if isinstance(x, Image.Image) else str(x) for i, x in enumerate(images)
                ],
                "lat": cat[f"{mode}_lat"],
                "lon": cat[f"{mode}_lon"],
                "province": names[cat[f"{mode}_province"]],
                **{f"{m}_{field}": cat[f"{m}_{field}"] for m in DECODE_MODES for field in ("lat", "lon")},
            }
        )
        frame["hypotheses"] = [
            sorted(  # most probable first (the decoder keeps them grouped by province)
                (
                    {
                        "province": names[p],
                        "cell_id": int(c),
                        "prob": float(pr),
                        "lat": float(xy[0]),
                        "lon": float(xy[1]),
                    }
                    for p, c, pr, xy, ok in zip(*row, strict=True)
                    if ok
                ),
                key=lambda h: -h["prob"],
            )
            for row in zip(
                cat["hyp_province"],
                cat["hyp_cell_id"],
                cat["hyp_prob"],
                cat["hyp_coords"],
                cat["hyp_valid"],
                strict=True,
            )
        ]
        return frame

    def evaluate(
        self, split: pd.DataFrame, batch_size: int = 64, num_workers: int = 2, progress: bool = True
    ) -> pd.DataFrame:
        """Predictions table of a validated, labelled split (see `evaluation.evaluate`)."""
        images = EncodedImages(self.model.encoders, self.device, split, batch_size, num_workers)
        return evaluate(
            self.model.heads, images.eval_batches(), split, self.decoder, progress=progress
        ).predictions


def _as_image(item) -> Image.Image:
    return item.convert("RGB") if isinstance(item, Image.Image) else open_rgb(str(item))


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
    num_workers: int = 2,
    baselines: bool = True,
    progress: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> RunEvaluation:
    """Evaluate a run on `split` and write the tables into `out_dir` (default RUN_DIR/evaluation).

    `split`: "test" (the data folder's test.csv, the final report), "val" (the validation split the run
    made its choices on), or the path of another labelled CSV. Writes predictions.csv, summary.csv (every
    decoding mode), per_province.csv and confusion.csv; with `baselines`, also baselines.csv (the
    baseline ladder on the same rows and features, see baselines.py) and ladder.csv (the model above it).
    """
    folder = RunFolder(run_dir)
    cfg = folder.read_config(data_dir)
    out_dir = Path(out_dir) if out_dir else folder.evaluation
    lock = RunLock(out_dir)  # one evaluation into a folder at a time
    try:
        predictor = Predictor.from_run(run_dir, checkpoint, device, data_dir)
        dataset = cfg.load_data()
        split_name = str(split)
        if split_name in ("test", "val"):
            rows = getattr(dataset, split_name)
        else:
            rows = load_split(split, dataset.cells, cfg.images_root)
        pred = predictor.evaluate(rows, num_workers=num_workers, progress=progress)
        tables = {
            "predictions": pred,
            "summary": summary_table(pred),
            "per_province": per_province_table(pred),
            "confusion": confusion_matrix(pred["province_id"], pred["pred_province_id"]),
        }
        if baselines:
            encoders = predictor.model.encoders
            fingerprint = encoders.fingerprint()
            train_features, features = (
                clean_features(cfg, part, encoders, fingerprint, predictor.device, log=lambda _: None)
                for part in (dataset.train, rows)
            )
            tables["baselines"] = baseline_ladder(
                train_features, dataset.train, features, rows, dataset.cells
            )
            model_name = f"model ({cfg.decode_mode} decoding)"
            tables["ladder"] = ladder_table(prediction_metrics(pred), tables["baselines"], model_name)
        source = {"run_dir": str(run_dir), "split": split_name, "checkpoint": checkpoint, "rows": len(rows)}
        write_evaluation(out_dir, tables, source)
    finally:
        lock.release()
    return RunEvaluation(tables, dataset, rows, split_name, predictor)


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
