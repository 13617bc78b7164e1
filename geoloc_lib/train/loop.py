"""Training: `fit(cfg)` runs Phase 0 or Phase 1 from a config to a finished run folder.

Its parts, in the order they run: `setup.build_training` (data, model, loss, sampler,
optimiser, feature source and stepper, resumed state), then per epoch `train_one_epoch`, `validate`, and writing the
epoch's rows, predictions and checkpoints (`run/folder.py`).

Reproducibility: the batch order, the view choice and dropout of epoch e are seeded from (seed, e)
at the start of the epoch, so a run resumed after a kill continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geoloc_lib.base.atomic_files import write_json
from geoloc_lib.base.progress import TerminalTicker, duration_text, progress_bar, terminal_line
from geoloc_lib.data.feature_cache import clean_features
from geoloc_lib.evaluate.calibration import calibrate
from geoloc_lib.evaluate.evaluation import Evaluation, evaluate
from geoloc_lib.evaluate.metrics import prediction_metrics, predictions_frame
from geoloc_lib.evaluate.novelty import fit_novelty, heads_cell_probs
from geoloc_lib.evaluate.strangers import encode_images, stranger_images
from geoloc_lib.geo import provinces as prov
from geoloc_lib.model.factory import checkpoint_state
from geoloc_lib.model.losses import LOSS_LABELS, LOSS_TERMS
from geoloc_lib.model.retrieval import RetrievalIndex
from geoloc_lib.run.checkpoint import Checkpoint
from geoloc_lib.run.folder import RunFolder, named
from geoloc_lib.run.phases import phase_of
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.early_stopping import stop_reason
from geoloc_lib.train.epoch_report import epoch_summary
from geoloc_lib.train.run_state import commit_epoch
from geoloc_lib.train.schedule import lr_at
from geoloc_lib.train.setup import Training, build_training
from geoloc_lib.train.step import PRED_FIELDS

FINITE_CHECK_EVERY = 25  # steps between checks that the loss is finite (each check syncs the device)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_metric: float  # Phase 1: end-to-end validation median km; Phase 0: 100 - balanced accuracy %
    best_val: dict  # every validation metric of the best epoch (a `val` row of losses.csv)
    stopped: str | None = None  # why Phase 2 stopped early (None: it trained every epoch)


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
        last = t.folder.last_checkpoint(t.cfg.phase)
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch was committed yet"
        raise NonFiniteLossError(
            f"non-finite loss in epoch {epoch}, batch {step + 1}: {values}. Training stopped; {kept}. Try a "
            f"lower lr, or check the data of that batch."
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
    offset_weight = torch.tensor(phase_of(cfg).offset_weight(epoch, cfg), device=t.device)
    first, total = (epoch - 1) * n_steps, cfg.epochs * n_steps
    bases = [group["base_lr"] for group in t.optimizer.param_groups]  # heads, CLIP top, scene top: own rates
    lrs = [
        [lr_at(first + i, total, base, cfg.lr_schedule, cfg.warmup_steps) for base in bases]
        for i in range(n_steps)
    ]
    bar = progress_bar(
        total=n_steps, desc=f"epoch {epoch}/{cfg.epochs} train", disable=not t.progress, leave=False
    )
    ticker = TerminalTicker(f"{t.folder.root.name}: epoch {epoch}/{cfg.epochs}, batch", n_steps)
    with bar:
        for step, (idx, result) in enumerate(t.stepper.run(batches, generator, offset_weight, lrs)):
            rows[step], terms[step], preds[step] = idx, result["terms"], result["pred"]
            if t.ema is not None:
                t.ema.update_parameters(t.model.heads)
            bar.update()
            ticker.update(step + 1)
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
    ramp = phase_of(t.cfg).offset_weight(epoch, t.cfg)
    return evaluate(
        t.eval_heads, t.source.eval_batches(), t.data.val, decoder, t.loss_fn, ramp, progress=t.progress
    )


def _checkpoint(t: Training, epoch: int, rows: dict, predictions: pd.DataFrame) -> Checkpoint:
    trains = phase_of(t.cfg).trains
    return Checkpoint(
        phase=t.cfg.phase,
        epoch=epoch,
        model_state=checkpoint_state(t.model, trains, t.eval_heads),
        metrics=rows,
        val_predictions={column: predictions[column].tolist() for column in predictions},
        best_metric=t.best_metric,
        best_epoch=t.best_epoch,
        config=asdict(t.cfg),
        head_config=asdict(t.cfg.heads),
        encoder_config=asdict(t.model.encoders.config),
        cells=t.model.cells.signature(),
        encoder_fingerprint=t.encoder_fingerprint(),
        prior_shift=t.decoder.prior_shift.tolist(),
        data=t.data.signature,
        optimizer_state=t.optimizer.state_dict(),
        # resuming an averaged run needs the raw weights and the average
        train_state=None if t.ema is None else checkpoint_state(t.model, trains),
        ema_state=None if t.ema is None else t.ema.state_dict(),
        history=t.history,
    )


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
    phase = phase_of(t.cfg)
    t.history.append(rows)
    t.log.info(epoch_summary(phase, epoch, t.cfg.epochs, rows))
    metric = phase.selection_metric(rows["val"])
    improved = metric < t.best_metric
    if improved:
        t.best_metric, t.best_epoch = metric, epoch
        t.log.info(f"   new best ({phase.selection_text(metric)}) -> {t.folder.best_checkpoint(t.cfg.phase)}")
    epoch_seconds = [r["val"]["seconds"] for r in t.history[-3:]]  # the last epochs of this session
    left = sum(epoch_seconds) / len(epoch_seconds) * (t.cfg.epochs - epoch)
    terminal_line(
        f"{t.folder.root.name}: epoch {epoch}/{t.cfg.epochs}, {phase.selection_text(metric)} (best: epoch "
        f"{t.best_epoch}), {seconds:.0f} s"
        + (f"; about {duration_text(left)} left" if epoch < t.cfg.epochs else "")
    )
    if t.world.is_main:  # the first process writes the run folder
        payload = _checkpoint(t, epoch, rows, val.predictions)
        commit_epoch(t.folder, t.cfg.phase, payload, improved, keep=t.cfg.keep_checkpoints)


def calibrate_radii(t: Training, best: Checkpoint) -> None:
    """Fit the credible radii on the best epoch's validation predictions and store them with the run."""
    calibration, candidates = calibrate(
        pd.DataFrame(best.val_predictions), t.data.cells, block_km=t.cfg.val_block_km
    )
    write_json(
        t.folder.calibration,
        calibration.to_dict() | {"candidates": candidates.to_dict("records")},
    )
    quantiles = ", ".join(f"{100 * level:.0f} %: {q:.2f}" for level, q in calibration.pooled.items())
    t.log.info(
        f"credible radii calibrated on {calibration.photos} validation photos: radius = q x {calibration.spread} "
        f"(pooled q {quantiles}; each province's q pooled with it at tau = {calibration.pooling:g} photos; "
        "chosen by cross-fitted pinball loss)"
    )


