"""Geocell builder: per-province density clustering of training coordinates.

Recipe (per province, in a local equirectangular projection measured in km):

1. HDBSCAN (scikit-learn) with `min_cluster_size = min_samples`. Large provinces are clustered on a
   seeded subsample of at most `max_cluster_points` points; every point is then assigned to the
   nearest cluster centre, so the result still covers all photos.
2. Noise points and clusters with fewer than `min_samples` photos are merged into the nearest cell.
3. A cell whose radius exceeds `target_radius_km` is split with k-means into
   ceil((radius / target)^2) parts, never into parts smaller than `min_samples`; repeated until no
   cell can or needs to be split.
4. `radius_km` is the 95th percentile of member distances to the centre (at least 1 km), so one
   stray photo does not inflate the offset bound of a whole cell.

Cell ids are contiguous per province in province-id order. Test rows never change the cells:
`assign_cells` maps any split to the nearest cell centre of the row's own province (haversine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.neighbors import BallTree, NearestNeighbors

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import project_local_km, unproject_local_km

RADIUS_QUANTILE = 0.95
MIN_RADIUS_KM = 1.0


@dataclass
class GeocellConfig:
    min_samples: int = 40  # minimum photos per cell
    target_radius_km: float = 50.0  # cells larger than this are split
    n_neighbors: int = 8  # same-province neighbours written per cell
    max_cluster_points: int = 20_000  # HDBSCAN runs on a subsample above this many points
    seed: int = 0


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return NearestNeighbors(n_neighbors=1).fit(centres).kneighbors(points, return_distance=False)[:, 0]


def _centres(xy: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    sums = np.zeros((n, 2))
    np.add.at(sums, labels, xy)
    counts = np.bincount(labels, minlength=n)[:, None]
    return sums / np.maximum(counts, 1)


def _radii(xy: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    dist = np.linalg.norm(xy - centres[labels], axis=1)
    # one grouped pass over all points; empty cells get the floor
    quantiles = pd.Series(dist).groupby(labels).quantile(RADIUS_QUANTILE)
    radii = quantiles.reindex(range(len(centres)), fill_value=MIN_RADIUS_KM).to_numpy(float)
    return np.maximum(radii, MIN_RADIUS_KM)


def _merge_small(xy: np.ndarray, labels: np.ndarray, min_samples: int) -> np.ndarray:
    """Relabel so that every cell has >= min_samples points (or there is one cell); -1 is noise."""
    while True:
        ids, counts = np.unique(labels[labels >= 0], return_counts=True)
        keep = ids[counts >= min_samples]
        if len(keep) == 0:
            return np.zeros(len(xy), dtype=int)
        # keep[i] -> i, everything else (noise, small clusters) -> -1, without a per-point Python loop
        pos = np.searchsorted(keep, labels).clip(max=len(keep) - 1)
        kept = np.where(keep[pos] == labels, pos, -1)
        centres = _centres(xy[kept >= 0], kept[kept >= 0], len(keep))
        relabelled = _nearest(xy, centres)  # noise and small clusters join the nearest kept cell
        counts = np.bincount(relabelled, minlength=len(keep))
        if counts.min() >= min_samples or len(keep) == 1:
            return relabelled
        labels = np.where(counts[relabelled] >= min_samples, relabelled, -1)


def _split_large(xy: np.ndarray, labels: np.ndarray, cfg: GeocellConfig) -> np.ndarray:
    rng_seed = cfg.seed
    while True:
        n = labels.max() + 1
        centres = _centres(xy, labels, n)
        radii = _radii(xy, labels, centres)
        split_any = False
        new_labels = labels.copy()
        next_id = n
        for k in np.flatnonzero(radii > cfg.target_radius_km):
            members = np.flatnonzero(labels == k)
            parts = min(math.ceil((radii[k] / cfg.target_radius_km) ** 2), len(members) // cfg.min_samples)
            if parts < 2 or len(np.unique(xy[members], axis=0)) < parts:
                continue
            sub = KMeans(n_clusters=parts, n_init=3, random_state=rng_seed).fit_predict(xy[members])
            sub = _merge_small(xy[members], sub, cfg.min_samples)
            if sub.max() < 1:
                continue
            split_any = True
            new_labels[members] = np.where(sub == 0, k, next_id + sub - 1)
            next_id += sub.max()
        if not split_any:
            return labels
        labels = new_labels


def _cluster_province(lat: np.ndarray, lon: np.ndarray, cfg: GeocellConfig):
    """Cell label (0..k-1) of every point of one province, the projected points and the origin."""
    n = len(lat)
    lat0, lon0 = float(np.mean(lat)), float(np.mean(lon))
    xy = project_local_km(lat, lon, lat0, lon0)
    if n < 2 * cfg.min_samples or len(np.unique(xy, axis=0)) < 2:
        labels = np.zeros(n, dtype=int)
    else:
        rng = np.random.default_rng(cfg.seed)
        sample = rng.choice(n, cfg.max_cluster_points, replace=False) if n > cfg.max_cluster_points else None
        fit_xy = xy if sample is None else xy[sample]
        raw = HDBSCAN(
            min_cluster_size=cfg.min_samples, min_samples=min(cfg.min_samples, 10), copy=True
        ).fit_predict(fit_xy)
        raw = _merge_small(fit_xy, raw, cfg.min_samples)
        labels = raw if sample is None else _nearest(xy, _centres(fit_xy, raw, raw.max() + 1))
        labels = _merge_small(xy, labels, cfg.min_samples)
    labels = _split_large(xy, labels, cfg)
    # final Voronoi pass so membership matches what assign_cells will compute for test rows
    labels = _merge_small(xy, _nearest(xy, _centres(xy, labels, labels.max() + 1)), cfg.min_samples)
    return labels, xy, (lat0, lon0)


def build_geocells(train: pd.DataFrame, config: GeocellConfig | None = None) -> pd.DataFrame:
    """Build `cell_metadata.csv` rows from the training split (columns of the data contract + n_samples)."""
    cfg = config or GeocellConfig()
    rows = []
    next_cell_id = 0
    for p in prov.PROVINCES:
        part = train[train["province_id"] == p.id]
        if part.empty:
            continue
        labels, xy, (lat0, lon0) = _cluster_province(
            part["latitude"].to_numpy(float), part["longitude"].to_numpy(float), cfg
        )
        n_cells = labels.max() + 1
        centres = _centres(xy, labels, n_cells)
        radii = _radii(xy, labels, centres)
        counts = np.bincount(labels, minlength=n_cells)
        clat, clon = unproject_local_km(centres, lat0, lon0)
        # K nearest same-province cells by great-circle distance between centres (self excluded)
        k = min(cfg.n_neighbors, n_cells - 1)
        neighbours = [[] for _ in range(n_cells)]
        if k > 0:
            tree = BallTree(np.deg2rad(np.stack([clat, clon], axis=1)), metric="haversine")
            _, idx = tree.query(np.deg2rad(np.stack([clat, clon], axis=1)), k=k + 1)
            neighbours = [[j for j in row if j != i][:k] for i, row in enumerate(idx)]
        for i in range(n_cells):
            rows.append(
                {
                    "cell_id": next_cell_id + i,
                    "province": p.name,
                    "province_id": p.id,
                    "center_lat": round(float(clat[i]), 6),
                    "center_lon": round(float(clon[i]), 6),
                    "radius_km": round(float(radii[i]), 3),
                    "neighbor_cell_ids": ",".join(str(next_cell_id + j) for j in neighbours[i]),
                    "n_samples": int(counts[i]),
                }
            )
        next_cell_id += n_cells
    return pd.DataFrame(rows)


def assign_cells(split: pd.DataFrame, cells: pd.DataFrame) -> np.ndarray:
    """cell_id of the nearest cell centre in each row's own province (great-circle distance)."""
    out = np.full(len(split), -1, dtype=np.int64)
    for pid, part in split.groupby("province_id"):
        own = cells[cells["province_id"] == pid]
        if own.empty:
            raise ValueError(f"no geocells for province {prov.by_id(pid).name}; rebuild the geocells")
        tree = BallTree(np.deg2rad(own[["center_lat", "center_lon"]].to_numpy(float)), metric="haversine")
        _, idx = tree.query(np.deg2rad(part[["latitude", "longitude"]].to_numpy(float)), k=1)
        out[split.index.get_indexer(part.index)] = own["cell_id"].to_numpy()[idx[:, 0]]
    return out
