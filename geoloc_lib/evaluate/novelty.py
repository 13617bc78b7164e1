"""Photos unlike every training photo: the distance to the nearest training photo in the space of the frozen
encoders' features, each standardised with the training photos' mean and spread, against a threshold fixed on
validation.

The validation photos come from places the model never trained on (whole location blocks), so their
distances show how far a genuine new photo of the same world lies. A photo farther than the `quantile`-th
quantile of those distances (99 % by default) is flagged `out_of_domain`: a chart, a flat colour, or a photo
from another country is then reported instead of being silently placed in Pakistan. About 1 - quantile of
genuine photos are flagged too; that share is the price of the threshold.

Why this space: the encoders' standardised features kept the strangers apart on the demo (a chart, a flat
colour and smooth noise all flagged, 0 of 300 test photos), where the cosine distance between the heads' fused
features, which training shapes towards telling places apart, let a flat colour through.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from geoloc_lib.base.atomic_files import atomic_torch_save, load_checkpoint

NOVELTY_QUANTILE = 0.99
MAX_REFERENCE_PHOTOS = 20_000  # a seeded sample of the training photos keeps the index small on huge data
CHUNK = 4096


def _joined(clip: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
    return torch.cat([clip.float(), scene.float()], dim=-1)  # [N, Dc + Ds]


@dataclass
class NoveltyIndex:
    reference: torch.Tensor  # [M, Dc + Ds] standardised features of (a sample of) the training photos
    mean: torch.Tensor  # [Dc + Ds] of the training photos' features
    std: torch.Tensor  # [Dc + Ds]
    threshold: float  # distance beyond which a photo is out of domain
    quantile: float  # of the validation photos' distances that the threshold is

    @torch.no_grad()
    def distance(self, clip: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """[B] Euclidean distance of encoder features clip [B, Dc], scene [B, Ds] to the nearest reference."""
        device = clip.device
        query = (_joined(clip, scene) - self.mean.to(device)) / self.std.to(device)  # [B, D]
        reference = self.reference.to(device, torch.float32)
        nearest = [
            torch.cdist(query, reference[i : i + CHUNK]).amin(-1) for i in range(0, len(reference), CHUNK)
        ]
        return torch.stack(nearest).amin(0)

    def save(self, path: os.PathLike) -> None:
        payload = {
            "reference": self.reference.half().cpu(),
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "threshold": self.threshold,
            "quantile": self.quantile,
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: os.PathLike) -> NoveltyIndex:
        p = load_checkpoint(path)
        return cls(p["reference"], p["mean"], p["std"], float(p["threshold"]), float(p["quantile"]))


def fit_novelty(
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    quantile: float = NOVELTY_QUANTILE,
    seed: int = 0,
) -> NoveltyIndex:
    """The index of the training photos' clean features {"clip": [N, Dc], "scene": [N, Ds]}, with its threshold
    at `quantile` of the validation photos' distances."""
    features = _joined(train["clip"], train["scene"])
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    if len(features) > MAX_REFERENCE_PHOTOS:
        keep = np.random.default_rng(seed).choice(len(features), MAX_REFERENCE_PHOTOS, replace=False)
        features = features[torch.as_tensor(np.sort(keep))]
    index = NoveltyIndex((features - mean) / std, mean, std, threshold=float("inf"), quantile=quantile)
    distances = index.distance(val["clip"], val["scene"]).cpu().numpy()
    index.threshold = float(np.quantile(distances, quantile))
    return index
