"""Where the heads' inputs come from: cached encoder features, or images through the encoders.

Both sources hand out batches the same way, as `(idx, clip, scene)`: `idx` [B] the rows of the split
(on the device), `clip` [B, Dc] and `scene` [B, Ds] fp32 encoder outputs. So the epoch loop and the
evaluation have no branch on the path, and they use the rows each batch reports instead of assuming
the order in which it was asked for.

- `CachedFeatures` (frozen encoders): K augmented views of every training photo and the clean view
  of every evaluation photo are encoded once (see `data/feature_cache.py`); a training step picks one random
  view per photo.
- `CachedPrefixes` (Phase 2, the encoders' tops trained): the same caching of what the frozen prefixes hand
  the trained tops; every batch then goes through the tops, with gradients when training.
- `EncodedImages`: every batch is decoded, augmented and encoded when it is needed. This is the only
  path when an encoder is trained, and the reference the cached path is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from geoloc_lib.base.devices import autocast_for
from geoloc_lib.data.cache_spec import CacheSpec
from geoloc_lib.data.feature_cache import augmented_features, clean_features
from geoloc_lib.data.photos import PhotoDataset
from geoloc_lib.data.transforms import AugmentConfig, eval_transform, train_transform

if TYPE_CHECKING:  # the data layer is handed the encoders; it never builds them
    from geoloc_lib.model.encoders import DualEncoder

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # idx [B], clip [B, Dc], scene [B, Ds]


def _chunks(n: int, size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size), device=device)


class CachedFeatures:
    """Encoder outputs held on the device: train {"clip": [V, N, Dc], "scene": [V, N, Ds]}, eval [M, D]."""

    def __init__(
        self, train: dict[str, torch.Tensor], evaluation: dict[str, torch.Tensor], eval_batch_size: int
    ):
        self.train = train
        self.evaluation = evaluation
        self.eval_batch_size = eval_batch_size

    @classmethod
    def prepare(
        cls,
        spec: CacheSpec,
        encoders: DualEncoder,
        fingerprint: str,
        train_split: pd.DataFrame,
        eval_split: pd.DataFrame,
        augment: AugmentConfig,
        device: torch.device,
        log: Callable[[str], None] = print,
    ) -> CachedFeatures:
        """Read the features from `CacheSpec.cache_dir`, extracting whatever is not cached yet."""
        train = augmented_features(spec, encoders, fingerprint, train_split, augment, device, log)
        evaluation = clean_features(spec, eval_split, encoders, fingerprint, device, log)
        train = {k: v.to(device) for k, v in train.items()}  # [V, N, D]
        evaluation = {k: v.to(device) for k, v in evaluation.items()}  # [M, D]
        return cls(train, evaluation, spec.batch_size)

    @property
    def views(self) -> int:
        return self.train["clip"].shape[0]

    def gather(
        self, idx: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One random view per photo: idx [B] -> clip [B, Dc], scene [B, Ds] in fp32.

        With `generator` None the view is drawn from the default generator of the device, which is
        what a captured CUDA graph can replay.
        """
        return _pick_views(self.train, idx, generator)

    def train_batches(self, batches: torch.Tensor, generator: torch.Generator | None) -> Iterator[Batch]:
        for idx in batches:  # batches [S, B] on the device
            yield idx, *self.gather(idx, generator)

    def eval_batches(self) -> Iterator[Batch]:
        n = self.evaluation["clip"].shape[0]
        for idx in _chunks(n, self.eval_batch_size, self.evaluation["clip"].device):
            yield idx, self.evaluation["clip"][idx].float(), self.evaluation["scene"][idx].float()


