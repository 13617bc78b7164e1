"""Geography-safe image transforms (torchvision transforms v2).

Train: RandomResizedCrop, ColorJitter, random gamma, Gaussian noise. No horizontal flips, large
rotations or perspective warps: they would move the sun, mirror road layouts and scripts, and so
destroy location cues. Validation: resize only. Both return float tensors in [0, 1]; each encoder
applies its own mean/std normalisation (see `encoders.NormalizedEncoder`), once, in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn log-uniformly from [1/max_gamma, max_gamma] (torchvision has
    only the deterministic `adjust_gamma`)."""

    def __init__(self, max_gamma: float = 1.3):
        super().__init__()
        self.log_max = float(torch.log(torch.tensor(max_gamma)))

    def make_params(self, flat_inputs):
        gamma = torch.empty(1).uniform_(-self.log_max, self.log_max).exp().item()
        return {"gamma": gamma}

    def transform(self, inpt, params):
        if isinstance(inpt, torch.Tensor) and inpt.is_floating_point():
            return v2.functional.adjust_gamma(inpt, params["gamma"])
        return inpt


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale_min: float = 0.6
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2
    hue: float = 0.02
    max_gamma: float = 1.3
    noise_sigma: float = 0.03

    def describe(self) -> dict:
        return asdict(self)


# Named augmentation strengths. "mild" follows GEOPAK's values (crop 0.95-1, brightness and contrast
# 0.2, gamma 0.8-1.25, noise 0.01); "strong" is wider; "none" only resizes the whole photo.
AUGMENT_PRESETS = {
    "strong": AugmentConfig(),
    "mild": AugmentConfig(
        crop_scale_min=0.95, brightness=0.2, contrast=0.2, saturation=0.2, max_gamma=1.25, noise_sigma=0.01
    ),
    "none": AugmentConfig(
        crop_scale_min=1.0, brightness=0, contrast=0, saturation=0, hue=0, max_gamma=1.0, noise_sigma=0
    ),
}


def train_transform(image_size: int, cfg: AugmentConfig = AugmentConfig()) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, scale=(cfg.crop_scale_min, 1.0), antialias=True),
            v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
            v2.ToDtype(torch.float32, scale=True),
            RandomGamma(cfg.max_gamma),
            v2.GaussianNoise(sigma=cfg.noise_sigma, clip=True),
        ]
    )


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
