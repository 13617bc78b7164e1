"""Benchmark of a Phase 2 step: the encoders' trained tops on cached prefixes against the whole image path.

Run by `tools/bench.py` (make bench) after the Phase 1 timings, on the same data, encoders and batch size:

- image path: the training DataLoader (decode and augmentation in workers), the frozen bottom of both
  encoders, their trained tops and the heads, forward and backward, at every step (feature_cache=False).
- prefix-cached: `train_one_epoch` over the cached outputs of the frozen bottoms (one warm-up epoch first),
  through the tops and the heads.

Both start from the same short Phase 1 run. The tops are the original's: the last 4 CLIP blocks (fewer
when the tower has fewer) with its final norm and projection, and the scene CNN's last stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import open_clip

from geoloc_lib.base.devices import synchronize
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit, train_one_epoch
from geoloc_lib.train.setup import build_training

CLIP_BLOCKS = 4  # the original's Phase 2
SCENE_STAGES = 1


@dataclass
class Phase2Timing:
    encoder: str
    clip_blocks: int
    image_s: float  # seconds per image-path step
    image_steps: int
    cached_s: float  # seconds per prefix-cached step
    cached_steps: int

    @property
    def ratio(self) -> float:
        return self.image_s / self.cached_s


def time_phase2(encoder: str, common: dict, steps: int, image_steps: int, image_step_seconds) -> Phase2Timing:
    """`common`: the TrainConfig settings the Phase 1 timings used; `image_step_seconds(t, steps)` times image-
    path steps as tools/bench does."""
    name = encoder.replace("/", "_")
    start_run = TrainConfig(run_name=f"{name}-phase1", epochs=1, batches_per_epoch=2, **common)
    fit(start_run, progress=False)
    layers = open_clip.get_model_config(start_run.encoders.clip_model)["vision_cfg"]["layers"]
    blocks = min(CLIP_BLOCKS, layers)
    cached = build_training(TrainConfig(**_phase2(start_run, name, steps, blocks)), progress=False)
    train_one_epoch(cached, 1)  # warm-up
    synchronize(cached.device)
    start = time.perf_counter()
    train_one_epoch(cached, 2)
    synchronize(cached.device)
    cached_s = (time.perf_counter() - start) / steps
    cached.close()
    image_cfg = _phase2(start_run, name, image_steps + 1, blocks) | {
        "feature_cache": False,
        "run_name": f"{name}-p2-image",
    }
    image = build_training(TrainConfig(**image_cfg), progress=False)
    image_s = image_step_seconds(image, image_steps)
    image.close()
    return Phase2Timing(encoder, blocks, image_s, image_steps, cached_s, steps)


def _phase2(start_run: TrainConfig, name: str, steps: int, blocks: int) -> dict:
    values = {k: getattr(start_run, k) for k in start_run.__dataclass_fields__}
    return values | {
        "run_name": f"{name}-p2-cached",
        "phase": 2,
        "phase1_checkpoint": str(Path(start_run.runs_dir) / start_run.run_name),
        "unfreeze_clip_blocks": blocks,
        "unfreeze_scene_stages": SCENE_STAGES,
        "batches_per_epoch": steps,
        "epochs": 2,
        "overwrite": True,
    }


def phase2_table(timings: list[Phase2Timing], batch_size: int) -> str:
    lines = [
        f"Phase 2 (trained tops: the last CLIP blocks and the scene CNN's last stage; batch {batch_size}):",
        f"{'encoders':<26}{'CLIP blocks':>12}{'image ms':>10}{'prefix ms':>11}{'ratio':>8}",
    ]
    for t in timings:
        lines.append(
            f"{t.encoder:<26}{t.clip_blocks:>12}{1000 * t.image_s:>10.1f}{1000 * t.cached_s:>11.1f}{t.ratio:>7.1f}x"
        )
    lines.append(
        f"(image path timed over {', '.join(str(t.image_steps) for t in timings)} steps, prefix-cached over "
        f"{timings[0].cached_steps})"
    )
    return "\n".join(lines)
