"""Training: `fit(cfg)` runs Phase 0 or Phase 1 from a config to a finished run folder.

Its parts, in the order they run: `build_training` (data, model, loss, sampler, optimiser, feature
source and stepper, resumed state), then per epoch `train_one_epoch`, `validate`, and writing the
epoch's rows, predictions and checkpoints (`runfolder.py`).

Reproducibility: the batch order, the view choice and dropout of epoch e are seeded from (seed, e)
at the start of the epoch, so a run resumed after a kill continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel

from . import distributed
from . import provinces as prov
from .cells import CellTable
from .checkpoints import to_plain
from .config import TrainConfig
from .contract import GeoDataset
from .datasets import label_tensors
from .decoding import Decoder, province_prior_shift
from .distributed import World
from .encoders import verify_fingerprint
from .epoch_report import epoch_summary, selection_metric, selection_text
from .evaluation import Evaluation, evaluate
from .factory import (
    checkpoint_state,
    head_config_of,
    load_phase0_weights,
    model_for_training,
    trainable_parameters,
)
from .features import clean_features
from .losses import (
    LOSS_LABELS,
    LOSS_TERMS,
    GeolocLoss,
    offset_ramp,
    province_counts,
    province_weights_from_split,
)
from .metrics import PROVINCE_ACCURACY_COLUMNS, prediction_metrics, predictions_frame
from .model import GeoHeads, GeolocModel
from .progress import progress_bar
from .retrieval import RetrievalIndex
from .runfolder import RunFolder, silent_logger
from .runlock import RunLock
from .runstate import check_resumable, claim, commit_epoch, repair
from .sampler import ProvinceBalancedBatchSampler
from .schedule import exponential_average, lr_at
from .sources import CachedFeatures, EncodedImages
from .step import PRED_FIELDS, EagerStepper, GraphStepper, TrainStep, select_stepper
from .transforms import AUGMENT_PRESETS

FINITE_CHECK_EVERY = 25  # steps between checks that the loss is finite (each check syncs the device)


class NonFiniteLossError(RuntimeError):
    pass


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


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_metric: float  # Phase 1: end-to-end validation median km; Phase 0: 100 - balanced accuracy %
    best_val: dict  # every validation metric of the best epoch (a `val` row of losses.csv)


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
            cfg, model.encoders, fingerprint, data.train, data.val, augment, device, log
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
    check_resumable(t.cfg, t.folder, state, t.data.signature())
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
    if t.world.is_main:
        repair(t.folder, t.cfg.phase, state)


def _start_from(t: Training, resume_state: dict | None) -> None:
    """Resume the run from its last checkpoint, or start Phase 1 from Phase 0's weights when given."""
    cfg = t.cfg
    if resume_state is not None:
        _restore(t, resume_state)
        t.log.info(
            f"Resuming {t.folder.root} after epoch {t.start_epoch - 1} (best so far {t.best_metric:.3f})"
        )
    elif cfg.phase0_checkpoint and cfg.phase == 1:
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
    train_clean = clean_features(cfg, data.train, model.encoders, fingerprint, device, log.info)
    if cfg.standardize_features:
        model.heads.standardize_inputs(train_clean["clip"], train_clean["scene"])
    return train_clean


def build_training(cfg: TrainConfig, progress: bool = True) -> Training:
    """Check the config and the data, build the model, then claim the run folder (runstate.py)."""
    world = distributed.from_env(cfg.device)
    if world.distributed and (cfg.feature_cache or cfg.batch_size % world.size):
        raise ValueError(
            "several processes train the image path (feature_cache=False, for trained encoders) with a batch "
            f"size divisible by their number ({world.size}); cached features train fastest in one process"
        )
    folder = RunFolder.of(cfg)
    torch.manual_seed(cfg.seed)  # head initialisation
    data = cfg.load_data(cfg.image_check if world.is_main else "exists")
    device = world.device(cfg.device)
    model = model_for_training(cfg, CellTable(data.cells)).to(device)
    lock, resume_state = claim(cfg, folder, world)  # nothing in the folder changes before this line
    log = folder.logger() if world.is_main else silent_logger()
    frozen_fingerprint = model.encoders.fingerprint() if model.encoders.frozen else None
    fingerprint = frozen_fingerprint or model.encoders.fingerprint()
    train_clean = _clean_training_features(cfg, model, data, fingerprint, device, log)
    weights = province_weights_from_split(data.train, cfg.beta)
    loss_fn = GeolocLoss(model.cells, weights, cfg.loss_weights, cfg.aux_scale_km, cfg.soft_label_support).to(
        device
    )
    use_graph = cfg.cuda_graph and cfg.feature_cache and device.type == "cuda"
    optimizer = _optimizer(cfg, model, use_graph)
    sampler = ProvinceBalancedBatchSampler(
        data.train["province_id"].to_numpy(), cfg.batch_size, cfg.batches_per_epoch, cfg.seed
    )
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
    _start_from(t, resume_state)
    log.info(
        f"Phase {cfg.phase} on {device}: {len(data.train)} train / {len(data.val)} validation photos "
        f"(whole {cfg.val_block_km:g} km blocks of train.csv; test.csv is not read), {model.cells.num_cells} "
        f"cells, {'cached features' if cfg.feature_cache else 'images through the encoders at every step'}"
    )
    if cfg.retrieval_k > 0 and retrieval_features is None:
        log.info("retrieval is left out of the per-epoch validation while an encoder trains")
    t.source = _feature_source(cfg, model, fingerprint, data, device, log.info, encoders_forward)
    model.train()  # a captured graph keeps the mode it was captured in
    t.stepper = select_stepper(step, t.source, cfg.batch_size, use_graph, log.info)
    if isinstance(t.stepper, GraphStepper):
        log.info("the cached-feature step runs as one CUDA graph")
    return t


