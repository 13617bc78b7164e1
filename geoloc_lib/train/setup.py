"""Setting up a training run: `build_training(cfg)` checks the config and the data, builds the model,
loss, sampler, optimiser, decoder, feature source and stepper, claims the run folder, and loads the
state a resumed run continues from. `train/loop.py` runs the epochs on what it returns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel

from geoloc_lib.base import distributed
from geoloc_lib.base.distributed import World
from geoloc_lib.base.folder_lock import RunLock
from geoloc_lib.data.contract import GeoDataset
from geoloc_lib.data.feature_cache import CacheSpec, clean_features
from geoloc_lib.data.feature_sources import CachedFeatures, EncodedImages
from geoloc_lib.data.photos import label_tensors
from geoloc_lib.data.sampler import ProvinceBalancedBatchSampler
from geoloc_lib.data.transforms import AUGMENT_PRESETS
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.model.decoding import Decoder, province_prior_shift
from geoloc_lib.model.encoders import EncoderConfig, resolve_encoder_config, verify_fingerprint
from geoloc_lib.model.factory import build_model, load_phase0_weights, trainable_parameters
from geoloc_lib.model.heads import GeoHeads, GeolocModel, HeadConfig
from geoloc_lib.model.losses import (
    GeolocLoss,
    province_counts,
    province_weights_from_split,
)
from geoloc_lib.train.config import TrainConfig
from geoloc_lib.train.run_folder import RunFolder, open_log_file, run_logger, silent_logger
from geoloc_lib.train.run_state import StartPlan, abandon, begin, check_resumable, claim
from geoloc_lib.train.schedule import exponential_average
from geoloc_lib.train.step import EagerStepper, GraphStepper, TrainStep, select_stepper


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
        cfg.encoder, clip_pretrained=cfg.clip_pretrained, scene_weights=cfg.scene_weights
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


def model_for_training(cfg: TrainConfig, cells: CellTable) -> GeolocModel:
    return build_model(cells, encoder_config_of(cfg), head_config_of(cfg), cfg.freeze_clip, cfg.freeze_scene)


@dataclass
class Training:
    """Everything one run needs, built once by `build_training`."""

    cfg: TrainConfig
    folder: RunFolder
    lock: RunLock | None  # held by the first process until `close`
    log: logging.Logger
    device: torch.device
    data: GeoDataset
    model: GeolocModel
    loss_fn: GeolocLoss
    sampler: ProvinceBalancedBatchSampler
    optimizer: torch.optim.Optimizer
    source: CachedFeatures | EncodedImages | None  # set once the features are ready
    stepper: EagerStepper | GraphStepper | None
    decoder: Decoder
    frozen_fingerprint: str | None  # fingerprint of frozen encoders (None: one is trained)
    ema: AveragedModel | None  # exponential average of the heads (cfg.ema_decay > 0)
    retrieval_features: dict[str, torch.Tensor] | None  # clean training features, for retrieval
    world: World = World()  # the processes of a torchrun launch (one without it)
    progress: bool = True
    start_epoch: int = 1
    best_metric: float = math.inf
    best_epoch: int = 0

    def encoder_fingerprint(self) -> str:
        return self.frozen_fingerprint or self.model.encoders.fingerprint()

    def close(self) -> None:
        """Release the run folder."""
        if self.lock is not None:
            self.lock.release()

    @property
    def eval_heads(self) -> GeoHeads:
        """The heads that are validated and saved for prediction: the averaged ones when averaging."""
        return self.model.heads if self.ema is None else self.ema.module


def _optimizer(cfg: TrainConfig, model: GeolocModel, use_graph: bool) -> torch.optim.AdamW:
    device_type = next(model.parameters()).device.type
    # fused: one kernel over all parameters (3x faster step on CPU); capturable keeps the step count on
    # the device so that the update can live inside a CUDA graph
    return torch.optim.AdamW(
        trainable_parameters(model, cfg.phase),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=device_type in ("cpu", "cuda"),
        capturable=use_graph,
    )


def _feature_source(
    cfg, model, fingerprint, data, device, log, encoders_forward
) -> CachedFeatures | EncodedImages:
    augment = AUGMENT_PRESETS[cfg.augment]
    if cfg.feature_cache:
        return CachedFeatures.prepare(
            cache_spec_of(cfg), model.encoders, fingerprint, data.train, data.val, augment, device, log
        )
    return EncodedImages(
        model.encoders,
        device,
        data.val,
        cfg.eval_batch_size,
        cfg.num_workers,
        data.train,
        augment,
        encoders_forward,
    )


def _restore(t: Training, state: dict) -> None:
    """Load the last committed epoch after checking that nothing that matters changed since."""
    check_resumable(t.cfg, t.folder, state, t.data.signature)
    t.model.load_state_dict(state.get("train_state", state["model_state"]), strict=False)
    if t.ema is not None:
        t.ema.load_state_dict(state["ema_state"])
    verify_fingerprint(t.model.encoders, state.get("encoder_fingerprint"), str(t.folder.root))
    t.optimizer.load_state_dict(state["optimizer_state"])
    t.start_epoch, t.best_metric, t.best_epoch = (
        int(state["epoch"]) + 1,
        float(state["best_metric"]),
        int(state["best_epoch"]),
    )


def _start_from(t: Training, plan: StartPlan) -> None:
    """Resume the run from its last checkpoint, or start Phase 1 from Phase 0's weights when given."""
    cfg = t.cfg
    if plan.state is not None:
        _restore(t, plan.state)
        t.log.info(
            f"Resuming {t.folder.root} after epoch {t.start_epoch - 1} (best so far {t.best_metric:.3f})"
        )
        return
    if plan.action == "resume":
        t.log.info(f"Resuming {t.folder.root}: no epoch was committed before, so training starts at epoch 1")
    if cfg.phase0_checkpoint and cfg.phase == 1:
        t.log.info(load_phase0_weights(t.model, cfg.phase0_checkpoint).summary())


