"""Predict photos with a trained run, and evaluate a run on a labelled CSV.

    python -m geoloc_lib.predict RUN_DIR IMAGE [IMAGE ...] [--mode mixture] [--csv out.csv]

Two ways of turning the top-2 provinces x top-5 cells hypotheses into one coordinate:
`argmax` (the single most probable hypothesis) and `mixture` (their probability-weighted mean).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import provinces as prov
from .cells import CellTable
from .checkpoints import write_json
from .contract import load_cell_metadata, load_split
from .datasets import PhotoDataset, open_rgb
from .encoders import DualEncoder, EncoderConfig, verify_fingerprint
from .metrics import confusion_matrix, per_province_table, prediction_metrics, predictions_frame
from .model import HeadConfig, Phase1Model, load_checkpoint
from .train import load_run_config, select_device
from .transforms import eval_transform

MODES = ("argmax", "mixture")


class CheckpointMismatchError(ValueError):
    pass


class Predictor:
    def __init__(self, model: Phase1Model, device: torch.device, top_provinces: int = 2, top_cells: int = 5):
        self.model = model.to(device).eval()
        self.device = device
        self.transform = eval_transform(model.encoders.image_size)
        self.top_provinces = top_provinces
        self.top_cells = top_cells

    @classmethod
    def from_checkpoint(
        cls, checkpoint_path: str | os.PathLike, cell_metadata_path: str | os.PathLike, device: str = "auto"
    ) -> Predictor:
        """Rebuild the model of a Phase 1 checkpoint (loaded with weights_only=True)."""
        checkpoint = load_checkpoint(checkpoint_path)
        if checkpoint.get("phase") != 1:
            raise CheckpointMismatchError(f"{checkpoint_path} is not a Phase 1 checkpoint")
        cells = CellTable(load_cell_metadata(cell_metadata_path))
        if cells.signature() != checkpoint["cells"]:
            raise CheckpointMismatchError(
                f"{checkpoint_path} was trained with other geocells than {cell_metadata_path} "
                f"(checkpoint {checkpoint['cells']}, metadata {cells.signature()}). Use the cell_metadata.csv "
                f"the run was trained with."
            )
        head_cfg = HeadConfig(**{f.name: checkpoint["head_config"][f.name] for f in fields(HeadConfig)})
        cfg = checkpoint["config"]
        encoders = DualEncoder(
            EncoderConfig(**checkpoint["encoder_config"]), cfg["freeze_clip"], cfg["freeze_scene"]
        )
        model = Phase1Model(encoders, cells, head_cfg)
        missing, unexpected = model.load_state_dict(checkpoint["model_state"], strict=False)
        missing = [k for k in missing if k in model.trainable_state_dict()]
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"{checkpoint_path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        verify_fingerprint(model.encoders, checkpoint.get("encoder_fingerprint"), str(checkpoint_path))
        return cls(model, select_device(device), cfg["top_provinces"], cfg["top_cells"])

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "auto"
    ) -> Predictor:
        cfg = load_run_config(run_dir)
        name = {"best": "phase1_best.pt", "last": "last.pt"}.get(checkpoint, checkpoint)
        path = Path(run_dir) / "checkpoints" / "phase1" / name
        return cls.from_checkpoint(path, Path(cfg.data_dir) / "cell_metadata.csv", device)

    @torch.no_grad()
    def _run(self, images: torch.Tensor, cell_ids=None) -> dict[str, np.ndarray]:
        batch = images.to(self.device, non_blocking=True)  # [B, 3, H, W]
        cells = None if cell_ids is None else torch.tensor(np.asarray(cell_ids), device=self.device)
        out = self.model(batch, cell_ids=cells)
        pred = self.model.heads.predict(out, self.top_provinces, self.top_cells)
        result = {
            k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in pred.items()
        }
        if cells is not None:
            oracle = self.model.cells.center[out["cell_flat"]] + out["offsets"].float()
            result["oracle"] = oracle.cpu().numpy()
        return result

    def _batches(self, items: list, batch_size: int):
        for start in tqdm(range(0, len(items), batch_size), desc="predict", leave=False):
            chunk = items[start : start + batch_size]
            yield self._run(torch.stack([self.transform(self._as_image(x)) for x in chunk]))

    @staticmethod
    def _as_image(item) -> Image.Image:
        return item.convert("RGB") if isinstance(item, Image.Image) else open_rgb(str(item))

    def predict(self, images: list, batch_size: int = 64, mode: str = "argmax") -> pd.DataFrame:
        """One row per image: lat/lon of `mode`, both modes' coordinates, province and the hypotheses."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        parts = list(self._batches(list(images), batch_size))
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        names = [str(x) if not isinstance(x, Image.Image) else f"<image {i}>" for i, x in enumerate(images)]
        frame = pd.DataFrame(
            {
                "image": names,
                "lat": cat["mix_lat"] if mode == "mixture" else cat["lat"],
                "lon": cat["mix_lon"] if mode == "mixture" else cat["lon"],
                "province": np.array(prov.PROVINCE_NAMES)[cat["province"]],
                "province_prob": cat["province_prob"],
                "argmax_lat": cat["lat"],
                "argmax_lon": cat["lon"],
                "mixture_lat": cat["mix_lat"],
                "mixture_lon": cat["mix_lon"],
                "cell_id": cat["cell_id"],
            }
        )
        frame["hypotheses"] = [
            [
                {
                    "province": prov.by_id(p).name,
                    "cell_id": int(c),
                    "prob": float(pr),
                    "lat": float(xy[0]),
                    "lon": float(xy[1]),
                }
                for p, c, pr, xy in zip(hp, hc, hpr, hxy, strict=True)
            ]
            for hp, hc, hpr, hxy in zip(
                cat["hyp_province"], cat["hyp_cell_id"], cat["hyp_prob"], cat["hyp_coords"], strict=True
            )
        ]
        return frame

    def evaluate(self, split: pd.DataFrame, batch_size: int = 64, num_workers: int = 2) -> pd.DataFrame:
        """Predictions table (argmax and mixture modes, plus the oracle-cell error) for a validated split.

        Photos are decoded by the training code's dataset in `num_workers` processes.
        """
        loader = torch.utils.data.DataLoader(
            PhotoDataset(split, self.transform),
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
        )
        cell_ids = split["cell_id"].to_numpy()
        parts = []
        batches = iter(loader)
        with tqdm(total=len(split), desc="evaluate", unit="img", leave=False) as bar:
            for images, index in batches:  # the bar never holds the worker iterator (see features.py)
                parts.append(self._run(images, cell_ids[index.numpy()]))
                bar.update(len(index))
        del batches
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return predictions_frame(
            split,
            cat["province"],
            cat["lat"],
            cat["lon"],
            cat["oracle"][:, 0],
            cat["oracle"][:, 1],
            cat["mix_lat"],
            cat["mix_lon"],
            cat["cell_id"],
            cat["province_prob"],
        )