def index_novelty(t: Training, best: Checkpoint) -> None:
    """The out-of-domain index: the training photos' encoder features, with its threshold on validation. When
    an encoder trained, they are the features of the best epoch's encoders, which the predictor rebuilds."""
    spec, encoders = t.cfg.cache, t.model.encoders
    # the trained parts as the best epoch left them: the encoders' features, the heads' uncertainty
    t.model.load_state_dict(best.model_state, strict=False)
    # keyed by every weight: a cache entry of exactly these encoders
    fingerprint = t.frozen_fingerprint or encoders.fingerprint()
    train, val = (
        clean_features(spec, part, encoders, fingerprint, t.device, t.log.info)
        for part in (t.data.train, t.data.val)
    )
    if not t.world.is_main:
        return
    # the rule's signals are chosen on strangers made from validation photos (never a real outside photo)
    strangers = {
        kind: encode_images(images, encoders, t.device)
        for kind, images in stranger_images(t.data.val["image_path"], seed=t.cfg.seed).items()
    }
    for features in (val, *strangers.values()):  # the heads' uncertainty, a signal the choice may take
        features["cell_probs"] = heads_cell_probs(t.model.heads, t.decoder, features, t.device)
    index = fit_novelty(train, val, strangers=strangers)
    index.save(t.folder.novelty)
    caught = ", ".join(f"{kind} {share:.0f} %" for kind, share in index.report["chosen"]["caught_%"].items())
    t.log.info(
        f"out-of-domain score: the largest of {' + '.join(index.signals)} (each scaled on validation), threshold "
        f"{index.threshold:.2f} ({100 * index.quantile:.0f} % of validation photos below); of the generated "
        f"strangers it flags {caught}"
    )


def _stops_early(t: Training) -> str | None:
    """Why Phase 2's early stopping fires on the epochs so far, or None (a resumed run that stopped stays
    stopped)."""
    reason = stop_reason(t.stop_rules, t.history) if t.stop_rules is not None else None
    if reason is not None:
        t.log.info(
            f"early stop after epoch {len(t.history)}: {reason}; the best checkpoint stays epoch {t.best_epoch} "
            f"({phase_of(t.cfg).selection_text(t.best_metric)})"
        )
    return reason


def fit(
    cfg: TrainConfig, progress: bool = True, on_epoch: Callable[[RunFolder], None] | None = None
) -> FitResult:
    """Train `cfg` into its run folder (resuming it when asked) and return the best epoch. `on_epoch` is
    called with the run folder after each committed epoch (03 redraws its curves with it)."""
    cfg = named(cfg)  # an empty run_name becomes a new dated one, here, so that the config written has it
    t = build_training(cfg, progress)
    terminal_line(
        f"{t.folder.root.name}: Phase {cfg.phase} in {t.folder.root}, epochs {t.start_epoch}-{cfg.epochs} "
        "(each epoch's line follows; the whole report is in its log.txt and the notebook)"
    )
    try:
        if t.world.is_main:
            t.folder.truncate_losses(t.start_epoch - 1)
            # the Phase 0 start it chose (phase0_checkpoint=auto) is recorded, not the request
            t.folder.write_config(dataclasses.replace(cfg, phase0_checkpoint=t.cfg.phase0_checkpoint))
            t.folder.write_run_info(run_info(t))
        stopped = None
        for epoch in range(t.start_epoch, cfg.epochs + 1):
            stopped = _stops_early(t)
            if stopped:
                break
            run_epoch(t, epoch)
            if on_epoch is not None and t.world.is_main:
                on_epoch(t.folder)
        t.world.barrier()  # the other processes read what the first one wrote
        best = t.folder.load_checkpoint(cfg.phase, "best")
        if phase_of(cfg).predicts:  # a run that places photos gets its radii and out-of-domain score
            if t.world.is_main:
                calibrate_radii(t, best)
            index_novelty(t, best)  # every process: under torchrun each extracts its share of the features
    finally:
        t.close()
    terminal_line(
        f"{t.folder.root.name}: done, best epoch {best.epoch} ({phase_of(cfg).selection_text(best.best_metric)})"
    )
    return FitResult(t.folder.root, best.epoch, best.best_metric, best.metrics["val"], stopped)
