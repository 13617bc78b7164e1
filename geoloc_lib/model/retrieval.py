"""Retrieval refinement: place a photo at its most similar training photos inside the chosen cell.

Once decoding has chosen a cell, the training photos of that cell and of its listed neighbours are
ranked by cosine similarity to the query in the heads' fused embedding, and the prediction moves to
the similarity-weighted mean (softmax over similarity / temperature) of the `k` best ones' coordinates.
With k = 1 that is the single most similar photo. The idea is PIGEON's (Haas et al., CVPR 2024), which
refines inside the predicted geocell with nearby training locations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from geoloc_lib.model.heads import GeoHeads

CHUNK = 4096  # training photos embedded per forward pass when the index is built


class RetrievalIndex:
    """The fused embeddings, cells and coordinates of the training photos, for one set of heads."""

    @torch.no_grad()
    def __init__(
        self,
        heads: GeoHeads,
        features: dict[str, torch.Tensor],
        split: pd.DataFrame,
        k: int = 1,
        temperature: float = 0.1,
    ):
        device = heads.cells.center.device
        heads.eval()
        keys = [
            heads.fuse(
                features["clip"][i : i + CHUNK].to(device).float(),
                features["scene"][i : i + CHUNK].to(device).float(),
            )[0]
            for i in range(0, len(split), CHUNK)
        ]
        self.cells = heads.cells
        self.keys = F.normalize(torch.cat(keys), dim=-1)  # [N, D]
        self.cell_flat = heads.cells.flat_index(
            torch.tensor(np.array(split["cell_id"], np.int64), device=device)
        )  # [N]
        coords = np.array(split[["latitude", "longitude"]], np.float32)
        self.coords = torch.tensor(coords, device=device)  # [N, 2]
        self.k = k
        self.temperature = temperature

    @torch.no_grad()
    def refine(self, fused: torch.Tensor, cell_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused [B, D], chosen cells [B] -> refined (lat, lon) [B, 2], and found [B] (False: the cell and
        its neighbours hold no training photo, so the caller keeps its own coordinate)."""
        similarity = F.normalize(fused.float(), dim=-1) @ self.keys.T  # [B, N]
        allowed = self.cells.neighbourhood[cell_flat][:, self.cell_flat]  # [B, N]
        similarity = similarity.masked_fill(~allowed, -torch.inf)
        best, rows = similarity.topk(min(self.k, len(self.keys)), dim=-1)  # [B, k]
        weights = torch.softmax(best / self.temperature, dim=-1).nan_to_num(0.0)  # all -inf rows: 0
        refined = (weights[..., None] * self.coords[rows]).sum(1)  # [B, 2]
        return refined, torch.isfinite(best[:, 0])
