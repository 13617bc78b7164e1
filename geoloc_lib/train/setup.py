"""Setting up a training run: `build_training(cfg)` checks the config and the data, builds the model,
loss, sampler, optimiser, decoder, feature source and stepper, claims the run folder, and loads the
state a resumed run continues from. `train/loop.py` runs the epochs on what it returns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel

from geoloc_lib.base import distributed
from geoloc_lib.base.distributed import World
from geoloc_lib.base.folder_lock import RunLock
from geoloc_lib.base.progress import every_seconds
from geoloc_lib.data.contract import GeoDataset
from geoloc_lib.data.feature_cache import clean_features
from geoloc_lib.data.feature_sources import CachedFeatures, CachedPrefixes, EncodedImages
from geoloc_lib.data.photos import label_tensors
from geoloc_lib.data.sampler import ProvinceBalancedBatchSampler
from geoloc_lib.data.transforms import AUGMENT_PRESETS
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.model.decoding import Decoder, province_prior_shift
from geoloc_lib.model.encoders import verify_fingerprint
from geoloc_lib.model.factory import trainable_parameters
from geoloc_lib.model.heads import GeoHeads, GeolocModel
from geoloc_lib.model.losses import (
    GeolocLoss,
    province_counts,
    province_weights_from_split,
)
from geoloc_lib.run.checkpoint import Checkpoint
from geoloc_lib.run.folder import RunFolder, load_run_data, named, open_log_file, run_logger, silent_logger
from geoloc_lib.run.model import model_for_training
from geoloc_lib.run.phases import phase_of
from geoloc_lib.run.spec import TrainConfig, check_options
from geoloc_lib.train.early_stopping import StopRules
from geoloc_lib.train.fine_tune import load_phase1_start, phase1_checkpoint_path
from geoloc_lib.train.phase0_start import chosen_phase0, start_from_phase0
from geoloc_lib.train.run_state import StartPlan, abandon, begin, check_resumable, claim
from geoloc_lib.train.schedule import exponential_average
from geoloc_lib.train.step import EagerStepper, GraphStepper, TrainStep, select_stepper


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
    source: CachedFeatures | CachedPrefixes | EncodedImages
    stepper: EagerStepper | GraphStepper
    decoder: Decoder
    frozen_fingerprint: str | None  # fingerprint of frozen encoders (None: one is trained)
    checked_fingerprint: str  # of the weights training leaves alone: what checkpoints store and resumes check
    ema: AveragedModel | None  # exponential average of the heads (cfg.ema_decay > 0)
    retrieval_features: dict[str, torch.Tensor] | None  # clean training features, for retrieval
    stop_rules: StopRules | None  # Phase 2's early stopping (None: trains every epoch)
    world: World = World()  # the processes of a torchrun launch (one without it)
    progress: bool = True
    start_epoch: int = 1
    best_metric: float = math.inf
    best_epoch: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # {"train": row, "val": row} per epoch

    def encoder_fingerprint(self) -> str:
        return self.checked_fingerprint

    def close(self) -> None:
        """Release the run folder."""
        if self.lock is not None:
            self.lock.release()

    @property
    def eval_heads(self) -> GeoHeads:
        """The heads that are validated and saved for prediction: the averaged ones when averaging."""
        return self.model.heads if self.ema is None else self.ema.module


def parameter_groups(cfg: TrainConfig, model: GeolocModel) -> list[dict]:
    """The optimiser's groups: the heads, the trained CLIP part, the trained scene part, each with its own
    learning rate (`base_lr`, which the schedule scales) and weight decay; empty groups are left out."""
    trained = trainable_parameters(model, phase_of(cfg).trains)
    ids = {id(p) for p in trained}
    groups = [
        ("heads", model.heads.parameters(), cfg.lr, cfg.weight_decay),
        ("clip", model.encoders.clip.parameters(), cfg.lr_clip, cfg.weight_decay_clip),
        ("scene", model.encoders.scene.parameters(), cfg.lr_scene, cfg.weight_decay_scene),
    ]
    out = []
    for name, parameters, lr, decay in groups:
        chosen = [p for p in parameters if id(p) in ids]
        if chosen:
            out.append({"name": name, "params": chosen, "lr": lr, "base_lr": lr, "weight_decay": decay})
    return out


def _optimizer(cfg: TrainConfig, model: GeolocModel, use_graph: bool) -> torch.optim.AdamW:
    device_type = next(model.parameters()).device.type
    # fused: one kernel over all parameters (3x faster step on CPU); capturable keeps the step count on
    # the device so that the update can live inside a CUDA graph
    return torch.optim.AdamW(
        parameter_groups(cfg, model), fused=device_type in ("cpu", "cuda"), capturable=use_graph
    )


def _feature_source(
    cfg, model, fingerprint, data, device, log, encoders_forward
) -> CachedFeatures | EncodedImages:
    augment = AUGMENT_PRESETS[cfg.augment]
    if cfg.feature_cache and model.encoders.split:
        return CachedPrefixes.prepare(
            cfg.cache, model.encoders, fingerprint, data.train, data.val, augment, device, log
        )
    if cfg.feature_cache:
        return CachedFeatures.prepare(
            cfg.cache, model.encoders, fingerprint, data.train, data.val, augment, device, log
        )
    return EncodedImages(
        model.encoders,
        device,
        data.val,
        eval_batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        train_split=data.train,
        augment=augment,
        forward=encoders_forward,
    )


@dataclass(frozen=True)
class StartPoint:
    """Where the epochs begin: after the resumed run's last committed epoch, or at epoch 1."""

    epoch: int = 1
    best_metric: float = math.inf
    best_epoch: int = 0
    history: tuple[dict, ...] = ()


