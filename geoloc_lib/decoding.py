"""Label-free decoding: from the heads' outputs to the model's own province, cell and coordinate.

Hypotheses are the top provinces x top cells, weighted p(province) * p(cell | province); each one's
coordinate is its cell centre plus the offset the model predicts for that cell. `lat`/`lon` is the
most probable hypothesis (argmax); `mix_lat`/`mix_lon` is the probability-weighted mean of all
hypotheses (weights renormalised over them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import provinces as prov
from .model import GeoHeads


@dataclass(frozen=True)
class DecodeConfig:
    top_provinces: int = 2
    top_cells: int = 5


@torch.no_grad()
def decode(heads: GeoHeads, out: dict[str, torch.Tensor], cfg: DecodeConfig) -> dict[str, torch.Tensor]:
    cells = heads.cells
    p_prov = torch.softmax(out["province_logits"].float(), -1)  # [B, P]
    p_cell = torch.softmax(out["geocell_logits"].float(), -1)  # [B, P, C]
    k_p = min(cfg.top_provinces, prov.NUM_PROVINCES)
    k_c = min(cfg.top_cells, cells.max_cells)
    prov_prob, prov_idx = p_prov.topk(k_p, -1)  # [B, Kp]
    cond = p_cell.gather(1, prov_idx[..., None].expand(-1, -1, p_cell.shape[-1]))  # [B, Kp, C]
    cell_prob, local_idx = cond.topk(k_c, -1)  # [B, Kp, Kc]
    joint = (prov_prob[..., None] * cell_prob).flatten(1)  # [B, K]
    flat = cells.local_to_flat[prov_idx[..., None], local_idx].flatten(1)  # [B, K]
    coords = cells.center[flat] + heads.offsets_for(out["fused"], flat)  # [B, K, 2]
    best = joint.argmax(-1)  # [B]
    rows = torch.arange(len(best), device=best.device)
    weights = joint / joint.sum(-1, keepdim=True).clamp_min(1e-12)
    mixture = (weights[..., None] * coords).sum(1)  # [B, 2]
    return {
        "province": p_prov.argmax(-1),
        "province_prob": p_prov.max(-1).values,
        "province_probs": p_prov,
        "cell_id": cells.cell_ids[flat[rows, best]],
        "lat": coords[rows, best, 0],
        "lon": coords[rows, best, 1],
        "mix_lat": mixture[:, 0],
        "mix_lon": mixture[:, 1],
        "hyp_cell_id": cells.cell_ids[flat],  # [B, K]
        "hyp_province": cells.province[flat],  # [B, K]
        "hyp_prob": joint,  # [B, K]
        "hyp_coords": coords,  # [B, K, 2]
    }
