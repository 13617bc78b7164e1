"""Location-disjoint splits: a validation split carved from train, or a train/test split of new data.

Photos are grouped into square blocks of `block_km` on the ground; a block lies wholly on one side of
the split, so no place is seen in training and then scored in validation. Each block belongs to the
province most of its photos are in; per province the blocks are taken in a random order onto the
held-out side until it holds the province's share, so every province keeps its share, and a province is
never left without training rows.

The order is random whatever a block's size. Scikit-learn's StratifiedGroupKFold, used before, deals the
largest blocks first to balance its folds, so a small held-out share (validation's tenth) got mostly the
small blocks: sparse outskirts, harder than the dense centres a larger share (the test split) got. Over the
six calibration datasets (`tools/bench_calibration`) Islamabad's validation photos sat, in five of them, in
blocks of 1 to 5 photos on average against 10 to 29 for its test photos, and its radii, calibrated on the
harder places, over-covered the test in every one. Validation and test are now random samples of blocks alike.

Blocks alone still let a town that straddles a block border have photos on both sides, a few hundred metres
apart. So the kept photos within `buffer_km` of any held-out photo are left out altogether (OSV-5M keeps every
test photo 1 km from every training photo): no held-out photo has a kept one nearer than that.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from geoloc_lib.geo.sphere import EARTH_RADIUS_KM, KM_PER_DEG_LAT

BLOCK_REFERENCE_LAT = 30.0  # blocks are block_km wide at this latitude (Pakistan spans 24-37 N)


def location_blocks(latitude, longitude, block_km: float) -> np.ndarray:
    """Block id [N] of each coordinate: a grid of `block_km` squares (east-west width exact at 30 N)."""
    lat = np.asarray(latitude, float)
    lon = np.asarray(longitude, float)
    row = np.floor(lat * KM_PER_DEG_LAT / block_km).astype(np.int64)
    km_per_deg_lon = KM_PER_DEG_LAT * math.cos(math.radians(BLOCK_REFERENCE_LAT))
    col = np.floor(lon * km_per_deg_lon / block_km).astype(np.int64)
    return pd.factorize(pd.Series(row) * 1_000_003 + col)[0]


def location_split(
    split: pd.DataFrame, fraction: float = 0.1, block_km: float = 10.0, seed: int = 0, buffer_km: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held_out): about `fraction` of the rows held out, whole location blocks at a time, and the kept
    rows within `buffer_km` of a held-out one left out of both (`len(split) - len(kept) - len(held_out)`).

    Works on any frame with `latitude`, `longitude` and `province_id`; the row order inside each part is
    the input's.
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"the held-out fraction must be in (0, 0.5], not {fraction}")
    if block_km <= 0:
        raise ValueError(f"block_km must be positive, not {block_km}")
    blocks = location_blocks(split["latitude"], split["longitude"], block_km)
    province = split["province_id"].to_numpy()
    photos = pd.DataFrame({"block": blocks, "province": province})
    per_block = photos.groupby(["block", "province"]).size().reset_index(name="photos")
    # a block that straddles a border belongs to the province most of its photos are in (the first on a tie)
    owners = per_block.sort_values(["block", "photos"], ascending=[True, False], kind="stable")
    owners = owners.drop_duplicates("block").set_index("block")["province"]
    size = photos.groupby("block").size()
    rng = np.random.default_rng(seed)
    held_blocks = []
    for p in np.unique(owners.to_numpy()):
        mine = owners.index[owners.to_numpy() == p].to_numpy()
        mine = mine[rng.permutation(len(mine))]
        sizes = size.loc[mine].to_numpy()
        before, share = np.cumsum(sizes) - sizes, fraction * sizes.sum()
        # in the random order, the blocks that fit wholly in the share go, and the block that crosses it goes
        # with the chance of the part that fits: the share is met on average, and a block no larger than the
        # share has the same chance whatever its size
        take = before + sizes <= share
        crossing = (before < share) & ~take
        take |= crossing & (rng.random(len(mine)) < (share - before) / sizes)
        held_blocks.extend(mine[take])
    held_out = np.isin(blocks, held_blocks)
    # a province whose every block went to the held-out side stays wholly on the kept side
    emptied = [p for p in np.unique(province) if held_out[province == p].all()]
    held_out[np.isin(province, emptied)] = False
    kept, held = split[~held_out], split[held_out]
    return kept[nearest_km(kept, held) >= buffer_km], held


def nearest_km(places: pd.DataFrame, others: pd.DataFrame) -> np.ndarray:
    """[N] the great-circle distance from each of `places` to the nearest of `others` (inf when there are none)."""
    if others.empty or places.empty:
        return np.full(len(places), np.inf)
    from sklearn.neighbors import BallTree  # here: prediction never needs scikit-learn

    tree = BallTree(np.deg2rad(others[["latitude", "longitude"]].to_numpy(float)), metric="haversine")
    distance, _ = tree.query(np.deg2rad(places[["latitude", "longitude"]].to_numpy(float)), k=1)
    return distance[:, 0] * EARTH_RADIUS_KM
