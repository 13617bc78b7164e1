"""The training phases, each in one place: what it trains and saves, its loss weights, how it picks its best
epoch, and what its epoch report shows.

- Phase 0, province pre-training: the input standardisation, projections, fusion gate and province head, on the
  province loss alone; the best epoch has the highest balanced province accuracy on validation.
- Phase 1, the hierarchy: every trainable part on the weighted sum of the four losses; the best epoch has the
  lowest end-to-end validation median error.
- Phase 2, partial fine-tuning: Phase 1's heads and the tops of both encoders, from a Phase 1 run's best
  checkpoint, on the same loss (the offset term at full weight from the start: Phase 1 already ramped it) and
  the same selection, with early stopping (train/early_stopping.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from geoloc_lib.model.loss_weights import LossWeights
from geoloc_lib.model.losses import offset_ramp
from geoloc_lib.run.spec import TrainConfig


@dataclass(frozen=True)
class Phase:
    number: int
    name: str
    trains: (
        tuple[str, ...] | None
    )  # prefixes of the parameters it trains and saves (None: every trainable one)
    province_only: bool  # the loss is the province cross-entropy alone, whatever the config's weights
    fine_tunes: bool = False  # starts from a Phase 1 run, trains the encoders' tops, may stop early
    predicts: bool = True  # its runs place photos (Phase 0's head only names provinces)
    from_phase0: bool = False  # may start from Phase 0's province head (train/phase0_start.py)

    def offset_weight(self, epoch: int, cfg: TrainConfig) -> float:
        """The offset term's ramp in `epoch`: Phase 1 ramps it up; a fine-tuned Phase 1 model has it at 1."""
        return 1.0 if self.fine_tunes else offset_ramp(epoch, cfg.offset_ramp_epochs)

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
        predicts=False,
    ),
    1: Phase(
        1,
        "geography structure (province, geocell, offset)",
        trains=None,
        province_only=False,
        from_phase0=True,
    ),
    2: Phase(2, "partial fine-tuning of the encoders", trains=None, province_only=False, fine_tunes=True),
}


def phase_of(cfg: TrainConfig) -> Phase:
    return PHASES[cfg.phase]


def encoder_tops(config: dict) -> tuple[int, int]:
    """(CLIP blocks, scene stages) a run trains in the encoders' tops: a fine-tuning phase's counts, none
    otherwise. Takes a config as a dict, as a checkpoint holds it."""
    if not PHASES[config["phase"]].fine_tunes:
        return 0, 0
    return config["unfreeze_clip_blocks"], config["unfreeze_scene_stages"]
