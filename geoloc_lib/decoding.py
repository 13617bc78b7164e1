"""Label-free decoding: from the heads' outputs to the model's own province, cell and coordinate.

Hypotheses are the top provinces x their top cells, each placed at its cell centre plus the offset the
model predicts for that cell, and weighted p(province) x p(cell | province). A province with fewer
cells than `top_cells` contributes only the cells it has, and a province without cells gets no
probability at all. Three ways of choosing the prediction (`DecodeConfig.mode`):

- `hierarchical`: the most probable province, then its most probable cell;
- `joint`: the hypothesis with the largest p(province) x p(cell | province);
- `mixture`: the probability-weighted mean of all hypotheses' coordinates (its cell is the joint one's).

The reported province is always the province of the predicted cell.

Prior correction (logit adjustment, Menon et al., ICLR 2021): the balanced sampler and the province
weights of the loss train the province head on a class prior far from the data's. Adding
`prior_correction x (log data prior - log training prior)` to its logits undoes that at inference
(1.0 undoes it fully, 0 leaves the logits alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import provinces as prov
from .metrics import DECODE_MODES
from .model import GeoHeads


@dataclass(frozen=True)
class DecodeConfig:
    mode: str = "hierarchical"
    top_provinces: int = 2
    top_cells: int = 5
    prior_correction: float = 0.0

    def __post_init__(self):
        if self.mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, not {self.mode!r}")


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


@torch.no_grad()
def decode(
    heads: GeoHeads,
    out: dict[str, torch.Tensor],
    cfg: DecodeConfig,
    prior_shift: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Predictions of a batch from `heads`' outputs; `prior_shift` [P] from `province_prior_shift`.

    `province`, `cell_id`, `lat`, `lon` are the prediction of `cfg.mode`; `{mode}_lat`, `{mode}_lon`
    and `{mode}_province` give every mode's, so that modes can be compared on one pass.
    """
    cells = heads.cells
    p_prov = _province_probabilities(heads, out["province_logits"], cfg, prior_shift)  # [B, P]
    p_cell = torch.softmax(out["geocell_logits"].float(), -1)  # [B, P, C]
    k_p = min(cfg.top_provinces, prov.NUM_PROVINCES)
    k_c = min(cfg.top_cells, cells.max_cells)
    prov_prob, prov_idx = p_prov.topk(k_p, -1)  # [B, Kp], most probable first
    cond = p_cell.gather(1, prov_idx[..., None].expand(-1, -1, p_cell.shape[-1]))  # [B, Kp, C]
    cell_prob, local_idx = cond.topk(k_c, -1)  # [B, Kp, Kc]
    valid = (local_idx < cells.n_cells[prov_idx][..., None]) & (prov_prob[..., None] > 0)  # [B, Kp, Kc]
    joint = torch.where(valid, prov_prob[..., None] * cell_prob, 0.0).flatten(1)  # [B, K]
    flat = cells.local_to_flat[prov_idx[..., None], local_idx].flatten(1)  # [B, K]
    coords = cells.center[flat] + heads.offsets_for(out["fused"], flat)  # [B, K, 2]
    rows = torch.arange(len(flat), device=flat.device)
    weights = joint / joint.sum(-1, keepdim=True).clamp_min(1e-12)
    best = joint.argmax(-1)  # [B]
    # hypothesis 0 is the top province's top cell; the mixture's cell is the joint choice's
    chosen = {"hierarchical": torch.zeros_like(best), "joint": best, "mixture": best}
    points = {mode: coords[rows, c] for mode, c in chosen.items()}  # [B, 2] each
    points["mixture"] = (weights[..., None] * coords).sum(1)
    out = {
        "province_probs": p_prov,
        "hyp_valid": valid.flatten(1),  # [B, K] padding slots are False
        "hyp_cell_id": cells.cell_ids[flat],  # [B, K]
        "hyp_province": cells.province[flat],  # [B, K]
        "hyp_prob": joint,  # [B, K]
        "hyp_coords": coords,  # [B, K, 2]
    }
    for mode in DECODE_MODES:
        cell = flat[rows, chosen[mode]]
        out[f"{mode}_province"] = cells.province[cell]
        out[f"{mode}_lat"], out[f"{mode}_lon"] = points[mode][:, 0], points[mode][:, 1]
        if mode == cfg.mode:  # the prediction
            out["province"] = cells.province[cell]
            out["province_prob"] = p_prov[rows, cells.province[cell]]
            out["cell_id"] = cells.cell_ids[cell]
            out["cell_prob"] = joint[rows, chosen[mode]]
            out["lat"], out["lon"] = points[mode][:, 0], points[mode][:, 1]
    return out


@dataclass
class Decoder:
    """A decoding configuration with the prior shift of the run it decodes for."""

    config: DecodeConfig
    prior_shift: torch.Tensor | None = None  # [P] from province_prior_shift

    def __call__(self, heads: GeoHeads, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        shift = None if self.prior_shift is None else self.prior_shift.to(out["province_logits"].device)
        return decode(heads, out, self.config, shift)