def _restore(state: Checkpoint, *, cfg, folder, data, model, ema, optimizer) -> StartPoint:
    """Load the last committed epoch after checking that nothing that matters changed since."""
    check_resumable(cfg, folder, state, data.signature)
    model.load_state_dict(state.train_state or state.model_state, strict=False)
    if ema is not None:
        ema.load_state_dict(state.ema_state)
    verify_fingerprint(model.encoders, state.encoder_fingerprint, str(folder.root))
    optimizer.load_state_dict(state.optimizer_state)
    return StartPoint(state.epoch + 1, state.best_metric, state.best_epoch, tuple(state.history or ()))


def _start_from(plan: StartPlan, ready: Prepared, requested, ema, optimizer, log) -> StartPoint:
    """Resume the run from its last checkpoint, or start Phase 1 from Phase 0's weights (`requested` is the
    phase0_checkpoint the user gave, `ready.cfg`'s the one chosen)."""
    cfg, folder, data, model = ready.cfg, ready.folder, ready.data, ready.model
    if plan.state is not None:
        start = _restore(
            plan.state, cfg=cfg, folder=folder, data=data, model=model, ema=ema, optimizer=optimizer
        )
        log.info(
            f"Resuming {folder.root} after epoch {start.epoch - 1} (best so far {start.best_metric:.3f})"
        )
        return start
    if plan.action == "resume":
        log.info(f"Resuming {folder.root}: no epoch was committed before, so training starts at epoch 1")
    if phase_of(cfg).from_phase0:
        start_from_phase0(requested, cfg.phase0_checkpoint, model, folder.root.name, log)
    return StartPoint()


def _stop_rules(cfg: TrainConfig, model: GeolocModel, data: GeoDataset, log) -> StopRules | None:
    """Phase 2 loads its Phase 1 start (a fresh run: the weights; a resumed one: only its validation row,
    for the rules) and returns its early-stopping rules."""
    if not phase_of(cfg).fine_tunes:
        return None
    start = load_phase1_start(cfg, model, data.signature, dataclasses.asdict(cfg.heads))
    rules = StopRules.of(cfg, data.train, data.val, start.metrics["val"])
    log.info(
        f"Phase 2 starts from {phase1_checkpoint_path(cfg.phase1_checkpoint)} (epoch {start.epoch}, validation "
        f"median {start.median_error:.2f} km); trained: the last {cfg.unfreeze_clip_blocks} CLIP block(s) and "
        f"{cfg.unfreeze_scene_stages} scene stage(s); {rules.describe()}"
    )
    return rules


def _loss(cfg: TrainConfig, model: GeolocModel, data: GeoDataset, device: torch.device) -> GeolocLoss:
    weights = province_weights_from_split(data.train, cfg.beta)
    loss_weights = phase_of(cfg).loss_weights(cfg)
    return GeolocLoss(model.cells, weights, loss_weights, cfg.aux_scale_km, cfg.soft_label_support).to(device)


def _decoder(cfg: TrainConfig, data: GeoDataset, sampler, loss_fn: GeolocLoss, device) -> Decoder:
    """The run's decoding, with the prior shift between the training data and what the loss sees."""
    counts = province_counts(data.train["province_id"])
    shift = province_prior_shift(counts, sampler.counts, loss_fn.province_weights.cpu())
    return Decoder(cfg.decoding, torch.tensor(shift, dtype=torch.float32, device=device))


