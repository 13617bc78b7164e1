"""Evaluation metrics, defined once here and used by training, evaluation, the notebooks and the CLI.

Error columns:
- end-to-end (`median_error_km`, ...): the model's own province, cell and offset, no labels fed.
- oracle-cell (`oracle_*`): the true cell's centre + the predicted offset. It measures the offset
  head alone and is not a geolocation result.
- per decoding mode (`hierarchical_*`, `joint_*`, `mixture_*`): the same photos decoded each way
  (see model/decoding.py); the unprefixed columns are the run's chosen mode.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import haversine_km
from geoloc_lib.model.decode_modes import DECODE_MODES

ACCURACY_RADII_KM = (1, 25, 200, 750)
GEOSCORE_SCALE_KM = 1492.7
ERROR_STATS = ("median", "mean", "p90")


def error_columns(prefix: str = "") -> list[str]:
    return [f"{prefix}{stat}_error_km" for stat in ERROR_STATS]


ACCURACY_COLUMNS = [f"acc_{r}km" for r in ACCURACY_RADII_KM]
PROVINCE_ACCURACY_COLUMNS = [f"{p.key}_acc" for p in prov.PROVINCES]
# The specification's metric columns of losses.csv, in its order, then the ones it did not have.
SPEC_METRIC_COLUMNS = [*error_columns(), *PROVINCE_ACCURACY_COLUMNS]
EXTRA_METRIC_COLUMNS = [
    *error_columns("oracle_"),
    *[column for mode in DECODE_MODES for column in error_columns(f"{mode}_")],
    *ACCURACY_COLUMNS,
    "geoscore",
    "province_acc",
    "province_balanced_acc",
]
# What a summary of one way of predicting shows (evaluation tables, notebooks, the CLI).
SUMMARY_METRICS = [
    *error_columns(),
    *ACCURACY_COLUMNS,
    "geoscore",
    "province_acc",
    "province_balanced_acc",
]


def geoscore(errors_km) -> np.ndarray:
    """GeoGuessr-style score per photo: 5000 * exp(-d / 1492.7)."""
    return 5000.0 * np.exp(-np.asarray(errors_km, float) / GEOSCORE_SCALE_KM)


def error_summary(errors_km, prefix: str = "") -> dict[str, float]:
    """Median, mean and p90 error; without a prefix also accuracy within each radius and GeoScore."""
    e = np.asarray(errors_km, float)
    if e.size == 0:
        return {}
    stats = (np.median(e), np.mean(e), np.percentile(e, 90))
    out = {name: float(v) for name, v in zip(error_columns(prefix), stats, strict=True)}
    if not prefix:
        out.update(
            {
                col: float(100 * np.mean(e <= r))
                for col, r in zip(ACCURACY_COLUMNS, ACCURACY_RADII_KM, strict=True)
            }
        )
        out["geoscore"] = float(np.mean(geoscore(e)))
    return out


def province_accuracy(true_ids, pred_ids) -> dict[str, float]:
    """Per-province accuracy in percent (`sindh_acc`, ...; NaN where a province has no photos) and overall."""
    true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
    out = {}
    for p, column in zip(prov.PROVINCES, PROVINCE_ACCURACY_COLUMNS, strict=True):
        mask = true_ids == p.id
        out[column] = float(100 * np.mean(pred_ids[mask] == p.id)) if mask.any() else float("nan")
    out["province_acc"] = float(100 * np.mean(true_ids == pred_ids)) if len(true_ids) else float("nan")
    per_province = [out[c] for c in PROVINCE_ACCURACY_COLUMNS]
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
    for name in ("oracle", *DECODE_MODES):
        if f"{name}_error_km" in pred:
            out.update(error_summary(pred[f"{name}_error_km"], prefix=f"{name}_"))
    out.update(province_accuracy(pred["province_id"], pred["pred_province_id"]))
    if "gate_alpha" in pred:  # how far the fusion leans on the scene CNN (1) rather than CLIP (0)
        out["gate_alpha"] = float(pred["gate_alpha"].mean())
    return out


def mode_view(pred: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The predictions table as if `mode` had been the chosen decoding mode."""
    return pred.assign(
        pred_lat=pred[f"{mode}_lat"],
        pred_lon=pred[f"{mode}_lon"],
        error_km=pred[f"{mode}_error_km"],
        pred_province_id=pred[f"{mode}_province_id"],
    )


