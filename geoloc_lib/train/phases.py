"""The training phases, each in one place: what it trains and saves, its loss weights, how it picks its best
epoch, and what its epoch report shows.

- Phase 0, province pre-training: the input standardisation, projections, fusion gate and province head, on the
  province loss alone; the best epoch has the highest balanced province accuracy on validation.
- Phase 1, the hierarchy: every trainable part on the weighted sum of the four losses; the best epoch has the
  lowest end-to-end validation median error.
"""

from __future__ import annotations

from dataclasses import dataclass

from geoloc_lib.model.losses import LossWeights
from geoloc_lib.train.config import TrainConfig


@dataclass(frozen=True)
class Phase:
    number: int
    name: str
    trains: (
        tuple[str, ...] | None
    )  # prefixes of the parameters it trains and saves (None: every trainable one)
    province_only: bool  # the loss is the province cross-entropy alone, whatever the config's weights

    def loss_weights(self, cfg: TrainConfig) -> LossWeights:
        if self.province_only:
            return LossWeights(province=1.0, geocell=0.0, offset=0.0, aux=0.0)
        return LossWeights(cfg.loss_province, cfg.loss_geocell, cfg.loss_offset, cfg.loss_aux)

    def selection_metric(self, val_row: dict) -> float:
        """Lower is better: the balanced province error (Phase 0) or the end-to-end median km (Phase 1)."""
        return 100 - val_row["province_balanced_acc"] if self.province_only else val_row["median_error_km"]

    def selection_text(self, metric: float) -> str:
        if self.province_only:
            return f"balanced province accuracy {100 - metric:.1f} %"
        return f"validation median {metric:.2f} km"


PHASES = {
    0: Phase(
        0,
        "province pre-training",
        trains=(
            "heads.input_norm.",
            "heads.clip_proj.",
            "heads.scene_proj.",
            "heads.gate.",
            "heads.province_head.",
        ),
        province_only=True,
    ),
    1: Phase(1, "geography structure (province, geocell, offset)", trains=None, province_only=False),
}


def phase_of(cfg: TrainConfig) -> Phase:
    return PHASES[cfg.phase]