def seed_epoch(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Seed dropout (the global generators) and return the generator of the view choice, for (seed, epoch)."""
    epoch_seed = seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(epoch_seed)
    return torch.Generator(device=device).manual_seed(epoch_seed)


def _check_finite(t: Training, terms: torch.Tensor, epoch: int) -> None:
    bad = ~torch.isfinite(terms).all(1)
    if bool(bad.any()):
        step = int(bad.nonzero()[0])
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_TERMS, terms[step].tolist(), strict=True))
        raise NonFiniteLossError(
            f"non-finite loss in epoch {epoch}, batch {step + 1}: {values}. Training stopped; the last "
            f"good checkpoint is {t.folder.last_checkpoint(t.cfg.phase)}. Try a lower lr, or check the "
            f"data of that batch."
        )


def train_one_epoch(t: Training, epoch: int) -> tuple[dict, pd.DataFrame]:
    """Train one epoch; return its mean loss terms and the predictions made while training."""
    cfg = t.cfg
    generator = seed_epoch(cfg.seed, epoch, t.device)
    t.model.train()
    batches = t.sampler.epoch_batches(epoch)  # [S, B] the global batches
    width = batches.shape[1] // t.world.size  # under torchrun each process trains its slice of each batch
    batches = torch.as_tensor(batches[:, t.world.rank * width : (t.world.rank + 1) * width], device=t.device)
    n_steps = len(batches)
    rows = torch.zeros_like(batches)  # [S, B] the rows each step trained on
    terms = torch.zeros(n_steps, len(LOSS_TERMS), device=t.device)  # [S, T]
    preds = torch.zeros(n_steps, width, len(PRED_FIELDS), device=t.device)  # [S, B, 5]
    offset_weight = torch.tensor(offset_ramp(epoch, cfg.offset_ramp_epochs), device=t.device)
    first, total = (epoch - 1) * n_steps, cfg.epochs * n_steps
    lrs = [lr_at(first + i, total, cfg.lr, cfg.lr_schedule, cfg.warmup_steps) for i in range(n_steps)]
    bar = progress_bar(
        total=n_steps, desc=f"epoch {epoch}/{cfg.epochs} train", disable=not t.progress, leave=False
    )
    with bar:
        for step, (idx, result) in enumerate(t.stepper.run(batches, generator, offset_weight, lrs)):
            rows[step], terms[step], preds[step] = idx, result["terms"], result["pred"]
            if t.ema is not None:
                t.ema.update_parameters(t.model.heads)
            bar.update()
            if step % FINITE_CHECK_EVERY == 0 or step == n_steps - 1:
                _check_finite(t, terms[: step + 1], epoch)
                shown = {
                    LOSS_LABELS[k]: f"{v:.3f}" for k, v in zip(LOSS_TERMS, terms[step].tolist(), strict=True)
                }
                bar.set_postfix(shown | {"ow": f"{float(offset_weight):.2f}"})
    p = preds.reshape(-1, len(PRED_FIELDS)).cpu().numpy()
    frame = predictions_frame(
        t.data.train.iloc[rows.reshape(-1).cpu().numpy()], {k: p[:, i] for i, k in enumerate(PRED_FIELDS)}
    )
    mean_terms = dict(zip(LOSS_TERMS, terms.mean(0).tolist(), strict=True))
    return {f"loss_{k}": v for k, v in mean_terms.items()} | {"offset_weight": float(offset_weight)}, frame


def validate(t: Training, epoch: int) -> Evaluation:
    """Validation: predictions without labels, and the loss terms with the true cells."""
    decoder = t.decoder
    if t.retrieval_features is not None:
        index = RetrievalIndex(
            t.eval_heads, t.retrieval_features, t.data.train, t.cfg.retrieval_k, t.cfg.retrieval_temperature
        )
        decoder = dataclasses.replace(decoder, retrieval=index)
    ramp = offset_ramp(epoch, t.cfg.offset_ramp_epochs)
    return evaluate(
        t.eval_heads, t.source.eval_batches(), t.data.val, decoder, t.loss_fn, ramp, progress=t.progress
    )


def _checkpoint_payload(t: Training, epoch: int, rows: dict, predictions: pd.DataFrame) -> dict:
    plain = to_plain(
        {
            "phase": t.cfg.phase,
            "epoch": epoch,
            "model_state": checkpoint_state(t.model, t.cfg.phase, t.eval_heads),
            "losses": {
                split: {k: v for k, v in r.items() if k.startswith("loss_")} for split, r in rows.items()
            },
            "province_accuracies": {
                split: {c: r[c] for c in PROVINCE_ACCURACY_COLUMNS} for split, r in rows.items()
            },
            "median_error": rows["val"]["median_error_km"],
            "metrics": rows,
            "val_predictions": {column: predictions[column].tolist() for column in predictions},
            "best_metric": t.best_metric,
            "best_epoch": t.best_epoch,
            "config": asdict(t.cfg),
            "head_config": asdict(head_config_of(t.cfg)),
            "encoder_config": asdict(t.model.encoders.config),
            "cells": t.model.cells.signature(),
            "encoder_fingerprint": t.encoder_fingerprint(),
            "prior_shift": t.decoder.prior_shift.tolist(),
            "data": t.data.signature(),
        }
    )
    if t.ema is not None:  # resuming needs the raw weights and the average
        plain |= {"train_state": checkpoint_state(t.model, t.cfg.phase), "ema_state": t.ema.state_dict()}
    return plain | {"optimizer_state": t.optimizer.state_dict()}


def run_info(t: Training) -> dict:
    """Facts derived while the run started, written beside config.json."""
    return {
        "device": str(t.device),
        "locations": t.folder.locations(t.cfg),
        "encoder_fingerprint": t.encoder_fingerprint(),
        "cells": t.model.cells.signature(),
        "stepper": type(t.stepper).__name__,
        "province_weights": dict(zip(prov.PROVINCE_NAMES, t.loss_fn.province_weights.tolist(), strict=True)),
        "batch_composition": dict(zip(prov.PROVINCE_NAMES, t.sampler.counts.tolist(), strict=True)),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }


def run_epoch(t: Training, epoch: int) -> None:
    """Train and validate one epoch, then write its rows, predictions and checkpoints."""
    start = time.perf_counter()
    train_losses, train_frame = train_one_epoch(t, epoch)
    val = validate(t, epoch)
    seconds = time.perf_counter() - start
    ramp = {"offset_weight": train_losses["offset_weight"], "seconds": seconds}
    rows = {
        "train": {
            "epoch": epoch,
            "split": "train",
            **train_losses,
            **prediction_metrics(train_frame),
            **ramp,
        },
        "val": {"epoch": epoch, "split": "val", **val.losses, **prediction_metrics(val.predictions), **ramp},
    }
    t.log.info(epoch_summary(t.cfg.phase, epoch, t.cfg.epochs, rows))
    metric = selection_metric(t.cfg.phase, rows["val"])
    improved = metric < t.best_metric
    if improved:
        t.best_metric, t.best_epoch = metric, epoch
        t.log.info(
            f"   new best ({selection_text(t.cfg.phase, metric)}) -> {t.folder.best_checkpoint(t.cfg.phase)}"
        )
    if t.world.is_main:  # the first process writes the run folder
        commit_epoch(
            t.folder, t.cfg.phase, epoch, _checkpoint_payload(t, epoch, rows, val.predictions), improved
        )


def fit(cfg: TrainConfig, progress: bool = True) -> FitResult:
    """Train `cfg` into its run folder (resuming it when asked) and return the best epoch."""
    t = build_training(cfg, progress)
    try:
        if t.world.is_main:
            t.folder.truncate_losses(t.start_epoch - 1)
            t.folder.write_config(cfg)
            t.folder.write_run_info(run_info(t))
        for epoch in range(t.start_epoch, cfg.epochs + 1):
            run_epoch(t, epoch)
        t.world.barrier()  # the other processes read what the first one wrote
        best = t.folder.load_checkpoint(cfg.phase, "best")
    finally:
        t.close()
    return FitResult(t.folder.root, int(best["epoch"]), float(best["best_metric"]), best["metrics"]["val"])
