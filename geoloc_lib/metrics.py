"""Evaluation metrics, computed once here and used by training, evaluation and the notebooks.

Error columns:
- end-to-end (`median_error_km`, ...): the model's own province, cell and offset, no labels fed.
- oracle-cell (`oracle_*`): the true cell's centre + the predicted offset. This is what the original
  system reported as its "median 3.27 km"; it is not a geolocation result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import provinces as prov
from .geo import haversine_km

ACCURACY_RADII_KM = (1, 25, 200, 750)
GEOSCORE_SCALE_KM = 1492.7

SEED_COLUMNS = [
    "epoch",
    "split",
    "loss_total",
    "loss_province",
    "loss_geocell",
    "loss_offset",
    "loss_aux",
    "median_error_km",
    "mean_error_km",
    "p90_error_km",
    *[f"{p.key}_acc" for p in prov.PROVINCES],
]


def geoscore(errors_km) -> np.ndarray:
    """GeoGuessr-style score per photo: 5000 * exp(-d / 1492.7)."""
    return 5000.0 * np.exp(-np.asarray(errors_km, float) / GEOSCORE_SCALE_KM)


def error_summary(errors_km, prefix: str = "") -> dict[str, float]:
    e = np.asarray(errors_km, float)
    if e.size == 0:
        return {}
    out = {
        f"{prefix}median_error_km": float(np.median(e)),
        f"{prefix}mean_error_km": float(np.mean(e)),
        f"{prefix}p90_error_km": float(np.percentile(e, 90)),
    }
    if not prefix:
        out.update({f"acc_{r}km": float(100 * np.mean(e <= r)) for r in ACCURACY_RADII_KM})
        out["geoscore"] = float(np.mean(geoscore(e)))
    return out


def province_accuracy(true_ids, pred_ids) -> dict[str, float]:
    """Per-province accuracy in percent (`sindh_acc`, ...; NaN where a province has no photos) and overall."""
    true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
    out = {}
    for p in prov.PROVINCES:
        mask = true_ids == p.id
        out[f"{p.key}_acc"] = float(100 * np.mean(pred_ids[mask] == p.id)) if mask.any() else float("nan")
    out["province_acc"] = float(100 * np.mean(true_ids == pred_ids)) if len(true_ids) else float("nan")
    per_province = [out[f"{p.key}_acc"] for p in prov.PROVINCES]
    out["province_balanced_acc"] = float(np.nanmean(per_province)) if len(true_ids) else float("nan")
    return out


def confusion_matrix(true_ids, pred_ids) -> pd.DataFrame:
    """Counts, rows = true province, columns = predicted province."""
    n = prov.NUM_PROVINCES
    counts = np.bincount(np.asarray(true_ids) * n + np.asarray(pred_ids), minlength=n * n).reshape(n, n)
    return pd.DataFrame(counts, index=pd.Index(prov.PROVINCE_NAMES, name="true"), columns=prov.PROVINCE_NAMES)


def prediction_metrics(pred: pd.DataFrame) -> dict[str, float]:
    """All per-split metrics from a predictions table (see `predictions_frame`)."""
    out = error_summary(pred["error_km"])
    if "oracle_error_km" in pred:
        out.update(error_summary(pred["oracle_error_km"], prefix="oracle_"))
    if "mix_error_km" in pred:
        out.update(error_summary(pred["mix_error_km"], prefix="mixture_"))
    out.update(province_accuracy(pred["province_id"], pred["pred_province_id"]))
    return out


def per_province_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Photos, province accuracy and error statistics per true province."""
    rows = []
    for p in prov.PROVINCES:
        part = pred[pred["province_id"] == p.id]
        rows.append(
            {
                "province": p.name,
                "photos": len(part),
                "province_acc": 100 * float(np.mean(part["pred_province_id"] == p.id))
                if len(part)
                else np.nan,
                "median_error_km": float(part["error_km"].median()) if len(part) else np.nan,
                "p90_error_km": float(part["error_km"].quantile(0.9)) if len(part) else np.nan,
                "acc_25km": 100 * float(np.mean(part["error_km"] <= 25)) if len(part) else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("province")


def naive_baseline(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """Always guess the centre (mean coordinate) of the most common training province."""
    top = train["province_id"].value_counts().idxmax()
    lat = float(train.loc[train["province_id"] == top, "latitude"].mean())
    lon = float(train.loc[train["province_id"] == top, "longitude"].mean())
    errors = haversine_km(test["latitude"].to_numpy(), test["longitude"].to_numpy(), lat, lon)
    return {"guess": f"centre of {prov.by_id(top).name} ({lat:.2f}, {lon:.2f})", **error_summary(errors)}


def predictions_frame(
    split: pd.DataFrame,
    pred_province,
    lat,
    lon,
    oracle_lat,
    oracle_lon,
    mix_lat=None,
    mix_lon=None,
    cell_id=None,
    province_prob=None,
) -> pd.DataFrame:
    """One row per photo: truth, argmax prediction, oracle-cell prediction and (optionally) the mixture."""
    true_lat, true_lon = split["latitude"].to_numpy(float), split["longitude"].to_numpy(float)

    def error(a, b):
        return haversine_km(true_lat, true_lon, np.asarray(a, float), np.asarray(b, float))

    frame = pd.DataFrame(
        {
            "id": split["id"].to_numpy(),
            "latitude": true_lat,
            "longitude": true_lon,
            "province_id": split["province_id"].to_numpy(),
            "cell_id": split["cell_id"].to_numpy(),
            "pred_province_id": np.asarray(pred_province).astype(int),
            "pred_lat": np.asarray(lat, float),
            "pred_lon": np.asarray(lon, float),
            "error_km": error(lat, lon),
            "oracle_error_km": error(oracle_lat, oracle_lon),
        }
    )
    if mix_lat is not None:
        frame["pred_cell_id"] = np.asarray(cell_id).astype(np.int64)
        frame["pred_province_prob"] = np.asarray(province_prob, float)
        frame["mix_lat"] = np.asarray(mix_lat, float)
        frame["mix_lon"] = np.asarray(mix_lon, float)
        frame["mix_error_km"] = error(mix_lat, mix_lon)
    names = np.array(prov.PROVINCE_NAMES)
    frame.insert(4, "province", names[frame["province_id"].to_numpy()])
    frame["pred_province"] = names[frame["pred_province_id"].to_numpy()]
    return frame
