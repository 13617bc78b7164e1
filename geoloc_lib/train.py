"""Phase 0 and Phase 1 training (seed sections 1, 5-8, 11, 12) with honest metrics and safe resume.

`train(TrainConfig(...))` runs everything; `notebooks/03_train_phase1.ipynb` (and `02b_train_phase0`)
are thin drivers around it. Outputs go to `runs/<run_name>/` (DESIGN.md section 3).

Two paths give the same model semantics:
- cached features (default, frozen encoders): encoder outputs for K augmented views of every training
  photo and the clean validation photo are computed once; each step picks a random view per photo.
- seed-literal (`feature_cache=False`, required when an encoder is unfrozen): every step decodes,
  augments and encodes the images.

Reproducibility: the batch order, the view choice and dropout of epoch e are seeded from (seed, e) at
the start of the epoch, so a run resumed after a kill continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import provinces as prov
from .cells import CellTable
from .checkpoints import atomic_torch_save, atomic_write_text, to_plain, write_json
from .contract import load_dataset
from .datasets import PhotoDataset
from .encoders import DualEncoder, resolve_encoder_config, verify_fingerprint
from .features import cache_key, load_or_extract
from .losses import LossWeights, Phase1TotalLoss, offset_ramp, province_weights_from_split
from .metrics import SEED_COLUMNS, prediction_metrics, predictions_frame
from .model import HeadConfig, Phase1Model, load_checkpoint, load_phase0_weights
from .sampler import ProvinceBalancedBatchSampler
from .transforms import AugmentConfig, eval_transform, train_transform

LOSS_TERMS = ("total", "province", "geocell", "offset", "aux")
EXTRA_COLUMNS = [
    "offset_weight",
    "oracle_median_error_km",
    "oracle_mean_error_km",
    "oracle_p90_error_km",
    "mixture_median_error_km",
    "mixture_mean_error_km",
    "mixture_p90_error_km",
    "acc_1km",
    "acc_25km",
    "acc_200km",
    "acc_750km",
    "geoscore",
    "province_acc",
    "province_balanced_acc",
    "seconds",
]
CSV_COLUMNS = SEED_COLUMNS + EXTRA_COLUMNS
# Phase 0 trains (and saves) only these parts of the heads
PHASE0_PREFIXES = ("heads.clip_proj.", "heads.scene_proj.", "heads.gate.", "heads.province_head.")


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/demo"
    images_root: str | None = None
    # run folder
    run_name: str = "phase1"
    runs_dir: str = "runs"
    resume: bool = False
    overwrite: bool = False
    phase: int = 1  # 0: province pre-training (writes province_best.pt), 1: full hierarchy
    # seed section 1.1
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-5
    temperature: float = 1.0
    batches_per_epoch: int = 1300
    loss_province: float = 0.5
    loss_geocell: float = 1.0
    loss_offset: float = 1.0
    loss_aux: float = 0.1
    beta: float = 0.999
    offset_ramp_epochs: int = 5
    aux_scale_km: float = 100.0
    # model
    encoder: str = "tiny-random"  # preset name from geoloc_lib.encoders.ENCODER_PRESETS
    clip_pretrained: str | None = None  # overrides the preset's weights
    scene_weights: str | None = None
    freeze_clip: bool = True
    freeze_scene: bool = True
    phase0_checkpoint: str | None = None
    proj_dim: int = 512
    geocell_hidden: int = 512
    small_geocell_hidden: int = 256
    dropout: float = 0.1
    # speed
    feature_cache: bool = True  # False: seed-literal path (images through the encoders every step)
    cache_views: int = 4
    cache_dir: str = "runs/feature_cache"
    cache_dtype: str = "float16"
    cuda_graph: bool = True  # capture the cached-feature step as one CUDA graph on CUDA
    eval_batch_size: int = 256
    num_workers: int = 2
    device: str = "auto"  # auto: CUDA, then MPS, then CPU
    seed: int = 0
    allow_missing_provinces: bool = False
    top_provinces: int = 2
    top_cells: int = 5

    def __post_init__(self):
        problems = []
        if self.run_name.strip() in ("", ".", ".."):
            problems.append(f"run_name {self.run_name!r} must name a folder (it is deleted on overwrite)")
        if self.phase not in (0, 1):
            problems.append(f"phase must be 0 or 1, not {self.phase}")
        counts = ("epochs", "batch_size", "batches_per_epoch", "cache_views", "eval_batch_size")
        widths = ("top_provinces", "top_cells", "offset_ramp_epochs", "proj_dim", "geocell_hidden")
        for name in counts + widths:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, not {getattr(self, name)}")
        if not (self.lr > 0 and self.temperature > 0 and self.aux_scale_km > 0):
            problems.append("lr, temperature and aux_scale_km must be positive")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), not {self.dropout}")
        if not 0 <= self.beta < 1:
            problems.append(f"beta must be in [0, 1), not {self.beta}")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            problems.append(f"cache_dtype must be float16, bfloat16 or float32, not {self.cache_dtype!r}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name

    @property
    def loss_weights(self) -> LossWeights:
        if self.phase == 0:
            return LossWeights(province=1.0, geocell=0.0, offset=0.0, aux=0.0)
        return LossWeights(self.loss_province, self.loss_geocell, self.loss_offset, self.loss_aux)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}")
        return cls(**values)

    @classmethod
    def from_parameters(cls, namespace: dict, **overrides) -> TrainConfig:
        """The config of a notebook: every name in `namespace` that is a config field, then `overrides`.

        Notebook parameters are papermill literals, so "" stands for None in the optional fields.
        """
        optional = {f.name for f in fields(cls) if f.default is None}
        values = {
            f.name: None if f.name in optional and namespace[f.name] == "" else namespace[f.name]
            for f in fields(cls)
            if f.name in namespace
        }
        return cls.from_dict(values | overrides)


# Fields that may differ between a run and its resumption; anything else must match.
RESUMABLE_CHANGES = {
    "epochs",
    "resume",
    "overwrite",
    "num_workers",
    "device",
    "cuda_graph",
    "eval_batch_size",
}


class NonFiniteLossError(RuntimeError):
    pass


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _make_logger(run_dir: Path) -> logging.Logger:
    logger = logging.getLogger(f"geoloc.train.{run_dir.resolve()}")
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in (
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(run_dir / "log.txt", encoding="utf-8"),
    ):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def _prepare_run_dir(cfg: TrainConfig) -> tuple[Path, dict | None]:
    """Create the run folder; return the resume checkpoint if resuming. Never silently overwrite."""
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / f"phase{cfg.phase}" / "last.pt"
    if run_dir.exists() and any(run_dir.iterdir()):
        if cfg.overwrite:
            shutil.rmtree(run_dir)
        elif cfg.resume:
            if last.is_file():
                return run_dir, load_checkpoint(last)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # killed before its first epoch
        elif (run_dir / "config.json").exists():
            raise FileExistsError(
                f"run folder {run_dir} already exists. Pass resume=True to continue it, overwrite=True to "
                f"replace it, or choose another run_name."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None


def _check_resume_config(cfg: TrainConfig, saved: dict) -> None:
    now = asdict(cfg)
    changed = {
        k: (saved.get(k), v) for k, v in now.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v
    }
    if changed:
        raise ValueError(
            f"cannot resume {cfg.run_dir}: config differs from the saved run in {changed} "
            f"(saved, now). Use the saved values, or start a new run_name."
        )


class TrainingStateSnapshot:
    """Parameters and optimizer state of a moment, restored in place (a CUDA graph keeps addresses).

    Undoes the warm-up steps before graph capture. State that did not exist at the snapshot (a fresh
    run's Adam moments and step count) is zeroed, which is what AdamW starts from; state that did exist
    (a resumed run's) gets its saved values back.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.saved_params = [p.detach().clone() for p in self.params]
        self.saved_state = {
            p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}
            for p in self.params
            if p in optimizer.state
        }

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.saved_params, strict=True):
            p.copy_(saved)
        for p, state in self.optimizer.state.items():
            saved = self.saved_state.get(p, {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key in saved:
                    value.copy_(saved[key])
                else:
                    value.zero_()
        self.optimizer.zero_grad(set_to_none=True)


class Trainer:
    """Holds data, model, loss, optimiser and the feature cache of one run."""

    def __init__(self, cfg: TrainConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.run_dir, self.resume_state = _prepare_run_dir(cfg)
        self.log = _make_logger(self.run_dir)
        self.device = select_device(cfg.device)
        torch.manual_seed(cfg.seed)

        self.data = load_dataset(cfg.data_dir, cfg.images_root, "exists", cfg.allow_missing_provinces)
        encoder_cfg = resolve_encoder_config(
            cfg.encoder, clip_pretrained=cfg.clip_pretrained, scene_weights=cfg.scene_weights
        )
        encoders = DualEncoder(encoder_cfg, cfg.freeze_clip, cfg.freeze_scene)
        if not encoders.frozen and cfg.feature_cache:
            raise ValueError("an unfrozen encoder needs the seed-literal path: set feature_cache=False")
        self.cells = CellTable(self.data.cells)
        head_cfg = HeadConfig(
            proj_dim=cfg.proj_dim,
            geocell_hidden=cfg.geocell_hidden,
            small_geocell_hidden=cfg.small_geocell_hidden,
            dropout=cfg.dropout,
            temperature=cfg.temperature,
        )
        self.model = Phase1Model(encoders, self.cells, head_cfg).to(self.device)
        self.head_config = head_cfg

        self.province_weights = province_weights_from_split(self.data.train, cfg.beta)
        self.loss_fn = Phase1TotalLoss(
            self.cells, self.province_weights, cfg.loss_weights, cfg.aux_scale_km, cfg.offset_ramp_epochs
        ).to(self.device)
        self.sampler = ProvinceBalancedBatchSampler(
            self.data.train["province_id"].to_numpy(), cfg.batch_size, cfg.batches_per_epoch, cfg.seed
        )
        self.train_tensors = self._split_tensors(self.data.train)
        self.val_tensors = self._split_tensors(self.data.test)
        self.image_size = encoders.image_size
        self.augment = AugmentConfig()

        params = [
            p
            for name, p in self.model.named_parameters()
            if p.requires_grad and (cfg.phase == 1 or name.startswith(PHASE0_PREFIXES))
        ]
        self.use_graph = cfg.cuda_graph and cfg.feature_cache and self.device.type == "cuda"
        # fused: one kernel over all parameters instead of ~10 ops per tensor (3x faster step on CPU);
        # capturable keeps the step counter on the device so the step can live inside a CUDA graph
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, capturable=self.use_graph
        )
        self.amp = (
            # no autocast weight cache: cached casts and CUDA-graph capture do not mix (pytorch#71631)
            torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        self.train_features = self.val_features = None
        self._graph = None
        self._frozen_fingerprint = None

    # ---------------------------------------------------------------- data
    def _split_tensors(self, split: pd.DataFrame) -> dict[str, torch.Tensor]:
        return {
            # np.array copies: pandas hands out read-only views
            "province": torch.tensor(np.array(split["province_id"], np.int64), device=self.device),
            "cell": torch.tensor(np.array(split["cell_id"], np.int64), device=self.device),
            "lat": torch.tensor(np.array(split["latitude"], np.float32), device=self.device),
            "lon": torch.tensor(np.array(split["longitude"], np.float32), device=self.device),
        }

    def prepare_features(self) -> None:
        """Fill the feature cache (train: K augmented views; val: clean) and move it to the device."""
        cfg = self.cfg
        dtype = getattr(torch, cfg.cache_dtype)
        encoders = self.model.encoders
        common = {
            "encoders": encoders,
            "device": self.device,
            "batch_size": cfg.eval_batch_size,
            "num_workers": cfg.num_workers,
            "dtype": dtype,
        }
        train_key = cache_key(
            self.encoder_fingerprint(),
            self.data.train,
            {"train": self.augment.describe(), "size": self.image_size},
            cfg.cache_views,
            cfg.seed,
            dtype,
        )
        val_key = cache_key(
            self.encoder_fingerprint(), self.data.test, {"eval": True, "size": self.image_size}, 1, 0, dtype
        )
        self.train_features = load_or_extract(
            cfg.cache_dir,
            train_key,
            log=self.log.info,
            split=self.data.train,
            transform=train_transform(self.image_size, self.augment),
            views=cfg.cache_views,
            seed=cfg.seed,
            desc="train features",
            **common,
        )
        self.val_features = load_or_extract(
            cfg.cache_dir,
            val_key,
            log=self.log.info,
            split=self.data.test,
            transform=eval_transform(self.image_size),
            views=1,
            seed=0,
            desc="val features",
            **common,
        )
        self.train_features = {k: v.to(self.device) for k, v in self.train_features.items()}
        self.val_features = {k: v.to(self.device) for k, v in self.val_features.items()}

    # ---------------------------------------------------------------- one step
    def _features_for(
        self, idx: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features of one random view per photo: idx [B] -> [B, Dc], [B, Ds]."""
        views = self.train_features["clip"].shape[0]
        view = torch.randint(views, idx.shape, device=idx.device, generator=generator)  # [B]
        return self.train_features["clip"][view, idx].float(), self.train_features["scene"][view, idx].float()

    def encoder_fingerprint(self) -> str:
        """Hash of the encoder weights; computed once while both are frozen (hashing a ViT-B/16 takes ~1 s)."""
        if not self.model.encoders.frozen:
            return self.model.encoders.fingerprint()
        if self._frozen_fingerprint is None:
            self._frozen_fingerprint = self.model.encoders.fingerprint()
        return self._frozen_fingerprint

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seed-literal path: images [B, 3, S, S] through both encoders -> fp32 [B, Dc], [B, Ds]."""
        with self.amp:
            clip_feat, scene_feat = self.model.encoders(images.to(self.device, non_blocking=True))
        return clip_feat.float(), scene_feat.float()

    def _step(self, clip_feat, scene_feat, idx, offset_weight) -> dict[str, torch.Tensor]:
        """Forward, loss, backward, optimiser step; returns loss terms and train predictions (no host sync)."""
        t = self.train_tensors
        province, cell = t["province"][idx], t["cell"][idx]
        with self.amp:
            out = self.model.heads(clip_feat, scene_feat, cell_ids=cell, province_ids=province)
        losses = self.loss_fn(out, province, cell, t["lat"][idx], t["lon"][idx], offset_weight=offset_weight)
        losses["total"].backward()
        self.optimizer.step()
        with torch.no_grad():
            pred = self.model.heads.predict(out, self.cfg.top_provinces, self.cfg.top_cells)
            oracle = self.cells.center[out["cell_flat"]] + out["offsets"].float()
        return {
            "terms": torch.stack([losses[k].detach().float() for k in LOSS_TERMS]),  # [5]
            "pred": torch.stack(
                [pred["province"].float(), pred["lat"], pred["lon"], oracle[:, 0], oracle[:, 1]], 1
            ),
        }

    def _capture_graph(self) -> None:
        """Capture feature gather + step as one CUDA graph; the warm-up steps are undone afterwards.

        The view choice inside the graph draws from the default CUDA generator (graph-safe: each replay
        advances its offset), which `_seed_epoch` seeds from (seed, epoch).
        """
        B = self.cfg.batch_size
        self._static_idx = torch.zeros(B, dtype=torch.long, device=self.device)
        self._static_ow = torch.zeros((), device=self.device)
        snapshot = TrainingStateSnapshot(self.optimizer)

        def graph_step():
            return self._step(*self._features_for(self._static_idx, None), self._static_idx, self._static_ow)

        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.optimizer.zero_grad(set_to_none=True)
                    graph_step()
            torch.cuda.current_stream().wait_stream(stream)
            snapshot.restore()
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._graph_out = graph_step()
        except RuntimeError as err:
            snapshot.restore()
            self._graph = None
            self.use_graph = False
            self.log.info(f"CUDA graph capture failed ({err}); training continues eagerly")

    # ---------------------------------------------------------------- epochs
    def _seed_epoch(self, epoch: int) -> torch.Generator:
        torch.manual_seed(self.cfg.seed * 100_003 + epoch)  # dropout
        if self.device.type == "cuda":
            torch.cuda.manual_seed(self.cfg.seed * 100_003 + epoch)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.cfg.seed * 100_003 + epoch)  # view choice
        return generator

    def train_epoch(self, epoch: int) -> tuple[dict, pd.DataFrame]:
        cfg = self.cfg
        generator = self._seed_epoch(epoch)
        self.model.train()
        batches = torch.as_tensor(self.sampler.epoch_batches(epoch), device=self.device)  # [S, B]
        n_steps = len(batches)
        terms = torch.zeros(n_steps, len(LOSS_TERMS), device=self.device)  # [S, 5]
        preds = torch.zeros(n_steps, cfg.batch_size, 5, device=self.device)  # [S, B, 5]
        offset_weight = torch.tensor(offset_ramp(epoch, cfg.offset_ramp_epochs), device=self.device)
        literal_iter = None if cfg.feature_cache else iter(self._literal_loader(epoch))
        if self.use_graph and self._graph is None:
            self._capture_graph()
            generator = self._seed_epoch(epoch)  # the warm-up consumed random numbers
        bar = tqdm(
            range(n_steps), desc=f"epoch {epoch}/{cfg.epochs} train", disable=not self.progress, leave=False
        )
        for step in bar:
            idx = batches[step]
            if self._graph is not None:
                self._static_idx.copy_(idx)
                self._static_ow.copy_(offset_weight)
                self._graph.replay()
                result = self._graph_out
            else:
                self.optimizer.zero_grad(set_to_none=True)
                if literal_iter is None:
                    clip_feat, scene_feat = self._features_for(idx, generator)
                else:
                    clip_feat, scene_feat = self.encode(next(literal_iter)[0])
                result = self._step(clip_feat, scene_feat, idx, offset_weight)
            terms[step] = result["terms"]
            preds[step] = result["pred"]
            if step % 25 == 0 or step == n_steps - 1:
                self._check_finite(terms[: step + 1], epoch)
                if self.progress:
                    t = terms[step].tolist()
                    bar.set_postfix(
                        loss=f"{t[0]:.3f}",
                        prov=f"{t[1]:.3f}",
                        cell=f"{t[2]:.3f}",
                        off=f"{t[3]:.3f}",
                        aux=f"{t[4]:.3f}",
                        ow=f"{float(offset_weight):.2f}",
                    )
        flat_idx = batches.reshape(-1).cpu().numpy()
        p = preds.reshape(-1, 5).cpu().numpy()
        frame = predictions_frame(self.data.train.iloc[flat_idx], p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4])
        mean_terms = terms.mean(0).tolist()
        return {f"loss_{k}": v for k, v in zip(LOSS_TERMS, mean_terms, strict=True)} | {
            "offset_weight": float(offset_weight)
        }, frame

    def _check_finite(self, terms: torch.Tensor, epoch: int) -> None:
        bad = ~torch.isfinite(terms).all(1)
        if bool(bad.any()):
            step = int(bad.nonzero()[0])
            values = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_TERMS, terms[step].tolist(), strict=True))
            raise NonFiniteLossError(
                f"non-finite loss in epoch {epoch}, batch {step + 1}: {values}. Training stopped; the last "
                f"good checkpoint is {self.run_dir / 'checkpoints' / f'phase{self.cfg.phase}' / 'last.pt'}. "
                f"Try a lower lr, or check the data of that batch."
            )

    def _literal_loader(self, epoch: int):
        self.sampler.set_epoch(epoch)
        dataset = PhotoDataset(self.data.train, train_transform(self.image_size, self.augment))
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    @torch.no_grad()
    def evaluate(self, epoch: int) -> tuple[dict, pd.DataFrame]:
        """Validation: losses with the true cells, and predictions without any labels."""
        self.model.eval()
        cfg = self.cfg
        n = len(self.data.test)
        sums = torch.zeros(len(LOSS_TERMS), device=self.device)
        columns = {
            k: [] for k in ("province", "lat", "lon", "mix_lat", "mix_lon", "cell_id", "province_prob")
        }
        oracle = []
        offset_weight = torch.tensor(offset_ramp(epoch, cfg.offset_ramp_epochs), device=self.device)
        literal = None
        if not cfg.feature_cache:
            literal = iter(
                torch.utils.data.DataLoader(
                    PhotoDataset(self.data.test, eval_transform(self.image_size)),
                    batch_size=cfg.eval_batch_size,
                    num_workers=cfg.num_workers,
                )
            )
        for start in tqdm(
            range(0, n, cfg.eval_batch_size), desc="validate", disable=not self.progress, leave=False
        ):
            idx = torch.arange(start, min(n, start + cfg.eval_batch_size), device=self.device)
            if literal is None:
                clip_feat, scene_feat = (
                    self.val_features["clip"][0, idx].float(),
                    self.val_features["scene"][0, idx].float(),
                )
            else:
                clip_feat, scene_feat = self.encode(next(literal)[0])
            t = {k: v[idx] for k, v in self.val_tensors.items()}
            with self.amp:
                out = self.model.heads(clip_feat, scene_feat, cell_ids=t["cell"], province_ids=t["province"])
            losses = self.loss_fn(
                out, t["province"], t["cell"], t["lat"], t["lon"], offset_weight=offset_weight
            )
            sums += torch.stack([losses[k].float() for k in LOSS_TERMS]) * len(idx)
            pred = self.model.heads.predict(out, cfg.top_provinces, cfg.top_cells)
            for k in columns:
                columns[k].append(pred[k].float().cpu())
            oracle.append((self.cells.center[out["cell_flat"]] + out["offsets"].float()).cpu())
        c = {k: torch.cat(v).numpy() for k, v in columns.items()}
        o = torch.cat(oracle).numpy()
        frame = predictions_frame(
            self.data.test,
            c["province"],
            c["lat"],
            c["lon"],
            o[:, 0],
            o[:, 1],
            c["mix_lat"],
            c["mix_lon"],
            c["cell_id"],
            c["province_prob"],
        )
        losses = {f"loss_{k}": v for k, v in zip(LOSS_TERMS, (sums / n).tolist(), strict=True)}
        return losses | {"offset_weight": float(offset_weight)}, frame

    # ---------------------------------------------------------------- run
    def checkpoint_payload(self, epoch: int, rows: dict, metrics: dict, best: float) -> dict:
        state = self.model.trainable_state_dict()
        if self.cfg.phase == 0:
            state = {k: v for k, v in state.items() if k.startswith(PHASE0_PREFIXES)}
        return to_plain(
            {
                "phase": self.cfg.phase,
                "epoch": epoch,
                "model_state": {k: v.detach().cpu() for k, v in state.items()},
                "losses": {
                    split: {k: v for k, v in row.items() if k.startswith("loss_")}
                    for split, row in rows.items()
                },
                "province_accuracies": {
                    split: {f"{p.key}_acc": row[f"{p.key}_acc"] for p in prov.PROVINCES}
                    for split, row in rows.items()
                },
                "median_error": metrics["median_error_km"],
                "best_metric": best,
                "config": asdict(self.cfg),
                "head_config": asdict(self.head_config),
                "encoder_config": asdict(self.model.encoders.config),
                "cells": self.cells.signature(),
                "encoder_fingerprint": self.encoder_fingerprint(),
            }
        ) | {"optimizer_state": self.optimizer.state_dict()}

    def run(self) -> dict:
        cfg = self.cfg
        ckpt_dir = self.run_dir / "checkpoints" / f"phase{cfg.phase}"
        csv_path = self.run_dir / "losses.csv"
        start_epoch, best = 1, math.inf
        if self.resume_state is not None:
            _check_resume_config(cfg, self.resume_state["config"])
            self.model.load_state_dict(self.resume_state["model_state"], strict=False)
            verify_fingerprint(
                self.model.encoders, self.resume_state.get("encoder_fingerprint"), str(self.run_dir)
            )
            self.optimizer.load_state_dict(self.resume_state["optimizer_state"])
            start_epoch = int(self.resume_state["epoch"]) + 1
            best = float(self.resume_state["best_metric"])
            self.log.info(f"Resuming {self.run_dir} after epoch {start_epoch - 1} (best so far {best:.3f})")
        elif cfg.phase0_checkpoint and cfg.phase == 1:
            report = load_phase0_weights(self.model, cfg.phase0_checkpoint)
            self.log.info(report.summary())
        _truncate_csv(csv_path, start_epoch - 1)
        write_json(
            self.run_dir / "config.json",
            asdict(cfg)
            | {
                "device": str(self.device),
                "encoder_fingerprint": self.encoder_fingerprint(),
                "province_weights": dict(
                    zip(prov.PROVINCE_NAMES, self.province_weights.round(4).tolist(), strict=True)
                ),
                "batch_composition": dict(
                    zip(prov.PROVINCE_NAMES, self.sampler.counts.tolist(), strict=True)
                ),
            },
        )
        self.log.info(
            f"Phase {cfg.phase} on {self.device}: {len(self.data.train)} train / {len(self.data.test)} "
            f"val photos, {self.cells.num_cells} cells, {'cached features' if cfg.feature_cache else 'seed-literal'}"
            f"{' + CUDA graph' if self.use_graph else ''}"
        )
        if cfg.feature_cache:
            self.prepare_features()
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_losses, train_frame = self.train_epoch(epoch)
            val_losses, val_frame = self.evaluate(epoch)
            seconds = time.perf_counter() - t0
            rows = {
                "train": {
                    "epoch": epoch,
                    "split": "train",
                    **train_losses,
                    **prediction_metrics(train_frame),
                    "seconds": seconds,
                },
                "val": {
                    "epoch": epoch,
                    "split": "val",
                    **val_losses,
                    **prediction_metrics(val_frame),
                    "seconds": seconds,
                },
            }
            self._log_epoch(epoch, rows)
            # selection metric: phase 1 the end-to-end val median; phase 0 the balanced province error
            metric = (
                rows["val"]["median_error_km"]
                if cfg.phase == 1
                else 100 - rows["val"]["province_balanced_acc"]
            )
            improved = metric < best
            best = min(best, metric)
            _append_csv(
                csv_path, [rows["train"], rows["val"]]
            )  # before last.pt: a kill between is undone on resume
            val_frame.to_csv(self.run_dir / "val_predictions.csv", index=False)
            payload = self.checkpoint_payload(epoch, rows, rows["val"], best)
            atomic_torch_save(payload, ckpt_dir / f"phase{cfg.phase}_epoch_{epoch}.pt")
            if improved:
                name = "province_best.pt" if cfg.phase == 0 else "phase1_best.pt"
                atomic_torch_save(payload, ckpt_dir / name)
                val_frame.to_csv(self.run_dir / "val_predictions_best.csv", index=False)
                self.log.info(f"   new best ({metric:.3f}) -> {ckpt_dir / name}")
            atomic_torch_save(payload, ckpt_dir / "last.pt")
        return {"run_dir": str(self.run_dir), "best_metric": best}

    def _log_epoch(self, epoch: int, rows: dict) -> None:
        tr, va = rows["train"], rows["val"]

        def losses(r):
            return (
                f"{r['loss_total']:.4f} (prov: {r['loss_province']:.4f}, cell: {r['loss_geocell']:.4f}, "
                f"off: {r['loss_offset']:.4f}, aux: {r['loss_aux']:.4f})"
            )

        def errors(r):
            return (
                f"median={r['median_error_km']:.2f}km, mean={r['mean_error_km']:.2f}km, "
                f"p90={r['p90_error_km']:.2f}km"
            )

        def accs(r):
            return ", ".join(f"{p.key}={r[f'{p.key}_acc']:.1f}" for p in prov.PROVINCES)

        self.log.info(
            f"Epoch {epoch}/{self.cfg.epochs}:\n"
            f"   Train Loss: {losses(tr)}\n"
            f"   Val Loss:   {losses(va)}\n"
            f"   Train Error: {errors(tr)}\n"
            f"   Val Error:   {errors(va)}\n"
            f"   Val oracle-cell error (true cell + offset, not a geolocation result): "
            f"median={va['oracle_median_error_km']:.2f}km\n"
            f"   Val within 25km={va['acc_25km']:.1f}%, 200km={va['acc_200km']:.1f}%, GeoScore={va['geoscore']:.0f}\n"
            f"   Province acc (%) train: {accs(tr)}\n"
            f"   Province acc (%) val:   {accs(va)}\n"
            f"   offset weight: {va['offset_weight']:.2f}, {va['seconds']:.1f}s"
        )


def _append_csv(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
        f.flush()


def _truncate_csv(path: Path, last_epoch: int) -> None:
    """Keep only rows of finished epochs (<= last_epoch): a resumed run neither duplicates nor loses rows."""
    if not path.exists():
        return
    if last_epoch == 0:
        path.unlink()
        return
    frame = pd.read_csv(path)
    kept = frame[frame["epoch"] <= last_epoch]
    if len(kept) != len(frame):
        atomic_write_text(path, kept.to_csv(index=False, float_format="%.6f"))


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    return Trainer(cfg, progress=progress).run()


def load_run_config(run_dir: str | Path) -> TrainConfig:
    values = json.loads((Path(run_dir) / "config.json").read_text())
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


__all__ = [
    "TrainConfig",
    "Trainer",
    "train",
    "NonFiniteLossError",
    "select_device",
    "load_run_config",
]