def _pick_views(
    train: dict[str, torch.Tensor], idx: torch.Tensor, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view per photo of the cached [V, N, ...] tensors, in fp32: idx [B] -> [B, ...], [B, ...]."""
    view = torch.randint(train["clip"].shape[0], idx.shape, device=idx.device, generator=generator)  # [B]
    return train["clip"][view, idx].float(), train["scene"][view, idx].float()


class CachedPrefixes:
    """The frozen prefixes' outputs held on the device: train {"clip": [V, N, T, W], "scene": [V, N, C, H, W]},
    eval [M, ...]; each batch is finished by the encoders' trained tops into (idx, clip [B, Dc], scene [B, Ds]).

    With augmentation off this is exactly the image path (the prefix sees the same clean photo every epoch);
    with it on, K cached views stand in for fresh augmentation, as in `CachedFeatures`.
    """

    def __init__(self, train, evaluation, eval_batch_size: int, encoders: DualEncoder, device: torch.device):
        self.train = train
        self.evaluation = evaluation
        self.eval_batch_size = eval_batch_size
        self.encoders = encoders
        self.device = device

    @classmethod
    def prepare(
        cls, spec: CacheSpec, encoders: DualEncoder, fingerprint: str, train_split: pd.DataFrame,
        eval_split: pd.DataFrame, augment: AugmentConfig, device: torch.device, log: Callable[[str], None] = print,
    ) -> CachedPrefixes:  # fmt: skip
        """`fingerprint` is of the frozen parts and of where the tops begin (`fingerprint(frozen_only=True)`)."""
        train = augmented_features(
            spec, encoders, fingerprint, train_split, augment, device, log, prefix=True
        )
        evaluation = clean_features(spec, eval_split, encoders, fingerprint, device, log, prefix=True)
        train = {k: v.to(device) for k, v in train.items()}  # [V, N, ...]
        evaluation = {k: v.to(device) for k, v in evaluation.items()}  # [M, ...]
        return cls(train, evaluation, spec.batch_size, encoders, device)

    def _tops(self, clip: torch.Tensor, scene: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast_for(self.device):
            c, s = self.encoders.top(clip, scene)
        return c.float(), s.float()  # [B, Dc], [B, Ds]

    def train_batches(self, batches: torch.Tensor, generator: torch.Generator | None) -> Iterator[Batch]:
        self.encoders.train()  # the tops train (their batch norm as configured); the frozen parts stay in eval
        for idx in batches:  # batches [S, B] on the device
            yield idx, *self._tops(*_pick_views(self.train, idx, generator))

    def eval_batches(self) -> Iterator[Batch]:
        self.encoders.eval()
        n = self.evaluation["clip"].shape[0]
        for idx in _chunks(n, self.eval_batch_size, self.device):
            with torch.no_grad():  # not around the yield: the caller's code would run without gradients too
                clip, scene = self._tops(
                    self.evaluation["clip"][idx].float(), self.evaluation["scene"][idx].float()
                )
            yield idx, clip, scene


class EncodedImages:
    """Photos decoded (in `num_workers` processes), transformed and encoded batch by batch."""

    def __init__(
        self,
        encoders: DualEncoder,
        device: torch.device,
        eval_split: pd.DataFrame,
        *,
        eval_batch_size: int,
        num_workers: int,
        train_split: pd.DataFrame | None = None,
        augment: AugmentConfig | None = None,
        forward=None,
    ):
        self.encoders = encoders
        self.forward = forward or encoders  # what training calls: the encoders, or their DDP wrapper
        self.device = device
        self.eval_split = eval_split
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_split = train_split
        self.augment = augment or AugmentConfig()

    def encode(self, images: torch.Tensor, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, S, S] in [0, 1] -> fp32 clip [B, Dc], scene [B, Ds]."""
        with autocast_for(self.device):
            clip, scene = (self.forward if training else self.encoders)(
                images.to(self.device, non_blocking=True)
            )
        return clip.float(), scene.float()

    def _loader(self, dataset: PhotoDataset, **batching) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset, num_workers=self.num_workers, pin_memory=self.device.type == "cuda", **batching
        )

    def _encoded(self, loader: torch.utils.data.DataLoader, training: bool) -> Iterator[Batch]:
        # the loop below holds the only reference to the worker iterator, so the workers end with it
        for images, index in loader:
            yield index.to(self.device), *self.encode(images, training)

    def train_batches(
        self, batches: torch.Tensor, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Augmented training photos of each row of `batches` [S, B]; augmentation draws from torch's RNG."""
        if self.train_split is None:
            raise ValueError("this EncodedImages has no training split")
        dataset = PhotoDataset(self.train_split, train_transform(self.encoders.image_size, self.augment))
        batch_lists = np.asarray(batches.cpu()).tolist()
        self.encoders.train()  # a trained encoder's batch norm learns; frozen ones stay in eval mode
        yield from self._encoded(self._loader(dataset, batch_sampler=batch_lists), training=True)

    def eval_batches(self) -> Iterator[Batch]:
        dataset = PhotoDataset(self.eval_split, eval_transform(self.encoders.image_size))
        self.encoders.eval()
        yield from self._encoded(self._loader(dataset, batch_size=self.eval_batch_size), training=False)
