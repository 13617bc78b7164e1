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
from typing import TYPE_CHECKING

from geoloc_lib.model.loss_weights import LossWeights, offset_ramp

if TYPE_CHECKING:  # the settings check their phase with this module when they are made
    from geoloc_lib.run.spec import TrainConfig

LOSS_WEIGHT_FIELDS = ("loss_province", "loss_geocell", "loss_offset", "loss_aux")


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
    notebook: str = "03_train_phase1"  # the notebook that trains it
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
        notebook="02b_train_phase0",
    ),
    1: Phase(
        1,
        "geography structure (province, geocell, offset)",
        trains=None,
        province_only=False,
        from_phase0=True,
    ),
    2: Phase(
        2,
        "partial fine-tuning of the encoders",
        trains=None,
        province_only=False,
        fine_tunes=True,
        notebook="03b_train_phase2",
    ),
}


def phase_of(cfg: TrainConfig) -> Phase:
    return PHASES[cfg.phase]


def encoder_tops(config: dict) -> tuple[int, int]:
    """(CLIP blocks, scene stages) a run trains in the encoders' tops: a fine-tuning phase's counts, none
    otherwise. Takes a config as a dict, as a checkpoint holds it."""
    if not PHASES[config["phase"]].fine_tunes:
        return 0, 0
    return config["unfreeze_clip_blocks"], config["unfreeze_scene_stages"]


FINE_TUNED_FROM = 1  # a fine-tuning phase starts from the best checkpoint of a run of this phase


def starts_fine_tuning(phase: int) -> bool:
    """Whether a run of `phase` is where a fine-tuning phase may start."""
    return phase == FINE_TUNED_FROM


def predicts(phase: int) -> bool:
    """Whether runs of `phase` place photos (False for an unknown phase)."""
    return phase in PHASES and PHASES[phase].predicts


def phase_problems(cfg: TrainConfig) -> list[str]:
    """What the phase of `cfg` rules out: an unknown phase, a fine-tuning phase's missing or contradictory
    settings, a loss with no positive weight."""
    if cfg.phase not in PHASES:
        return [f"phase must be one of {', '.join(map(str, PHASES))}, not {cfg.phase}"]
    phase, problems = PHASES[cfg.phase], []
    if phase.fine_tunes:
        problems += _fine_tuning_problems(cfg)
    if not phase.province_only and not any(getattr(cfg, name) > 0 for name in LOSS_WEIGHT_FIELDS):
        problems.append(f"at least one of {LOSS_WEIGHT_FIELDS} must be positive")
    return problems


# the settings only Phase 2 reads (notebooks/03b_train_phase2 has them; the other phases ignore them)
PHASE2_FIELDS = (
    "phase1_checkpoint",
    "unfreeze_clip_blocks",
    "unfreeze_scene_stages",
    "top_bn_statistics",
    "lr_clip",
    "lr_scene",
    "weight_decay_clip",
    "weight_decay_scene",
    "stop_rare_province_acc",
    "rare_province_share",
    "stop_offset_collapse",
    "stop_patience",
)


def _fine_tuning_problems(cfg: TrainConfig) -> list[str]:
    problems = []
    if not cfg.phase1_checkpoint:
        problems.append(
            "Phase 2 starts from a Phase 1 run: set phase1_checkpoint (its folder or phase1_best.pt)"
        )
    if not (cfg.freeze_clip and cfg.freeze_scene):
        problems.append(
            "Phase 2 trains the encoders' tops only (unfreeze_clip_blocks, unfreeze_scene_stages); "
            "keep freeze_clip and freeze_scene True"
        )
    if cfg.unfreeze_clip_blocks == 0 and cfg.unfreeze_scene_stages == 0:
        problems.append("Phase 2 needs unfreeze_clip_blocks or unfreeze_scene_stages above 0")
    if not 0 <= cfg.stop_rare_province_acc <= 100:
        problems.append(f"stop_rare_province_acc must be in [0, 100], not {cfg.stop_rare_province_acc}")
    if not 0 <= cfg.rare_province_share <= 1:
        problems.append(f"rare_province_share must be in [0, 1], not {cfg.rare_province_share}")
    if not 0 <= cfg.stop_offset_collapse < 1:
        problems.append(f"stop_offset_collapse must be in [0, 1), not {cfg.stop_offset_collapse}")
    return problems
