"""The hierarchical geolocation model: province -> geocell -> offset, plus an aux (lat, lon) head.

`GeoHeads` holds every trainable layer and runs on encoder features, so the same heads serve training
on cached features and training with images through the encoders. All seven geocell heads run as one
packed matrix product and one batched product. Building a model (and loading one from a checkpoint)
lives in `model/factory.py`; turning outputs into predictions lives in `model/decoding.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.geo.sphere import PAKISTAN_CENTER
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.model.head_config import HeadConfig

MASKED_LOGIT = -1e4  # logit of a padded (non-existent) cell: exp() underflows to exactly 0
AUX_SPAN_DEG = (4.0, 5.0)  # the aux head predicts (lat, lon) as PAKISTAN_CENTER + span * output


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU())


class BatchedGeocellHeads(nn.Module):
    """One 2-layer MLP per province, evaluated for all provinces at once without a Python loop.

    Input of province p's head: [fused ; province_embedding[p]]; its hidden width is its capacity
    (`small_geocell_hidden` below `small_province_cells` cells, else `geocell_hidden`). The hidden units
    of all provinces are packed side by side, so the first layer is one [B, D] @ [D, sum of capacities]
    product with no unit computed in vain. They are then laid out as [B, P, H] (H the largest capacity,
    zeros beyond a province's own) for one batched second layer. Logits of cells a province does not
    have are masked.
    """

    def __init__(self, in_dim: int, emb_dim: int, cells: CellTable, cfg: HeadConfig):
        super().__init__()
        P, C = prov.NUM_PROVINCES, cells.max_cells
        capacity = torch.where(
            cells.n_cells < cfg.small_province_cells, cfg.small_geocell_hidden, cfg.geocell_hidden
        )  # [P]
        H, total = int(capacity.max()), int(capacity.sum())
        start = torch.cumsum(capacity, 0) - capacity  # [P] first packed unit of each province
        unit = torch.arange(H)
        # padded slot (p, j) reads packed unit start[p] + j, or the zero column `total` past p's capacity
        slot_source = torch.where(unit < capacity[:, None], start[:, None] + unit, total)  # [P, H]
        self.register_buffer("capacity", capacity, persistent=False)
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("slot_source", slot_source.flatten(), persistent=False)  # [P*H]
        self.register_buffer("unit_province", torch.repeat_interleave(torch.arange(P), capacity), False)
        self.w_fused = nn.Parameter(torch.empty(in_dim, total))  # [D, U], U = sum of capacities
        self.w_emb = nn.Parameter(torch.empty(emb_dim, total))  # [E, U]
        self.b_in = nn.Parameter(torch.empty(total))  # [U]
        self.w_out = nn.Parameter(torch.empty(P, H, C))  # [P, H, C]; rows past a capacity stay unused
        self.b_out = nn.Parameter(torch.empty(P, C))
        self.dropout = nn.Dropout(cfg.dropout)
        # nn.Linear's default init, per province, with the fan-in of that province's capacity
        bound_in = 1 / math.sqrt(in_dim + emb_dim)
        for weight in (self.w_fused, self.w_emb, self.b_in):
            nn.init.uniform_(weight, -bound_in, bound_in)
        for p in range(P):
            bound_out = 1 / math.sqrt(int(capacity[p]))
            nn.init.uniform_(self.w_out[p], -bound_out, bound_out)
            nn.init.uniform_(self.b_out[p], -bound_out, bound_out)

    def forward(
        self, fused: torch.Tensor, province_emb: torch.Tensor, cell_mask: torch.Tensor
    ) -> torch.Tensor:
        # fused [B, D], province_emb [P, E], cell_mask [P, C] -> logits [B, P, C]
        B, (P, H, _) = fused.shape[0], self.w_out.shape
        emb_term = (province_emb[self.unit_province] * self.w_emb.T).sum(-1)  # [U]
        hidden = self.dropout(F.gelu(fused @ self.w_fused + emb_term + self.b_in))  # [B, U]
        padded = F.pad(hidden, (0, 1))[:, self.slot_source].view(B, P, H)  # [B, P, H]
        logits = torch.bmm(padded.transpose(0, 1), self.w_out).transpose(0, 1) + self.b_out  # [B, P, C]
        return logits.masked_fill(~cell_mask, MASKED_LOGIT)

    def province_mlp(self, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Province p's head as plain weights: W1 [D+E, cap], b1 [cap], W2 [cap, C], b2 [C]."""
        units = slice(int(self.start[p]), int(self.start[p] + self.capacity[p]))
        w1 = torch.cat([self.w_fused[:, units], self.w_emb[:, units]], 0)
        return w1, self.b_in[units], self.w_out[p, : int(self.capacity[p])], self.b_out[p]


class GeoHeads(nn.Module):
    """Every trainable layer of Phase 1: projections, fusion gate, province head, geocell heads,
    embeddings, the cell-aware offset head and the aux head."""

    def __init__(self, clip_dim: int, scene_dim: int, cells: CellTable, cfg: HeadConfig):
        super().__init__()
        D = cfg.proj_dim
        self.config = cfg
        self.cells = cells
        self.clip_proj = _projection(clip_dim, D)
        self.scene_proj = _projection(scene_dim, D)
        self.gate = nn.Linear(2 * D, D)  # alpha = sigmoid(W [c; s]), per feature
        self.province_head = nn.Sequential(
            nn.Linear(D, cfg.province_hidden),
            nn.LayerNorm(cfg.province_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.province_hidden, prov.NUM_PROVINCES),
        )
        self.province_emb = nn.Embedding(prov.NUM_PROVINCES, cfg.province_emb_dim)
        self.cell_emb = nn.Embedding(cells.num_cells, cfg.cell_emb_dim)
        self.geocell_heads = BatchedGeocellHeads(D, cfg.province_emb_dim, cells, cfg)
        # offset head: [fused ; province_emb ; cell_emb] -> (dlat, dlon), first layer split in two so
        # the fused part is computed once when several hypotheses share one photo
        self.offset_fused = nn.Linear(D, cfg.offset_hidden)
        self.offset_code = nn.Linear(cfg.province_emb_dim + cfg.cell_emb_dim, cfg.offset_hidden, bias=False)
        self.offset_out = nn.Sequential(nn.GELU(), nn.Linear(cfg.offset_hidden, 2))
        self.aux_head = nn.Sequential(nn.Linear(D, cfg.aux_hidden), nn.GELU(), nn.Linear(cfg.aux_hidden, 2))
        self.register_buffer("aux_center", torch.tensor(PAKISTAN_CENTER), persistent=False)
        self.register_buffer("aux_span", torch.tensor(AUX_SPAN_DEG), persistent=False)
        # per-dimension standardisation of the encoder features, identity until `standardize_inputs`;
        # parameters without gradient rather than buffers, so that a weight average carries them along
        self.input_norm = nn.ParameterDict(
            {
                name: nn.Parameter(value, requires_grad=False)
                for name, value in (
                    ("clip_mean", torch.zeros(clip_dim)),
                    ("clip_std", torch.ones(clip_dim)),
                    ("scene_mean", torch.zeros(scene_dim)),
                    ("scene_std", torch.ones(scene_dim)),
                )
            }
        )

    @torch.no_grad()
    def standardize_inputs(self, clip_feat: torch.Tensor, scene_feat: torch.Tensor) -> None:
        """Set the standardisation to these features' per-dimension mean and std (the training photos').

        Frozen encoder features can sit far from 0 with small, informative variations on top (the tiny
        demo encoders': mean 0.78, std 0.17); standardising them lets the projections see those first.
        """
        for name, feat in (("clip", clip_feat), ("scene", scene_feat)):
            feat = feat.float().to(self.input_norm[f"{name}_mean"].device)
            self.input_norm[f"{name}_mean"].copy_(feat.mean(0))
            self.input_norm[f"{name}_std"].copy_(feat.std(0).clamp_min(1e-6))

    def fuse(self, clip_feat: torch.Tensor, scene_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norm = self.input_norm
        c = self.clip_proj((clip_feat - norm["clip_mean"]) / norm["clip_std"])  # [B, D]
        s = self.scene_proj((scene_feat - norm["scene_mean"]) / norm["scene_std"])  # [B, D]
        alpha = torch.sigmoid(self.gate(torch.cat([c, s], dim=-1)))  # [B, D]
        return alpha * s + (1 - alpha) * c, alpha

    def offsets_for(self, fused: torch.Tensor, flat_cells: torch.Tensor) -> torch.Tensor:
        """Bounded (dlat, dlon) in degrees for each photo and each of its cells.

        fused [B, D], flat_cells [B, K] -> [B, K, 2]. tanh keeps the offset inside
        +/- radius_km * province_scale (converted to degrees at the cell's latitude) while its
        gradient stays non-zero at every finite input.
        """
        code = torch.cat([self.province_emb(self.cells.province[flat_cells]), self.cell_emb(flat_cells)], -1)
        hidden = self.offset_fused(fused)[:, None, :] + self.offset_code(code)  # [B, K, H]
        raw = self.offset_out(hidden)  # [B, K, 2]
        return torch.tanh(raw.float()) * self.cells.offset_bound_deg[flat_cells]

    def forward(
        self,
        clip_feat: torch.Tensor,
        scene_feat: torch.Tensor,
        cell_ids: torch.Tensor | None = None,
        province_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        fused, alpha = self.fuse(clip_feat, scene_feat)
        province_logits = self.province_head(fused) / self.config.temperature  # [B, P]
        geocell_logits = self.geocell_heads(fused, self.province_emb.weight, self.cells.cell_mask)  # [B,P,C]
        aux = self.aux_head(fused).float()  # [B, 2]
        out = {
            "province_logits": province_logits,
            "geocell_logits": geocell_logits,
            "aux_coords": self.aux_center + self.aux_span * aux,  # [B, 2] (lat, lon)
            "fused": fused,
            "gate_alpha": alpha,
        }
        if cell_ids is not None:
            flat = self.cells.flat_index(cell_ids)  # [B]
            out["cell_flat"] = flat
            out["offsets"] = self.offsets_for(fused, flat[:, None])[:, 0]  # [B, 2] for the true cell
            out["oracle_coords"] = self.cells.center[flat] + out["offsets"]  # [B, 2] (lat, lon)
            routed = province_ids if province_ids is not None else self.cells.province[flat]
            # training routes each photo to its true province's head
            out["routed_geocell_logits"] = geocell_logits[torch.arange(len(flat), device=flat.device), routed]
        return out


class GeolocModel(nn.Module):
    """Encoders + `GeoHeads`: `model(images, cell_ids=..., province_ids=...)` returns the heads' outputs.

    The same model serves Phase 0 (which trains the projections, the gate and the province head) and
    Phase 1 (every head).
    """

    def __init__(self, encoders: DualEncoder, cells: CellTable, head_config: HeadConfig):
        super().__init__()
        self.encoders = encoders
        clip_dim, scene_dim = encoders.dims
        self.heads = GeoHeads(clip_dim, scene_dim, cells, head_config)

    @property
    def cells(self) -> CellTable:
        return self.heads.cells

    def forward(self, images, cell_ids=None, province_ids=None) -> dict[str, torch.Tensor]:
        clip_feat, scene_feat = self.encoders(images)  # [B, Dc], [B, Ds]
        return self.heads(clip_feat, scene_feat, cell_ids=cell_ids, province_ids=province_ids)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that training changes: the heads, plus the parts of the encoders that train (a whole
        encoder, or its top in Phase 2, with their batch-norm statistics).

        Frozen encoders are rebuilt from their config, so checkpoints stay small (a ViT-B/16 + R50
        would otherwise add ~400 MB to every epoch's file).
        """
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith("encoders.") or self.encoders.trains(k.removeprefix("encoders."))
        }

    def component_parameter_counts(self) -> list[dict]:
        groups = {
            "CLIP encoder": self.encoders.clip,
            "scene encoder": self.encoders.scene,
            "projections": nn.ModuleList([self.heads.clip_proj, self.heads.scene_proj]),
            "fusion gate": self.heads.gate,
            "province head": self.heads.province_head,
            "geocell heads": self.heads.geocell_heads,
            "embeddings": nn.ModuleList([self.heads.province_emb, self.heads.cell_emb]),
            "offset head": nn.ModuleList(
                [self.heads.offset_fused, self.heads.offset_code, self.heads.offset_out]
            ),
            "aux head": self.heads.aux_head,
        }
        return [
            {
                "component": name,
                "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad),
                "frozen": sum(p.numel() for p in m.parameters() if not p.requires_grad),
            }
            for name, m in groups.items()
        ]
