"""Predict photos with a trained run (`Predictor`); `run_evaluation.py` scores a run on a labelled split.

The hypotheses (top provinces x top cells) become one coordinate by the run's decoding mode
(hierarchical, joint or mixture; see model/decoding.py). The command line is in predict.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from geoloc_lib.base.devices import select_device
from geoloc_lib.base.folder_marks import CELLS_CSV
from geoloc_lib.base.progress import progress_bar
from geoloc_lib.data.contract import load_cell_metadata
from geoloc_lib.data.feature_cache import clean_features
from geoloc_lib.data.feature_sources import EncodedImages
from geoloc_lib.data.photos import open_rgb
from geoloc_lib.data.transforms import eval_transform
from geoloc_lib.evaluate.calibration import LEVELS, RadiusCalibration, radius_column, radius_confidence
from geoloc_lib.evaluate.evaluation import evaluate
from geoloc_lib.evaluate.novelty import NoveltyIndex
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.model.decode_modes import DECODE_MODES
from geoloc_lib.model.decoding import Decoder
from geoloc_lib.model.heads import GeolocModel
from geoloc_lib.model.retrieval import RetrievalIndex
from geoloc_lib.run.checkpoint import Checkpoint
from geoloc_lib.run.folder import RunFolder, load_run_data
from geoloc_lib.run.model import model_from_checkpoint
from geoloc_lib.run.spec import TrainConfig


class Predictor:
    """A trained Phase 1 model on a device, with the decoding its run was trained with."""

    def __init__(
        self,
        model: GeolocModel,
        device: torch.device,
        decoder: Decoder,
        cells: pd.DataFrame,
        calibration: RadiusCalibration | None = None,
        novelty: NoveltyIndex | None = None,
    ):
        self.model = model.to(device).eval()
        self.device = device
        self.decoder = decoder
        self.cells = cells  # the cell metadata, for the radii scaled by the predicted cell
        self.calibration = calibration  # credible radii of the run's decoding mode (None: not calibrated)
        self.novelty = novelty  # flags photos unlike every training photo (None: no index)
        self.transform = eval_transform(model.encoders.image_size)
        self.run_config: TrainConfig | None = (
            None  # the run's settings, for a predictor made from a run folder
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint_path: str | os.PathLike, cell_metadata_path: str | os.PathLike, device: str = "auto"
    ) -> Predictor:
        """Rebuild the model of a Phase 1 checkpoint (read with weights_only=True) on these cells."""
        checkpoint = Checkpoint.load(checkpoint_path)
        metadata = load_cell_metadata(cell_metadata_path)
        model = model_from_checkpoint(checkpoint, CellTable(metadata), str(checkpoint_path))
        decoder = Decoder(
            TrainConfig.from_dict(checkpoint.config).decoding, torch.tensor(checkpoint.prior_shift)
        )
        return cls(model, select_device(device), decoder, metadata)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        checkpoint: str = "best",
        device: str = "auto",
        data_dir: str | os.PathLike | None = None,
        config: TrainConfig | None = None,
    ) -> Predictor:
        """The predictor of a run folder, decoding as the run was configured (retrieval included).

        `data_dir` points the run at its data folder when that moved (see RunFolder.read_config); `config` is
        the run's config when the caller has read it already.
        """
        folder = RunFolder(run_dir)
        cfg = config or folder.read_config(data_dir)
        predictor = cls.from_checkpoint(
            folder.checkpoint(cfg.phase, checkpoint), Path(cfg.data_dir) / CELLS_CSV, device
        )
        if folder.calibration.is_file():
            predictor.calibration = read_calibration(folder.calibration)
        if folder.novelty.is_file():
            predictor.novelty = NoveltyIndex.load(folder.novelty)
        if cfg.retrieval_k > 0:
            train = load_run_data(cfg).train
            encoders = predictor.model.encoders
            features = clean_features(
                cfg.cache,
                train,
                encoders,
                encoders.fingerprint(),
                predictor.device,
                log=lambda _: None,
            )
            index = RetrievalIndex(
                predictor.model.heads, features, train, cfg.retrieval_k, cfg.retrieval_temperature
            )
            predictor.decoder = dataclasses.replace(predictor.decoder, retrieval=index)
        predictor.run_config = cfg
        return predictor

    @torch.no_grad()
    def _predict_batch(self, images: list) -> dict[str, np.ndarray]:
        batch = torch.stack([self.transform(_as_image(x)) for x in images]).to(self.device)  # [B, 3, H, W]
        clip, scene = self.model.encoders(batch)  # [B, Dc], [B, Ds]
        pred = self.decoder(self.model.heads, self.model.heads(clip, scene))
        if self.novelty is not None:
            pred["novelty_distance"] = self.novelty.distance(clip, scene, pred["cell_probs"])
        return {
            k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in pred.items()
        }

    def predict(
        self, images: list, batch_size: int = 64, mode: str | None = None, cell_probs: bool = False
    ) -> pd.DataFrame:
        """One row per image: the coordinate and province of `mode` (default: the run's), every mode's
        coordinate, and the hypotheses (province, cell, probability, coordinate), most probable first; with
        `cell_probs`, also each photo's probability of every cell ([C] in the order of `cell_table`)."""
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
                "cell_prob": cat["cell_prob"],  # p(province) x p(cell | province) of the run's own mode
            }
        )
        if self.novelty is not None:
            frame["novelty_distance"] = cat["novelty_distance"]
            frame["out_of_domain"] = cat["novelty_distance"] > self.novelty.threshold
        # confidence is the calibrated one or empty: radii exist only for the mode the run was calibrated in
        levels = self.calibration.levels if self.calibration is not None else LEVELS
        radii = pd.DataFrame(np.nan, index=frame.index, columns=[radius_column(level) for level in levels])
        if uncalibrated_reason(self.calibration, self.decoder.config.mode, mode) is None:
            radii = self.radii(cat)
        frame = frame.join(radii).assign(confidence=radius_confidence(radii.iloc[:, -1]))
        frame["hypotheses"] = _hypotheses(cat, names)
        if cell_probs:
            frame["cell_probs"] = list(cat["cell_probs"])
        return frame

    def cell_table(self, probs: np.ndarray) -> pd.DataFrame:
        """The cell metadata in the model's flat cell order with one photo's probabilities `probs` [C] as a
        `prob` column: what `viz/photo_maps.probability_map` draws."""
        order = self.model.cells.cell_ids.cpu().numpy()
        return self.cells.set_index("cell_id").loc[order].reset_index().assign(prob=probs)

    def radii(self, decoded: dict[str, np.ndarray]) -> pd.DataFrame:
        """The credible radii (`radius_50_km`, ...) of decoded photos, from the run's calibration."""
        chosen = pd.DataFrame(
            {
                "pred_province_id": decoded["province"],
                "pred_cell_id": decoded["cell_id"],
                "pred_spread_km": decoded["spread_km"],
            }
        )
        return self.calibration.radii(chosen, self.cells)

    def evaluate(
        self, split: pd.DataFrame, batch_size: int = 64, num_workers: int = 2, progress: bool = True
    ) -> pd.DataFrame:
        """Predictions table of a validated, labelled split (see `evaluation.evaluate`)."""
        images = EncodedImages(
            self.model.encoders, self.device, split, eval_batch_size=batch_size, num_workers=num_workers
        )
        return evaluate(
            self.model.heads,
            images.eval_batches(),
            split,
            self.decoder,
            progress=progress,
            novelty=self.novelty,
        ).predictions


