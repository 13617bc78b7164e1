"""`CellTable`: the geocell metadata as tensors, with the maps between global and local cell ids.

Cell ids in `cell_metadata.csv` need not be contiguous. The model works with three indices:

- the global `cell_id` of the CSVs,
- a flat index 0..N-1 over all cells (metadata order: province id, then cell id),
- a local index 0..C_p-1 inside the cell's province, which is what a province's geocell head predicts.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from torch import nn

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import km_to_deg


class CellTable(nn.Module):
    def __init__(self, cells: pd.DataFrame):
        super().__init__()
        cells = cells.sort_values(["province_id", "cell_id"]).reset_index(drop=True)
        self.num_cells = len(cells)
        province = cells["province_id"].to_numpy(np.int64)
        n_cells = np.bincount(province, minlength=prov.NUM_PROVINCES)
        self.max_cells = int(n_cells.max())
        local_to_flat = np.zeros((prov.NUM_PROVINCES, self.max_cells), dtype=np.int64)
        for p in range(prov.NUM_PROVINCES):
            flat = np.flatnonzero(province == p)
            local_to_flat[p, : len(flat)] = flat
        ids = cells["cell_id"].to_numpy(np.int64)
        order = np.argsort(ids)
        scale = np.array([prov.by_id(p).offset_scale for p in province])
        bound_km = cells["radius_km"].to_numpy(float) * scale
        dlat, dlon = km_to_deg(bound_km, cells["center_lat"].to_numpy(float))

        def buffer(name, value, dtype):
            # not persistent: rebuilt from cell_metadata.csv; checkpoints store `signature()` instead
            self.register_buffer(name, torch.tensor(np.array(value), dtype=dtype), persistent=False)

        buffer("sorted_ids", ids[order], torch.int64)  # [N] global ids, ascending
        buffer("sorted_to_flat", order, torch.int64)  # [N]
        buffer("cell_ids", ids, torch.int64)  # [N] flat -> global id
        buffer("province", province, torch.int64)  # [N]
        buffer("local_to_flat", local_to_flat, torch.int64)  # [P, Cmax] (0 where padded)
        buffer(
            "local_index", np.concatenate([np.arange(n) for n in n_cells]), torch.int64
        )  # [N] flat -> local
        buffer("cell_mask", np.arange(self.max_cells)[None, :] < n_cells[:, None], torch.bool)  # [P, Cmax]
        buffer("n_cells", n_cells, torch.int64)  # [P]
        buffer("center", cells[["center_lat", "center_lon"]].to_numpy(float), torch.float32)  # [N, 2]
        buffer("radius_km", cells["radius_km"].to_numpy(float), torch.float32)  # [N]
        buffer("offset_bound_deg", np.stack([dlat, dlon], axis=1), torch.float32)  # [N, 2]
        buffer("neighbourhood", self._neighbourhood(cells, ids), torch.bool)  # [N, N]

    @staticmethod
    def _neighbourhood(cells: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
        """[N, N] True where column j is row i itself or one of i's `neighbor_cell_ids` (flat order)."""
        n = len(ids)
        near = np.eye(n, dtype=bool)
        if "neighbor_cell_ids" in cells:
            flat_of = pd.Series(np.arange(n), index=ids)
            lists = cells["neighbor_cell_ids"].fillna("").astype(str).str.split(",")
            pairs = [(i, int(j)) for i, ids_i in enumerate(lists) for j in ids_i if j.strip()]
            if pairs:
                rows, neighbour_ids = np.array(pairs).T
                near[rows, flat_of.loc[neighbour_ids].to_numpy()] = True
        return near

    def flat_index(self, cell_ids: torch.Tensor) -> torch.Tensor:
        """Global cell ids [...] -> flat indices [...]. Ids must exist (the data contract checks this)."""
        pos = torch.searchsorted(self.sorted_ids, cell_ids).clamp_max(self.num_cells - 1)
        return self.sorted_to_flat[pos]

    def signature(self) -> dict:
        """What a checkpoint records to detect a mismatch with other metadata."""
        return {
            "num_cells": self.num_cells,
            "n_cells_per_province": self.n_cells.tolist(),
            # the whole table: ids, centres, radii and neighbours (a changed radius moves offsets)
            "cells_sha256": hashlib.sha256(
                self.cell_ids.cpu().numpy().tobytes()
                + self.center.cpu().numpy().round(4).tobytes()
                + self.radius_km.cpu().numpy().round(3).tobytes()
                + np.packbits(self.neighbourhood.cpu().numpy()).tobytes()
            ).hexdigest()[:16],
        }
