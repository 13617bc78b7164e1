"""Location-disjoint splits: a validation split carved from train, or a train/test split of new data.

Photos are grouped into square blocks of `block_km` on the ground; a block lies wholly on one side of
the split, so no place is seen in training and then scored in validation. Blocks are dealt to the
held-out side per province (scikit-learn's StratifiedGroupKFold), so every province keeps its share,
and a province is never left without training rows.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd

from geoloc_lib.geo.sphere import KM_PER_DEG_LAT

BLOCK_REFERENCE_LAT = 30.0  # blocks are block_km wide at this latitude (Pakistan spans 24-37 N)
MAX_FOLDS = 20  # a fraction is held out as m of k folds, k at most this (0.4 = 2 of 5, 1/6 = 1 of 6)


def location_blocks(latitude, longitude, block_km: float) -> np.ndarray:
    """Block id [N] of each coordinate: a grid of `block_km` squares (east-west width exact at 30 N)."""
    lat = np.asarray(latitude, float)
    lon = np.asarray(longitude, float)
    row = np.floor(lat * KM_PER_DEG_LAT / block_km).astype(np.int64)
    km_per_deg_lon = KM_PER_DEG_LAT * math.cos(math.radians(BLOCK_REFERENCE_LAT))
    col = np.floor(lon * km_per_deg_lon / block_km).astype(np.int64)
    return pd.factorize(pd.Series(row) * 1_000_003 + col)[0]


def location_split(
    split: pd.DataFrame, fraction: float = 0.1, block_km: float = 10.0, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held_out): about `fraction` of the rows held out, whole location blocks at a time.

    Works on any frame with `latitude`, `longitude` and `province_id`; the row order inside each part is
    the input's.
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"the held-out fraction must be in (0, 0.5], not {fraction}")
    if block_km <= 0:
        raise ValueError(f"block_km must be positive, not {block_km}")
    blocks = location_blocks(split["latitude"], split["longitude"], block_km)
    province = split["province_id"].to_numpy()
    # imported here: loading a dataset to predict never splits, and scikit-learn takes a second to import
    from sklearn.model_selection import StratifiedGroupKFold

    # the held-out side is the first m of k folds, m / k the fraction's nearest ratio (0.1 -> 1 of 10)
    ratio = Fraction(fraction).limit_denominator(MAX_FOLDS)
    folds = StratifiedGroupKFold(n_splits=ratio.denominator, shuffle=True, random_state=seed)
    held_out = np.zeros(len(split), bool)
    with warnings.catch_warnings():  # a small province with fewer blocks than folds is expected
        warnings.simplefilter("ignore", UserWarning)
        fold_iter = folds.split(np.zeros(len(split)), province, groups=blocks)
        for _ in range(ratio.numerator):
            held_out[next(fold_iter)[1]] = True
    # a province whose every block went to the held-out side stays wholly on the kept side
    emptied = [p for p in np.unique(province) if held_out[province == p].all()]
    held_out[np.isin(province, emptied)] = False
    return split[~held_out], split[held_out]