def _clean_training_features(
    cfg, model, data, fingerprint: str | None, device, log
) -> dict[str, torch.Tensor] | None:
    """The clean features of the training photos when something needs them (standardisation, retrieval);
    sets the heads' input standardisation from them. Call before loading weights: Phase 0's or the resumed
    run's statistics then win."""
    if phase_of(cfg).fine_tunes or not (cfg.standardize_features or cfg.retrieval_k > 0):
        return None  # Phase 2's standardisation comes with Phase 1's heads; retrieval is off while encoders train
    train_clean = clean_features(cfg.cache, data.train, model.encoders, fingerprint, device, log.info)
    if cfg.standardize_features:
        model.heads.standardize_inputs(train_clean["clip"], train_clean["scene"])
    return train_clean


def _check_world(cfg: TrainConfig, world: World) -> None:
    if world.distributed and (cfg.feature_cache or cfg.batch_size % world.size):
        raise ValueError(
            "several processes train the image path (feature_cache=False, for trained encoders) with a batch "
            f"size divisible by their number ({world.size}); cached features train fastest in one process"
        )


# batches_per_epoch=0: the passes an epoch of the demo's recipe makes (300 batches of 64 over its 2,677 training
# photos: 7.2), at most the design card's 1300 batches; docs/own-photos.md gives what 30 passes did to 266 photos
AUTO_PASSES, MAX_AUTO_BATCHES = 7, 1300


def batches_per_epoch(cfg: TrainConfig, train_photos: int) -> int:
    """`cfg.batches_per_epoch`, or for 0 about AUTO_PASSES passes over the training photos, at most
    MAX_AUTO_BATCHES: GEOPAK's size keeps 1300 batches, and a few hundred photos are not seen hundreds of times
    an epoch (1300 batches of 64 would show each of 300 photos 277 times)."""
    if cfg.batches_per_epoch:
        return cfg.batches_per_epoch
    return max(1, min(MAX_AUTO_BATCHES, math.ceil(AUTO_PASSES * train_photos / cfg.batch_size)))


def _start_line(cfg: TrainConfig, data: GeoDataset, model: GeolocModel, device: torch.device) -> str:
    if not cfg.feature_cache:
        path = "images through the encoders at every step"
    else:
        path = (
            "cached prefixes through the encoders' trained tops"
            if model.encoders.split
            else "cached features"
        )
    # a province with fewer cells than top_cells offers the cells it has (model/decoding.py): small data is fine
    few = (
        f"; top_cells {cfg.top_cells}, but no province has more than {model.cells.max_cells} cell(s)"
        if cfg.top_cells > model.cells.max_cells
        else ""
    )
    return (
        f"Phase {cfg.phase} in {cfg.run_dir} on {device}: {len(data.train)} train / {len(data.val)} validation photos "
        f"(whole {cfg.val_block_km:g} km blocks of train.csv; {data.buffered} training photos within "
        f"{cfg.val_buffer_km:g} km of a validation photo left out; test.csv is not read), {model.cells.num_cells} "
        f"cells{few}, {path}, {cfg.batches_per_epoch} batches of {cfg.batch_size} per epoch"
    )


@dataclass(frozen=True)
class Prepared:
    """What `build_training` checks and builds before it claims the run folder: none of it reads the folder."""

    cfg: TrainConfig  # named, and with the epoch's batches fixed for this data
    world: World
    folder: RunFolder
    data: GeoDataset
    device: torch.device
    model: GeolocModel
    sampler: ProvinceBalancedBatchSampler


def build_training(cfg: TrainConfig, progress: bool = True) -> Training:
    """Check and build everything a run needs, then start it in its folder.

    Nothing in the run folder is written until every check that can refuse the start has passed: the
    config, the data, the model, loss, sampler and optimiser, the resume point or Phase 0's weights, and
    the features (train/run_state.py). Only then `run_state.begin` clears, repairs or starts the folder.
    """
    ready = _prepare(cfg)
    lock, plan = claim(ready.cfg, ready.folder, ready.world)  # the lock is taken; the folder is only read
    try:
        t = _build_claimed(ready, lock, plan, progress)
        if ready.world.is_main:
            begin(ready.folder, ready.cfg.phase, plan)
            open_log_file(ready.folder, t.log)
        return t
    except BaseException:
        # a notebook keeps the failed frame alive in its traceback: without this the folder would stay
        # locked by the kernel itself until it restarts
        abandon(lock, ready.folder, plan.created_folder)
        raise


