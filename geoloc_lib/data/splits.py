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
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from geoloc_lib.geo.sphere import KM_PER_DEG_LAT

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
    return split[~held_out], split[held_out]