def per_province_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Photos, province accuracy and error statistics per true province."""
    rows = []
    for p in prov.PROVINCES:
        part = pred[pred["province_id"] == p.id]
        e = part["error_km"]
        has = len(part) > 0
        rows.append(
            {
                "province": p.name,
                "photos": len(part),
                "province_acc": 100 * float(np.mean(part["pred_province_id"] == p.id)) if has else np.nan,
                "median_error_km": float(e.median()) if has else np.nan,
                "p90_error_km": float(e.quantile(0.9)) if has else np.nan,
                "acc_25km": 100 * float(np.mean(e <= 25)) if has else np.nan,
            }
        )
        if "gate_alpha" in part:  # the fusion gate's mean weight on the scene CNN for this province's photos
            rows[-1]["gate_alpha"] = float(part["gate_alpha"].mean()) if has else np.nan
    return pd.DataFrame(rows).set_index("province")


# Named predictions -> predictions-table columns; `province`, `lat` and `lon` are always given.
PREDICTION_COLUMNS = {
    "province": "pred_province_id",
    "lat": "pred_lat",
    "lon": "pred_lon",
    "cell_id": "pred_cell_id",
    "province_prob": "pred_province_prob",
    "cell_prob": "pred_cell_prob",  # p(province) x p(cell | province) of the prediction: its confidence
    "spread_km": "pred_spread_km",  # probability-weighted distance of the hypotheses from the prediction
}
# Other predictions compared against the chosen one: the oracle coordinate and each decoding mode.
ALTERNATIVES = ("oracle", *DECODE_MODES)


def predictions_frame(split: pd.DataFrame, predicted: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per photo: the truth, then every prediction in `predicted` and its error.

    `predicted` holds the keys of PREDICTION_COLUMNS, and for each alternative name of ALTERNATIVES
    that it covers `{name}_lat`, `{name}_lon` (and for decoding modes `{name}_province`).
    """
    true_lat, true_lon = split["latitude"].to_numpy(float), split["longitude"].to_numpy(float)
    names = np.array(prov.PROVINCE_NAMES)
    frame = pd.DataFrame(
        {
            "id": split["id"].to_numpy(),
            "latitude": true_lat,
            "longitude": true_lon,
            "province_id": split["province_id"].to_numpy(),
            "province": names[split["province_id"].to_numpy()],
            "cell_id": split["cell_id"].to_numpy(),
        }
    )
    for key, column in PREDICTION_COLUMNS.items():
        if key in predicted:
            frame[column] = np.asarray(predicted[key])
    frame["pred_province_id"] = frame["pred_province_id"].astype(int)
    frame["pred_province"] = names[frame["pred_province_id"].to_numpy()]

    def error(lat, lon):
        return haversine_km(true_lat, true_lon, np.asarray(lat, float), np.asarray(lon, float))

    frame["error_km"] = error(predicted["lat"], predicted["lon"])
    for name in ALTERNATIVES:
        if f"{name}_lat" in predicted:
            frame[f"{name}_lat"], frame[f"{name}_lon"] = predicted[f"{name}_lat"], predicted[f"{name}_lon"]
            frame[f"{name}_error_km"] = error(predicted[f"{name}_lat"], predicted[f"{name}_lon"])
        if f"{name}_province" in predicted:
            frame[f"{name}_province_id"] = np.asarray(predicted[f"{name}_province"]).astype(int)
    return frame