def _prepare(cfg: TrainConfig) -> Prepared:
    cfg = named(cfg)
    check_options(cfg)
    every_seconds()  # a mistyped GEOLOC_PROGRESS_EVERY_S is refused now, not at the first epoch
    world = distributed.from_env(cfg.device)
    _check_world(cfg, world)
    folder = RunFolder.of(cfg)
    torch.manual_seed(cfg.seed)  # head initialisation
    data = load_run_data(cfg, cfg.image_check if world.is_main else "exists")
    device = world.device(cfg.device)
    model = model_for_training(cfg, CellTable(data.cells)).to(device)
    cfg = dataclasses.replace(cfg, batches_per_epoch=batches_per_epoch(cfg, len(data.train)))
    sampler = ProvinceBalancedBatchSampler(
        data.train["province_id"].to_numpy(), cfg.batch_size, cfg.batches_per_epoch, cfg.seed
    )
    return Prepared(cfg, world, folder, data, device, model, sampler)


def _retrieval_features(cfg, train_clean, frozen_fingerprint, log) -> dict[str, torch.Tensor] | None:
    if cfg.retrieval_k > 0 and frozen_fingerprint is None:
        log.info("retrieval is left out of the per-epoch validation while an encoder trains")
    return train_clean if cfg.retrieval_k > 0 and frozen_fingerprint else None


def _fingerprints(model: GeolocModel) -> tuple[str | None, str]:
    """(every weight's, when nothing trains; the weights training leaves alone, which checkpoints store and the
    prefix cache is keyed by: the same when nothing trains)."""
    frozen = model.encoders.fingerprint() if model.encoders.frozen else None
    return frozen, frozen or model.encoders.fingerprint(frozen_only=True)


def _phase0_of(cfg: TrainConfig, plan: StartPlan, model: GeolocModel, data: GeoDataset) -> str | None:
    """The phase0_checkpoint the run records: a resumed run keeps the one it started from."""
    if plan.state is not None:
        return plan.state.config.get("phase0_checkpoint")
    if not phase_of(cfg).from_phase0:
        return cfg.phase0_checkpoint
    return chosen_phase0(cfg.phase0_checkpoint, cfg.runs_dir, model, data.signature)


def _build_claimed(ready: Prepared, lock: RunLock | None, plan: StartPlan, progress: bool) -> Training:
    """What needs the run folder locked (the resume point it holds, or the weights Phase 1 and 2 start from),
    and what is built on it: features, loss, optimiser, decoder, stepper. Writes nothing into the folder."""
    world, folder, data, device, model = ready.world, ready.folder, ready.data, ready.device, ready.model
    log = run_logger(folder) if world.is_main else silent_logger()
    requested = ready.cfg.phase0_checkpoint
    cfg = dataclasses.replace(ready.cfg, phase0_checkpoint=_phase0_of(ready.cfg, plan, model, data))
    frozen_fingerprint, fingerprint = _fingerprints(model)
    # whole features are keyed by every weight: None lets the cache hash a trained encoder's too
    train_clean = _clean_training_features(cfg, model, data, frozen_fingerprint, device, log)
    stop_rules = _stop_rules(cfg, model, data, log)  # Phase 2 loads Phase 1's weights here
    loss_fn = _loss(cfg, model, data, device)
    use_graph = cfg.cuda_graph and cfg.feature_cache and device.type == "cuda"
    optimizer = _optimizer(cfg, model, use_graph)
    decoder = _decoder(cfg, data, ready.sampler, loss_fn, device)
    heads_forward, encoders_forward = distributed.data_parallel(model, world, device)
    step = TrainStep(
        model, loss_fn, optimizer, label_tensors(data.train, device), decoder, device, heads_forward
    )
    ema = exponential_average(model.heads, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start = _start_from(plan, dataclasses.replace(ready, cfg=cfg), requested, ema, optimizer, log)
    log.info(_start_line(cfg, data, model, device))
    retrieval_features = _retrieval_features(cfg, train_clean, frozen_fingerprint, log)
    source = _feature_source(cfg, model, fingerprint, data, device, log.info, encoders_forward)
    model.train()  # a captured graph keeps the mode it was captured in
    stepper = select_stepper(step, source, cfg.batch_size, use_graph, log.info)
    return Training(
        cfg=cfg,
        folder=folder,
        lock=lock,
        log=log,
        device=device,
        data=data,
        model=model,
        loss_fn=loss_fn,
        sampler=ready.sampler,
        optimizer=optimizer,
        source=source,
        stepper=stepper,
        decoder=decoder,
        frozen_fingerprint=frozen_fingerprint,
        checked_fingerprint=fingerprint,
        ema=ema,
        retrieval_features=retrieval_features,
        stop_rules=stop_rules,
        world=world,
        progress=progress,
        start_epoch=start.epoch,
        best_metric=start.best_metric,
        best_epoch=start.best_epoch,
        history=list(start.history),
    )
