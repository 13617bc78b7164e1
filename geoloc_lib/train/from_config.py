"""What each stage gets from a `TrainConfig`: the stage's own small settings, built from the run's values, and
the check of the options each stage owns (run before anything is built or written)."""

from __future__ import annotations

import dataclasses

from geoloc_lib.data.cache_spec import CacheSpec
from geoloc_lib.data.contract import IMAGE_CHECKS, GeoDataset, load_dataset
from geoloc_lib.data.transforms import AUGMENT_PRESETS
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.geo.provinces import NUM_PROVINCES
from geoloc_lib.model.decode_modes import DECODE_MODES, DecodeConfig
from geoloc_lib.model.encoder_config import EncoderConfig, resolve_encoder_config
from geoloc_lib.model.factory import build_model
from geoloc_lib.model.head_config import HeadConfig
from geoloc_lib.model.heads import GeolocModel
from geoloc_lib.model.loss_weights import SOFT_LABEL_SUPPORTS
from geoloc_lib.train.config import TrainConfig
from geoloc_lib.train.schedule import LR_SCHEDULES


def check_options(cfg: TrainConfig) -> None:
    """Options that must name one of a stage's choices, checked against that stage's own list."""
    owned = {
        "image_check": IMAGE_CHECKS,  # data
        "augment": tuple(AUGMENT_PRESETS),  # data
        "soft_label_support": SOFT_LABEL_SUPPORTS,  # model
        "decode_mode": DECODE_MODES,  # model
        "lr_schedule": LR_SCHEDULES,  # train
    }
    problems = [
        f"{name} must be one of {allowed}, not {getattr(cfg, name)!r}"
        for name, allowed in owned.items()
        if getattr(cfg, name) not in allowed
    ]
    if cfg.top_provinces > NUM_PROVINCES:
        problems.append(f"top_provinces must be at most {NUM_PROVINCES}, not {cfg.top_provinces}")
    if problems:
        raise ValueError("invalid training config: " + "; ".join(problems))


def load_run_data(cfg: TrainConfig, image_check: str = "exists") -> GeoDataset:
    """The run's data folder, validated, with its validation split carved out of train."""
    data = load_dataset(
        cfg.data_dir, cfg.images_root, image_check, cfg.allow_missing_provinces, cfg.allow_images_outside
    )
    return data.with_validation(cfg.val_fraction, cfg.val_block_km, cfg.val_seed)


def decode_config_of(cfg: TrainConfig) -> DecodeConfig:
    return DecodeConfig(cfg.decode_mode, cfg.top_provinces, cfg.top_cells, cfg.prior_correction)


def head_config_of(cfg: TrainConfig) -> HeadConfig:
    return HeadConfig(
        proj_dim=cfg.proj_dim,
        geocell_hidden=cfg.geocell_hidden,
        small_geocell_hidden=cfg.small_geocell_hidden,
        dropout=cfg.dropout,
        temperature=cfg.temperature,
    )


def encoder_config_of(cfg: TrainConfig) -> EncoderConfig:
    return resolve_encoder_config(
        cfg.encoder,
        clip_pretrained=cfg.clip_pretrained,
        scene_weights=cfg.scene_weights,
        scene_image_size=cfg.scene_image_size or None,
    )


def cache_spec_of(cfg: TrainConfig) -> CacheSpec:
    """What the feature cache needs of a run's settings."""
    return CacheSpec(
        cache_dir=cfg.cache_dir,
        dtype=cfg.cache_dtype,
        views=cfg.cache_views,
        seed=cfg.seed,
        batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
    )


def encoder_tops_of(cfg: dict) -> tuple[int, int]:
    """(CLIP blocks, scene stages) a run trains in the encoders' tops: Phase 2's counts, none otherwise. Takes
    a config as a dict, as a checkpoint holds it."""
    if cfg.get("phase") != 2:
        return 0, 0
    return cfg["unfreeze_clip_blocks"], cfg["unfreeze_scene_stages"]


def model_for_training(cfg: TrainConfig, cells: CellTable) -> GeolocModel:
    return build_model(
        cells,
        encoder_config_of(cfg),
        head_config_of(cfg),
        cfg.freeze_clip,
        cfg.freeze_scene,
        encoder_tops_of(dataclasses.asdict(cfg)),
        cfg.top_bn_statistics,
    )
