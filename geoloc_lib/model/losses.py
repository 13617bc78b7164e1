"""The hierarchical loss, each term on a scale where its weight means something.

- province: weighted cross-entropy with effective-number weights, in nats (~ln 7 = 1.95 at chance).
- geocell: KL(soft target || p(cell | true province)), in nats.
- offset: haversine(cell centre + offset, truth) divided by the true cell's radius_km, weighted per
  photo by its province weight. 1.0 means "one cell radius off", whatever the cell's size.
- aux: haversine(aux (lat, lon), truth) divided by `aux_scale_km` (100 km), so that 0.1 x aux stays
  a stabiliser next to terms of order 1 (in raw km it would be hundreds).

The offset term is multiplied by the ramp min(1, epoch / ramp_epochs) (epoch counted from 1), which
the caller passes in as `offset_weight`. Phase 0 uses the same loss with every weight but the
province's set to 0.

Soft targets: for a photo in cell c of province p, t_j = exp(-d(c, j) / tau_p) over all cells j of p,
renormalised, with d the great-circle distance between cell centres, over every cell j of p (or only
over c and its listed neighbours, `soft_label_support="neighbours"`). The [N, Cmax] table is
precomputed once, so a training step only gathers rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.geo.sphere import haversine_km
from geoloc_lib.model.loss_weights import SOFT_LABEL_SUPPORTS, LossWeights


def effective_number_weights(counts, beta: float = 0.999) -> np.ndarray:
    """w_p = 1 / E_p with E_p = (1 - beta^n_p) / (1 - beta), normalised to mean 1 over present classes.

    Absent classes (n_p = 0) get weight 0: they never appear as targets.
    """
    counts = np.asarray(counts, dtype=float)
    present = counts > 0
    effective = (1.0 - np.power(beta, counts)) / (1.0 - beta)
    weights = np.zeros_like(counts)
    weights[present] = 1.0 / effective[present]
    return weights / weights[present].mean()


def province_counts(province_ids) -> np.ndarray:
    return np.bincount(np.asarray(province_ids, dtype=np.int64), minlength=prov.NUM_PROVINCES)


def soft_target_table(cells: CellTable, tau_km_by_province=None, support: str = "province") -> torch.Tensor:
    """[N, Cmax] soft targets over each cell's own province (padded entries 0); rows sum to 1.

    `support`: "province" spreads over every cell of the province; "neighbours" only over the cell
    itself and its listed `neighbor_cell_ids`.
    """
    if support not in SOFT_LABEL_SUPPORTS:
        raise ValueError(f"soft-label support must be one of {SOFT_LABEL_SUPPORTS}, not {support!r}")
    tau = torch.tensor(
        tau_km_by_province if tau_km_by_province is not None else [p.tau_km for p in prov.PROVINCES],
        dtype=torch.float32,
    )
    members = cells.local_to_flat[cells.province]  # [N, Cmax] flat ids of each cell's province mates
    center = cells.center.double()
    d = haversine_km(
        center[:, None, 0], center[:, None, 1], center[members][..., 0], center[members][..., 1]
    ).float()  # [N, Cmax]
    d = torch.where(members == torch.arange(cells.num_cells)[:, None], 0.0, d)  # exact 0 on the diagonal
    logits = -d / tau[cells.province][:, None]
    allowed = cells.cell_mask[cells.province]  # [N, Cmax]
    if support == "neighbours":
        allowed = allowed & cells.neighbourhood.gather(1, members)
    return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


LOSS_TERMS = ("total", "province", "geocell", "offset", "aux")
# short labels of the terms in the progress bar and the epoch summary ("Train Loss: 2.34 (prov: ...)")
LOSS_LABELS = {"total": "loss", "province": "prov", "geocell": "cell", "offset": "off", "aux": "aux"}


class GeolocLoss(nn.Module):
    """Returns the named terms of LOSS_TERMS as 0-dim tensors; `total` is their weighted sum."""

    def __init__(
        self,
        cells: CellTable,
        province_weights,
        weights: LossWeights | None = None,
        aux_scale_km: float = 100.0,
        soft_label_support: str = "province",
    ):
        super().__init__()
        self.weights = weights or LossWeights()
        self.aux_scale_km = aux_scale_km
        self.register_buffer("province_weights", torch.as_tensor(province_weights, dtype=torch.float32))
        targets = soft_target_table(cells, support=soft_label_support)
        self.register_buffer("soft_targets", targets)  # [N, Cmax]
        self.register_buffer("radius_km", cells.radius_km.clone())  # [N]

    def forward(self, outputs, province_ids, latitudes, longitudes, offset_weight) -> dict[str, torch.Tensor]:
        """`outputs` of the heads run with the true cells; `offset_weight` is the ramp (a float or 0-dim tensor)."""
        flat = outputs["cell_flat"]  # [B]
        w_prov = self.province_weights[province_ids]  # [B]

        loss_province = F.cross_entropy(
            outputs["province_logits"].float(), province_ids, weight=self.province_weights
        )

        target = self.soft_targets[flat]  # [B, Cmax]
        log_pred = F.log_softmax(outputs["routed_geocell_logits"].float(), dim=-1)  # [B, Cmax]
        # KL with 0 * log 0 = 0 on cells outside the target's support (and on padding)
        kl = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-30)) - log_pred), 0.0)
        loss_geocell = kl.sum(-1).mean()

        pred = outputs["oracle_coords"]  # [B, 2] true cell centre + offset
        offset_km = haversine_km(pred[:, 0], pred[:, 1], latitudes, longitudes)  # [B]
        loss_offset = (w_prov * offset_km / self.radius_km[flat]).sum() / w_prov.sum()

        aux = outputs["aux_coords"]
        loss_aux = haversine_km(aux[:, 0], aux[:, 1], latitudes, longitudes).mean() / self.aux_scale_km

        w = self.weights
        total = (
            w.province * loss_province
            + w.geocell * loss_geocell
            + w.offset * offset_weight * loss_offset
            + w.aux * loss_aux
        )
        return {
            "total": total,
            "province": loss_province,
            "geocell": loss_geocell,
            "offset": loss_offset,
            "aux": loss_aux,
        }


def province_weights_from_split(train: pd.DataFrame, beta: float = 0.999) -> np.ndarray:
    return effective_number_weights(province_counts(train["province_id"]), beta)
