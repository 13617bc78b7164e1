"""Baselines that use nothing but the training labels, to put every model number in context."""

from __future__ import annotations

import pandas as pd

from . import provinces as prov
from .geo import haversine_km
from .metrics import error_summary


def constant_baseline(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """Always guess the centre (mean coordinate) of the most common training province."""
    top = train["province_id"].value_counts().idxmax()
    lat = float(train.loc[train["province_id"] == top, "latitude"].mean())
    lon = float(train.loc[train["province_id"] == top, "longitude"].mean())
    errors = haversine_km(test["latitude"].to_numpy(), test["longitude"].to_numpy(), lat, lon)
    return {"guess": f"centre of {prov.by_id(top).name} ({lat:.2f}, {lon:.2f})", **error_summary(errors)}
