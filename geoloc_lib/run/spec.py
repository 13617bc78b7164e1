"""`TrainConfig`: every setting of a training run, in one flat dataclass. A setting a stage owns takes its default
from that stage's own settings class (the heads', the decoding's, the loss's, the feature cache's, all
torch-free), so each default is written once.

It checks what a value alone can tell (types, finiteness, ranges); each stage checks the options it owns when
the run is built (`check_options`), before anything is written.

A run folder's `config.json` holds exactly `asdict(TrainConfig)`, so `TrainConfig.from_dict` reads it back.
Facts derived while the run starts (device, encoder fingerprint, cell signature, versions) are written
to `run_info.json` instead (see `run/folder.py`).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from geoloc_lib.data.cache_spec import CacheSpec
from geoloc_lib.model.decode_modes import DECODE_MODES, DecodeConfig
from geoloc_lib.model.encoder_config import EncoderConfig, resolve_encoder_config
from geoloc_lib.model.head_config import HeadConfig
from geoloc_lib.model.loss_weights import SOFT_LABEL_SUPPORTS, LossWeights
from geoloc_lib.run.phases import LOSS_WEIGHT_FIELDS, phase_problems


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/demo"
    images_root: str | None = None
    val_fraction: float = 0.1  # share of train.csv held out for validation (best epoch, decoding choices)
    val_block_km: float = 10.0  # validation takes whole location blocks of this size: no place on both sides
    val_seed: int = 0  # which blocks; fixed across training seeds so that seeds compare on one split
    val_buffer_km: float = 1.0  # training photos this close to a validation photo are left out (0: none)
    image_check: str = "decode"  # before training: decode (every photo opens, fast), exists, or none
    allow_images_outside: bool = False  # image paths may lead outside the data folder / images_root
    # run folder
    run_name: str = ""  # empty: phase{phase}_<date>-<time>, chosen when the run starts (run/folder.py)
    runs_dir: str = "runs"
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: int = 3  # newest epoch checkpoints kept; the best and the last are kept besides (links)
    phase: int = 1  # 0: province pre-training, 1: the hierarchy on frozen encoders, 2: and the encoders' tops
    # optimisation: the specification's values, except where docs/accuracy.md measured better ones
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-5
    temperature: float = HeadConfig.temperature
    batches_per_epoch: int = 0  # 0: about 7 passes over the training photos, at most 1300 (train/setup.py)
    loss_province: float = LossWeights.province
    loss_geocell: float = LossWeights.geocell
    loss_offset: float = LossWeights.offset
    loss_aux: float = LossWeights.aux
    beta: float = 0.0  # effective-number province weights (0.999 in the specification; 0: all equal)
    offset_ramp_epochs: int = 5
    aux_scale_km: float = 100.0
    soft_label_support: str = "province"  # soft geocell targets over the whole province, or "neighbours"
    lr_schedule: str = "cosine"  # constant or cosine (to 0 at the last step)
    warmup_steps: int = 100  # linear learning-rate warm-up at the start of the run
    ema_decay: float = 0.99  # exponential moving average of the heads' weights (0: off); evaluated and saved
    augment: str = "none"  # augmentation of the cached training views: none, mild or strong
    # model
    encoder: str = "tiny-random"  # preset name from geoloc_lib.model.encoders.ENCODER_PRESETS
    clip_pretrained: str | None = None  # overrides the preset's weights
    scene_weights: str | None = None
    scene_image_size: int = 0  # the scene CNN's input size in pixels (0: the preset's)
    freeze_clip: bool = True
    freeze_scene: bool = True
    # Phase 1's start: auto finds a finished Phase 0 run of the same data under runs_dir; "": from scratch
    phase0_checkpoint: str | None = "auto"
    proj_dim: int = HeadConfig.proj_dim
    geocell_hidden: int = HeadConfig.geocell_hidden
    small_geocell_hidden: int = HeadConfig.small_geocell_hidden
    dropout: float = HeadConfig.dropout
    standardize_features: bool = True  # z-score encoder features with the training photos' mean and std
    # Phase 2: the tops of both encoders fine-tuned from a Phase 1 run (run/phases.py)
    phase1_checkpoint: str | None = (
        None  # the Phase 1 run (folder or its best checkpoint) Phase 2 starts from
    )
    unfreeze_clip_blocks: int = 4  # last CLIP transformer blocks trained, with the final norm and projection
    unfreeze_scene_stages: int = 1  # last scene CNN stages trained (1: layer4 of a ResNet)
    top_bn_statistics: bool = False  # the trained stages' batch norm learns its statistics (False: kept)
    lr_clip: float = 1e-5  # learning rate of the trained CLIP blocks (`lr` is the heads')
    lr_scene: float = 5e-6  # learning rate of the trained scene CNN stages
    weight_decay_clip: float = 1e-5
    weight_decay_scene: float = 1e-5
    stop_rare_province_acc: float = (
        30.0  # stop when a rare province's validation accuracy falls below (%; 0 off)
    )
    rare_province_share: float = 0.05  # a province is rare with less than this share of the training photos
    stop_offset_collapse: float = (
        0.05  # stop when the offset loss falls below this share of its first epoch's
    )
    stop_patience: int = 5  # stop after this many epochs above the best validation median (0: off)
    # speed
    feature_cache: bool = True  # False: images go through the encoders at every step
    cache_views: int = (
        CacheSpec.views
    )  # augmented views cached per training photo (one clean view when augment is none)
    cache_dir: str = CacheSpec.cache_dir
    cache_dtype: str = CacheSpec.dtype
    cuda_graph: bool = True  # capture the cached-feature step as one CUDA graph on CUDA
    eval_batch_size: int = CacheSpec.batch_size
    num_workers: int = CacheSpec.num_workers
    device: str = "auto"  # auto: CUDA, then MPS, then CPU
    seed: int = CacheSpec.seed  # the run's seed: the heads, the sampler and the cached views
    allow_missing_provinces: bool = False
    # decoding (see model/decoding.py)
    decode_mode: str = DecodeConfig.mode  # hierarchical, joint or mixture
    prior_correction: float = DecodeConfig.prior_correction  # 1 undoes the training prior, 0 off
    top_provinces: int = DecodeConfig.top_provinces
    top_cells: int = DecodeConfig.top_cells
    retrieval_k: int = 0  # refine inside the chosen cell from the k most similar training photos (0: off)
    retrieval_temperature: float = 0.1  # softmax temperature of the similarity weights (k > 1)

    def __post_init__(self):
        problems = _type_problems(self)
        problems = problems or _range_problems(self)  # ranges assume the types
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name

    # Each stage's own settings, made from the run's: what the stage is handed, never the whole run

    @property
    def heads(self) -> HeadConfig:
        return HeadConfig(
            proj_dim=self.proj_dim,
            geocell_hidden=self.geocell_hidden,
            small_geocell_hidden=self.small_geocell_hidden,
            dropout=self.dropout,
            temperature=self.temperature,
        )

    @property
    def decoding(self) -> DecodeConfig:
        return DecodeConfig(self.decode_mode, self.top_provinces, self.top_cells, self.prior_correction)

    @property
    def encoders(self) -> EncoderConfig:
        return resolve_encoder_config(
            self.encoder,
            clip_pretrained=self.clip_pretrained,
            scene_weights=self.scene_weights,
            scene_image_size=self.scene_image_size or None,
        )

    @property
    def cache(self) -> CacheSpec:
        return CacheSpec(
            cache_dir=self.cache_dir,
            dtype=self.cache_dtype,
            views=self.cache_views,
            seed=self.seed,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
        )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}")
        return cls(**values)

    @classmethod
    def from_parameters(cls, namespace: dict, base: TrainConfig | None = None, **overrides) -> TrainConfig:
        """The config of a notebook: `base`'s values (default: the defaults), then every name in `namespace`
        that is a config field, then `overrides`.

        Notebook parameters are papermill literals, so "" stands for None in the optional fields.
        """
        optional = {f.name for f in fields(cls) if f.default is None}
        values = {
            f.name: None if f.name in optional and namespace[f.name] == "" else namespace[f.name]
            for f in fields(cls)
            if f.name in namespace
        }
        inherited = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        return cls.from_dict(inherited | values | overrides)


def _range_problems(cfg: TrainConfig) -> list[str]:
    """Counts, rates and weights in their ranges; options that exclude each other."""
    problems = []
    if cfg.run_name.strip() in (".", "..") or (cfg.run_name and not cfg.run_name.strip()):
        problems.append(f"run_name {cfg.run_name!r} must name a folder (it is deleted on overwrite)")
    if not cfg.run_name and (cfg.resume or cfg.overwrite):
        problems.append("resume and overwrite act on an existing run: name it with run_name (ls runs/)")
    problems += phase_problems(cfg)
    checks = (
        (AT_LEAST_ONE, lambda v: v >= 1, "at least 1"),
        (ZERO_OR_MORE, lambda v: v >= 0, "0 or more"),
        (POSITIVE, lambda v: v > 0, "positive"),
    )
    for names, ok, wanted in checks:
        problems += [f"{n} must be {wanted}, not {getattr(cfg, n)}" for n in names if not ok(getattr(cfg, n))]
    if not 0 <= cfg.dropout < 1:
        problems.append(f"dropout must be in [0, 1), not {cfg.dropout}")
    if not 0 < cfg.val_fraction <= 0.5:
        problems.append(f"val_fraction must be in (0, 0.5], not {cfg.val_fraction}")
    if not 0 <= cfg.beta < 1:
        problems.append(f"beta must be in [0, 1), not {cfg.beta}")
    if not 0 <= cfg.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1), not {cfg.ema_decay}")
    if cfg.cache_dtype not in ("float16", "bfloat16", "float32"):
        problems.append(f"cache_dtype must be float16, bfloat16 or float32, not {cfg.cache_dtype!r}")
    if not (cfg.freeze_clip and cfg.freeze_scene) and cfg.feature_cache:
        problems.append(
            "an unfrozen encoder changes its features at every step, so they cannot be cached: "
            "set feature_cache=False"
        )
    if cfg.resume and cfg.overwrite:
        problems.append(
            "resume and overwrite exclude each other: resume continues a run, overwrite replaces it"
        )
    return problems


# counts and widths; seeds, counts that may be 0, and weights; rates and scales
AT_LEAST_ONE = (
    *("epochs", "batch_size", "cache_views", "eval_batch_size", "keep_checkpoints"),
    *(
        "top_provinces",
        "top_cells",
        "offset_ramp_epochs",
        "proj_dim",
        "geocell_hidden",
        "small_geocell_hidden",
    ),
)
ZERO_OR_MORE = (
    *(
        "seed",
        "val_seed",
        "val_buffer_km",
        "num_workers",
        "retrieval_k",
        "warmup_steps",
        "scene_image_size",
        "batches_per_epoch",
    ),
    *("unfreeze_clip_blocks", "unfreeze_scene_stages", "stop_patience"),
    *("weight_decay", "weight_decay_clip", "weight_decay_scene", "prior_correction", *LOSS_WEIGHT_FIELDS),
)
POSITIVE = (
    "lr",
    "lr_clip",
    "lr_scene",
    "temperature",
    "aux_scale_km",
    "val_block_km",
    "retrieval_temperature",
)


def _type_problems(cfg: TrainConfig) -> list[str]:
    """Every field against its annotation: whole numbers for int (2.5 and True are refused), finite numbers
    for float (NaN and infinity are refused), True/False for bool, text for str."""
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = f.type.replace(" | None", "")
        if kind == "str" and isinstance(value, os.PathLike):
            value = os.fspath(value)
            setattr(cfg, f.name, value)
        if value is None and f.type.endswith("| None"):
            continue
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif kind == "bool":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            want = {"int": "a whole number", "float": "a finite number", "bool": "True or False"}
            problems.append(f"{f.name} must be {want.get(kind, 'text')}, not {value!r}")
    return problems


# Fields that may differ between a run and its resumption; anything else must match. Locations may change
# (a moved run, data or cache folder): the data itself is compared by its signature (train/run_state.py).
# Where a run started from (phase0_checkpoint, phase1_checkpoint) is behind it once it resumes.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "resume",
        "overwrite",
        "num_workers",
        "device",
        "cuda_graph",
        "eval_batch_size",
        "keep_checkpoints",
        "data_dir",
        "images_root",
        "runs_dir",
        "run_name",
        "cache_dir",
        "image_check",
        "phase0_checkpoint",
        "phase1_checkpoint",
    }
)


def resume_differences(saved: dict, now: TrainConfig) -> dict:
    """{field: (saved, now)} of the fields that may not change when a run is resumed. A field that a run saved
    before it existed takes its default, as `from_dict` gives it."""
    return {
        f.name: (saved.get(f.name, f.default), getattr(now, f.name))
        for f in fields(now)
        if f.name not in RESUMABLE_CHANGES and saved.get(f.name, f.default) != getattr(now, f.name)
    }


def parse_settings(settings: list[str]) -> dict:
    """Command-line settings ["beta=0.999", "augment=strong"] -> {"beta": 0.999, "augment": "strong"}.

    Values are Python literals where they parse as one, text otherwise; every name must be a TrainConfig field.
    """
    names = {f.name for f in fields(TrainConfig)}
    values = {}
    for setting in settings:
        key, _, text = setting.partition("=")
        if key not in names or not text:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else " (--help lists them)"
            raise ValueError(f"--set {setting!r}: expected FIELD=VALUE with a TrainConfig field{hint}")
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values


def config_from_command_line(argv, parser: argparse.ArgumentParser) -> TrainConfig:
    """A TrainConfig from `--set FIELD=VALUE` arguments (the command lines of training and extraction), read
    by the command's own `parser`, whose `error` reports a bad argument or setting."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "settings and their defaults: " + ", ".join(
        f"{f.name}={f.default!r}" for f in fields(TrainConfig)
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig setting"
    )
    given = parser.parse_args(argv).set
    try:
        return TrainConfig(**parse_settings(given))
    except ValueError as err:
        parser.error(str(err))


LR_SCHEDULES = ("constant", "cosine")  # train/schedule.py


def check_options(cfg: TrainConfig) -> None:
    """Options that must name one of a stage's choices, checked against that stage's own list (before anything is
    built or written)."""
    # here, not at the top: the data stage's lists come with pandas and torchvision, which parsing a command line
    # must not wait for
    from geoloc_lib.data.contract import IMAGE_CHECKS
    from geoloc_lib.data.transforms import AUGMENT_PRESETS
    from geoloc_lib.geo.provinces import NUM_PROVINCES

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