def _decoder(cfg: TrainConfig, data: GeoDataset, sampler, loss_fn: GeolocLoss, device) -> Decoder:
    """The run's decoding, with the prior shift between the training data and what the loss sees."""
    counts = province_counts(data.train["province_id"])
    shift = province_prior_shift(counts, sampler.counts, loss_fn.province_weights.cpu())
    return Decoder(cfg.decode_config, torch.tensor(shift, dtype=torch.float32, device=device))


def _clean_training_features(cfg, model, data, fingerprint, device, log) -> dict[str, torch.Tensor] | None:
    """The clean features of the training photos when something needs them (standardisation, retrieval);
    sets the heads' input standardisation from them. Call before loading weights: Phase 0's or the resumed
    run's statistics then win."""
    if not (cfg.standardize_features or cfg.retrieval_k > 0):
        return None
    train_clean = clean_features(
        cache_spec_of(cfg), data.train, model.encoders, fingerprint, device, log.info
    )
    if cfg.standardize_features:
        model.heads.standardize_inputs(train_clean["clip"], train_clean["scene"])
    return train_clean


def _check_world(cfg: TrainConfig, world: World) -> None:
    if world.distributed and (cfg.feature_cache or cfg.batch_size % world.size):
        raise ValueError(
            "several processes train the image path (feature_cache=False, for trained encoders) with a batch "
            f"size divisible by their number ({world.size}); cached features train fastest in one process"
        )


def _start_line(t: Training) -> str:
    cfg, data = t.cfg, t.data
    return (
        f"Phase {cfg.phase} on {t.device}: {len(data.train)} train / {len(data.val)} validation photos "
        f"(whole {cfg.val_block_km:g} km blocks of train.csv; test.csv is not read), {t.model.cells.num_cells} "
        f"cells, {'cached features' if cfg.feature_cache else 'images through the encoders at every step'}"
    )