def evaluate_run(
    run_dir: str | os.PathLike,
    split_csv: str | os.PathLike | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    out_dir: str | os.PathLike | None = None,
    num_workers: int = 2,
) -> dict:
    """Evaluate a run on a labelled CSV (default: its validation split) and write the tables.

    Writes predictions.csv, summary.csv (argmax and mixture), per_province.csv and confusion.csv into
    `out_dir` (default RUN_DIR/evaluation) and returns them as DataFrames.
    """
    cfg = load_run_config(run_dir)
    predictor = Predictor.from_run(run_dir, checkpoint, device)
    cells = load_cell_metadata(Path(cfg.data_dir) / "cell_metadata.csv")
    split_csv = Path(split_csv) if split_csv else Path(cfg.data_dir) / "test.csv"
    split = load_split(split_csv, cells, cfg.images_root)
    pred = predictor.evaluate(split, num_workers=num_workers)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_table(pred)
    tables = {
        "predictions": pred,
        "summary": summary,
        "per_province": per_province_table(pred),
        "confusion": confusion_matrix(pred["province_id"], pred["pred_province_id"]),
    }
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=name != "predictions")
    write_json(
        out_dir / "source.json", {"run_dir": str(run_dir), "split": str(split_csv), "checkpoint": checkpoint}
    )
    return tables


def summary_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Metrics of the argmax and the mixture coordinates side by side."""
    argmax = prediction_metrics(pred)
    mixture = prediction_metrics(pred.assign(error_km=pred["mix_error_km"]))
    keys = [
        "median_error_km",
        "mean_error_km",
        "p90_error_km",
        "acc_1km",
        "acc_25km",
        "acc_200km",
        "acc_750km",
        "geoscore",
        "oracle_median_error_km",
        "province_acc",
        "province_balanced_acc",
    ]
    return pd.DataFrame(
        {"argmax": [argmax[k] for k in keys], "mixture": [mixture[k] for k in keys]}, index=keys
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Predict where photos were taken with a trained run.")
    parser.add_argument("run_dir")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--mode", choices=MODES, default="argmax")
    parser.add_argument(
        "--checkpoint", default="best", help="best, last, or a file name in checkpoints/phase1"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--csv", help="also write the predictions (with all hypotheses) to this CSV")
    args = parser.parse_args(argv)
    predictor = Predictor.from_run(args.run_dir, args.checkpoint, args.device)
    frame = predictor.predict(args.images, args.batch_size, args.mode)
    with pd.option_context("display.width", 160, "display.max_colwidth", 40):
        print(frame[["image", "lat", "lon", "province", "province_prob", "cell_id"]].to_string(index=False))
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