def predictor_of_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "auto", data_dir=None
) -> Predictor:
    """`Predictor.from_run` for a folder a user named (`geoloc-predict`, `geoloc-serve`): a path that is not
    a Phase 1 or 2 run folder with that checkpoint is refused with one line that says what to pass instead."""
    from geoloc_lib.run.phases import predicts

    folder = RunFolder(run_dir)
    if folder.root.is_file():
        raise ValueError(f"{run_dir} is a file, not a run folder; give the run folder first: runs/<name>")
    if not folder.root.is_dir():
        raise ValueError(f"{run_dir}: no such run folder; runs live in runs/<name> (ls runs/)")
    if not folder.config.is_file():
        raise ValueError(f"{run_dir} is not a run folder (it has no config.json); pass runs/<name>")
    try:
        config = folder.read_config(data_dir)  # the one read of the run's config: the predictor takes it
    except (ValueError, TypeError) as err:
        raise ValueError(f"{folder.config} is not a readable run config ({err}); retrain the run") from None
    if not predicts(config.phase):
        raise ValueError(
            f"{run_dir} is a Phase 0 run (province pre-training); prediction needs a Phase 1 or 2 run "
            f"(notebooks/03_train_phase1, 03b_train_phase2)"
        )
    if not folder.checkpoint(config.phase, checkpoint).is_file():
        raise FileNotFoundError(
            f"{folder.checkpoint(config.phase, checkpoint)}: checkpoint not found; try --checkpoint last"
        )
    # a damaged file, other geocells, missing weights, a device this machine lacks: each raises a ValueError,
    # OSError or RuntimeError that names it
    return Predictor.from_run(folder.root, checkpoint, device, config=config)


def map_inputs(predictor: Predictor, answer: pd.Series) -> tuple[pd.DataFrame, tuple[float, float], dict]:
    """What `viz/photo_maps.probability_map` draws of one photo's row of `predict(..., cell_probs=True)`: its
    probability of every cell (`Predictor.cell_table`), its predicted place, and its credible radii in km
    ({level: km}; empty for an uncalibrated run)."""
    levels = predictor.calibration.levels if predictor.calibration is not None else LEVELS
    radii = {level: float(answer[radius_column(level)]) for level in levels}
    radii = {level: km for level, km in radii.items() if np.isfinite(km)}
    return predictor.cell_table(answer["cell_probs"]), (float(answer["lat"]), float(answer["lon"])), radii


def _hypotheses(cat: dict[str, np.ndarray], names: np.ndarray) -> list[list[dict]]:
    """Each photo's hypotheses (province, cell, probability, coordinate), most probable first."""
    return [
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


def uncalibrated_reason(calibration: RadiusCalibration | None, own: str, mode: str) -> str | None:
    """Why a run calibrated (or not) in its own decoding mode `own` has no credible radii for `mode`, or None."""
    if calibration is None:
        return (
            "no credible radii: the run has no calibration.json yet (it is still training, or stopped before "
            "its last epoch; resume it to finish), so confidence and the radius columns are empty"
        )
    if mode != own:
        return (
            f"credible radii are calibrated for the run's decoding mode {own!r}, not {mode!r}, so confidence "
            "and the radius columns are empty (leave out --mode to get them)"
        )
    return None


def read_calibration(path: Path) -> RadiusCalibration:
    """A run's calibration.json; a damaged one is refused with the way out."""
    try:
        return RadiusCalibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        what = f"no {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise ValueError(
            f"{path} is damaged ({what}); delete it to predict without credible radii, or resume the run "
            "(resume=True) to calibrate it again"
        ) from None


def _as_image(item) -> Image.Image:
    return item.convert("RGB") if isinstance(item, Image.Image) else open_rgb(str(item))
