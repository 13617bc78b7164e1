"""Bursts: a photo taken in the same minute as an earlier one, within a few metres of it, repeats it.

Photos are compared only within their capture minute, and within a minute on a grid of cells at least
`burst_m` wide: a photo can lie within `burst_m` of another only if that one sits in its own cell or one of
the eight around it. So a minute of n photos costs about n look-ups, not n^2 distances (a camera whose clock
is stuck puts every photo in one minute).
"""

from __future__ import annotations

import math

import numpy as np

from geoloc_lib.geo.sphere import KM_PER_DEG_LAT, haversine_km

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
MIN_CELL_DEG = 1e-7  # about 1 cm: the grid of burst_m = 0 (only photos at the very same spot)


def burst_repeats(lat: np.ndarray, lon: np.ndarray, burst_m: float) -> dict[int, int]:
    """{photo: the kept photo it repeats} among the photos of one minute, taken in order: a photo within
    `burst_m` (haversine) of a kept photo repeats the first such one and is not kept; any other is kept.

    lat, lon: [N] degrees, in the photos' order."""
    cell_lat = max(burst_m / 1000 / KM_PER_DEG_LAT, MIN_CELL_DEG)
    # a degree of longitude is shortest at the largest latitude, so cells there are still burst_m wide
    shrink = max(math.cos(math.radians(float(np.abs(lat).max(initial=0.0)))), 0.01)
    rows, cols = np.floor(lat / cell_lat).astype(np.int64), np.floor(lon * shrink / cell_lat).astype(np.int64)
    kept: dict[tuple[int, int], list[int]] = {}
    repeats: dict[int, int] = {}
    for i in range(len(lat)):
        near = [k for dy, dx in NEIGHBOURS for k in kept.get((rows[i] + dy, cols[i] + dx), ())]
        if near:
            near = np.array(sorted(near))  # [K] kept photos in order
            close = near[haversine_km(lat[i], lon[i], lat[near], lon[near]) * 1000 <= burst_m]
            if len(close):
                repeats[i] = int(close[0])
                continue
        kept.setdefault((rows[i], cols[i]), []).append(i)
    return repeats
