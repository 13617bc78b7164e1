"""Label-free decoding: from the heads' outputs to the model's own province, cell and coordinate.

Hypotheses are the top provinces x their top cells, each placed at its cell centre plus the offset the
model predicts for that cell, and weighted p(province) x p(cell | province). A province with fewer
cells than `top_cells` contributes only the cells it has, and a province without cells gets no
probability at all. Three ways of choosing the prediction (`DecodeConfig.mode`):

- `hierarchical`: the most probable province, then its most probable cell;
- `joint`: the hypothesis with the largest p(province) x p(cell | province);
- `mixture`: the probability-weighted mean of all hypotheses' coordinates (its cell is the joint one's).

The reported province is always the province of the predicted cell. With a retrieval index
(model/retrieval.py) the hierarchical and joint coordinates move to the most similar training photos inside
the chosen cell and its neighbours.

Prior correction (logit adjustment, Menon et al., ICLR 2021): the balanced sampler and the province
weights of the loss train the province head on a class prior far from the data's. Adding
`prior_correction x (log data prior - log training prior)` to its logits undoes that at inference
(1.0 undoes it fully, 0 leaves the logits alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import haversine_km
from geoloc_lib.model.decode_modes import DECODE_MODES, DecodeConfig
from geoloc_lib.model.heads import GeoHeads
from geoloc_lib.model.retrieval import RetrievalIndex


def province_prior_shift(train_counts, batch_counts, province_weights) -> np.ndarray:
    """log(data prior) - log(training prior) per province [P]; -inf where a province has no training rows.

    The training prior is what the loss sees: the sampler's share of each province times its weight in
    the cross-entropy.
    """
    data = np.asarray(train_counts, float)
    seen = np.asarray(batch_counts, float) * np.asarray(province_weights, float)
    shift = np.full(len(data), -np.inf)
    present = (data > 0) & (seen > 0)
    shift[present] = np.log(data[present] / data.sum()) - np.log(seen[present] / seen.sum())
    return shift


def _province_probabilities(heads: GeoHeads, logits: torch.Tensor, cfg: DecodeConfig, shift) -> torch.Tensor:
    logits = logits.float()  # [B, P]
    if shift is not None:
        logits = logits + cfg.prior_correction * torch.nan_to_num(shift, neginf=0.0)
        logits = logits.masked_fill(torch.isneginf(shift), -torch.inf)
    logits = logits.masked_fill(heads.cells.n_cells == 0, -torch.inf)  # a province without cells
    return torch.softmax(logits, -1)


def hypotheses(heads: GeoHeads, out: dict[str, torch.Tensor], cfg: DecodeConfig, prior_shift=None) -> dict:
    """The top provinces x top cells of each photo: flat cell [B, K], joint probability [B, K] (0 on
    padding slots), validity [B, K], coordinates [B, K, 2], and the province probabilities [B, P]."""
    cells = heads.cells
    p_prov = _province_probabilities(heads, out["province_logits"], cfg, prior_shift)  # [B, P]
    p_cell = torch.softmax(out["geocell_logits"].float(), -1)  # [B, P, C]
    prov_prob, prov_idx = p_prov.topk(min(cfg.top_provinces, prov.NUM_PROVINCES), -1)  # [B, Kp], best first
    cond = p_cell.gather(1, prov_idx[..., None].expand(-1, -1, p_cell.shape[-1]))  # [B, Kp, C]
    cell_prob, local_idx = cond.topk(min(cfg.top_cells, cells.max_cells), -1)  # [B, Kp, Kc]
    valid = (local_idx < cells.n_cells[prov_idx][..., None]) & (prov_prob[..., None] > 0)  # [B, Kp, Kc]
    flat = cells.local_to_flat[prov_idx[..., None], local_idx].flatten(1)  # [B, K]
    return {
        "province_probs": p_prov,
        "cell_probs": p_cell,  # [B, P, C] p(cell | province); `decode` turns it into every cell's joint
        "flat": flat,
        "joint": torch.where(valid, prov_prob[..., None] * cell_prob, 0.0).flatten(1),  # [B, K]
        "valid": valid.flatten(1),
        "coords": cells.center[flat] + heads.offsets_for(out["fused"], flat),  # [B, K, 2]
    }


@torch.no_grad()
def decode(
    heads: GeoHeads,
    out: dict[str, torch.Tensor],
    cfg: DecodeConfig,
    prior_shift: torch.Tensor | None = None,
    retrieval: RetrievalIndex | None = None,
    trust: bool = True,
) -> dict[str, torch.Tensor]:
    """Predictions of a batch: `province`, `cell_id`, `lat`, `lon` of `cfg.mode`, and `{mode}_lat`, `{mode}_lon`,
    `{mode}_province` of every mode; `prior_shift` [P] from `province_prior_shift`. `retrieval` refines the
    hierarchical and joint coordinates inside their cells; `trust` adds `_trust_outputs` (not needed per step)."""
    cells, h = heads.cells, hypotheses(heads, out, cfg, prior_shift)
    flat, joint, coords = h["flat"], h["joint"], h["coords"]
    rows = torch.arange(len(flat), device=flat.device)
    best = joint.argmax(-1)  # [B]
    # hypothesis 0 is the top province's top cell; the mixture's cell is the joint choice's
    chosen = {"hierarchical": torch.zeros_like(best), "joint": best, "mixture": best}
    points = {mode: coords[rows, c] for mode, c in chosen.items()}  # [B, 2] each
    weights = joint / joint.sum(-1, keepdim=True).clamp_min(1e-12)
    points["mixture"] = (weights[..., None] * coords).sum(1)
    if retrieval is not None:
        for mode in ("hierarchical", "joint"):
            refined, found = retrieval.refine(out["fused"], flat[rows, chosen[mode]])
            points[mode] = torch.where(found[:, None], refined, points[mode])
    pred = {
        "province_probs": h["province_probs"],
        "hyp_valid": h["valid"],  # [B, K] padding slots are False
        "hyp_cell_id": cells.cell_ids[flat],  # [B, K]
        "hyp_province": cells.province[flat],  # [B, K]
        "hyp_prob": joint,  # [B, K]
        "hyp_coords": coords,  # [B, K, 2]
    }
    for mode in DECODE_MODES:
        cell = flat[rows, chosen[mode]]
        pred[f"{mode}_province"] = cells.province[cell]
        pred[f"{mode}_lat"], pred[f"{mode}_lon"] = points[mode][:, 0], points[mode][:, 1]
    cell = flat[rows, chosen[cfg.mode]]  # the prediction
    pred |= {
        "province": cells.province[cell],
        "province_prob": h["province_probs"][rows, cells.province[cell]],
        "cell_id": cells.cell_ids[cell],
        "cell_prob": joint[rows, chosen[cfg.mode]],
        "lat": points[cfg.mode][:, 0],
        "lon": points[cfg.mode][:, 1],
    }
    if trust:
        pred |= _trust_outputs(cells, h, weights, pred["lat"], pred["lon"])
    return pred


def _trust_outputs(cells, h: dict, weights: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor) -> dict:
    """The spread [B] the credible radius is scaled by, and every cell's joint probability [B, N]."""
    p_prov, p_cell = h["province_probs"], h["cell_probs"]
    return {
        "spread_km": _spread_km(h["coords"], weights, lat, lon),
        "cell_probs": p_prov[:, cells.province] * p_cell[:, cells.province, cells.local_index],
    }


def _spread_km(
    coords: torch.Tensor, weights: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor
) -> torch.Tensor:
    """[B] how far the hypotheses coords [B, K, 2] lie from the prediction (lat, lon [B]), as the root mean
    square weighted by their probabilities [B, K]: the model's own spread, which the credible radius is
    scaled by (evaluate/calibration.py)."""
    far = haversine_km(coords[..., 0], coords[..., 1], lat[:, None], lon[:, None])  # [B, K]
    return (weights * far.square()).sum(-1).sqrt()


@dataclass
class Decoder:
    """A decoding configuration with what it needs of the run it decodes for."""

    config: DecodeConfig
    prior_shift: torch.Tensor | None = None  # [P] from province_prior_shift
    retrieval: RetrievalIndex | None = None  # training photos, for refining inside the chosen cell

    def __call__(
        self, heads: GeoHeads, out: dict[str, torch.Tensor], trust: bool = True
    ) -> dict[str, torch.Tensor]:
        shift = None if self.prior_shift is None else self.prior_shift.to(out["province_logits"].device)
        return decode(heads, out, self.config, shift, self.retrieval, trust)