def build_training(cfg: TrainConfig, progress: bool = True) -> Training:
    """Check and build everything a run needs, then start it in its folder.

    Nothing in the run folder is written until every check that can refuse the start has passed: the
    config, the data, the model, loss, sampler and optimiser, the resume point or Phase 0's weights, and
    the features (train/run_state.py). Only then `runstate.begin` clears, repairs or starts the folder.
    """
    world = distributed.from_env(cfg.device)
    _check_world(cfg, world)
    folder = RunFolder.of(cfg)
    torch.manual_seed(cfg.seed)  # head initialisation
    data = cfg.load_data(cfg.image_check if world.is_main else "exists")
    device = world.device(cfg.device)
    model = model_for_training(cfg, CellTable(data.cells)).to(device)
    _check_decoding(cfg, model.cells)
    sampler = ProvinceBalancedBatchSampler(
        data.train["province_id"].to_numpy(), cfg.batch_size, cfg.batches_per_epoch, cfg.seed
    )
    lock, plan = claim(cfg, folder, world)  # the lock is taken; the folder is only read
    try:
        t = _build_claimed(
            cfg,
            world=world,
            folder=folder,
            lock=lock,
            plan=plan,
            data=data,
            device=device,
            model=model,
            sampler=sampler,
            progress=progress,
        )
        if world.is_main:
            begin(folder, cfg.phase, plan)
            open_log_file(folder, t.log)
        return t
    except BaseException:
        # a notebook keeps the failed frame alive in its traceback: without this the folder would stay
        # locked by the kernel itself until it restarts
        abandon(lock, folder, plan.created_folder)
        raise


def _check_decoding(cfg: TrainConfig, cells: CellTable) -> None:
    if cfg.top_cells > cells.max_cells:
        raise ValueError(
            f"top_cells={cfg.top_cells} is more than the largest province has cells ({cells.max_cells}); "
            f"use at most {cells.max_cells}"
        )


def _build_claimed(cfg, *, world, folder, lock, plan, data, device, model, sampler, progress) -> Training:
    """The rest of `build_training`, once the run folder is locked; writes nothing into it."""
    log = run_logger(folder) if world.is_main else silent_logger()
    frozen_fingerprint = model.encoders.fingerprint() if model.encoders.frozen else None
    fingerprint = frozen_fingerprint or model.encoders.fingerprint()
    train_clean = _clean_training_features(cfg, model, data, fingerprint, device, log)
    weights = province_weights_from_split(data.train, cfg.beta)
    loss_fn = GeolocLoss(model.cells, weights, cfg.loss_weights, cfg.aux_scale_km, cfg.soft_label_support).to(
        device
    )
    use_graph = cfg.cuda_graph and cfg.feature_cache and device.type == "cuda"
    optimizer = _optimizer(cfg, model, use_graph)
    decoder = _decoder(cfg, data, sampler, loss_fn, device)
    heads_forward, encoders_forward = distributed.data_parallel(model, world, device)
    labels = label_tensors(data.train, device)
    step = TrainStep(model, loss_fn, optimizer, labels, decoder, device, heads=heads_forward)
    ema = exponential_average(model.heads, cfg.ema_decay) if cfg.ema_decay > 0 else None
    retrieval_features = train_clean if cfg.retrieval_k > 0 and frozen_fingerprint else None
    t = Training(
        cfg=cfg,
        folder=folder,
        lock=lock,
        log=log,
        device=device,
        data=data,
        model=model,
        loss_fn=loss_fn,
        sampler=sampler,
        optimizer=optimizer,
        source=None,
        stepper=None,
        decoder=decoder,
        frozen_fingerprint=frozen_fingerprint,
        ema=ema,
        retrieval_features=retrieval_features,
        world=world,
        progress=progress,
    )
    _start_from(t, plan)
    log.info(_start_line(t))
    if cfg.retrieval_k > 0 and retrieval_features is None:
        log.info("retrieval is left out of the per-epoch validation while an encoder trains")
    t.source = _feature_source(cfg, model, fingerprint, data, device, log.info, encoders_forward)
    model.train()  # a captured graph keeps the mode it was captured in
    t.stepper = select_stepper(step, t.source, cfg.batch_size, use_graph, log.info)
    if isinstance(t.stepper, GraphStepper):
        log.info("the cached-feature step runs as one CUDA graph")
    return t
