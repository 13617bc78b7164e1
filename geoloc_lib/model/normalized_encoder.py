"""`NormalizedEncoder`: one image encoder (a CLIP tower or a scene CNN) that takes [B, 3, H, W] in [0, 1],
resizes to its own input size, applies its own normalisation, and is frozen, trained whole, or trained only in
its top (`unfreeze_top`, see model/encoder_split.py)."""

from __future__ import annotations

import torch
from torch import nn

from geoloc_lib.model.encoder_split import BodySplit, is_under, split_body


class NormalizedEncoder(nn.Module):
    """Frozen means: requires_grad off, eval mode kept even under `.train()`, and no autograd graph built.
    Partially unfrozen (`unfreeze_top`): the same for everything but the top, which trains (its batch norm
    in train mode under `.train()`)."""

    def __init__(self, body: nn.Module, mean, std, out_dim: int, input_size: int = 0):
        super().__init__()
        self.body = body
        self.input_size = input_size  # images of another size are resized to it first (0: any size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.out_dim = out_dim
        self.frozen = False
        self.split: BodySplit | None = None  # set by `unfreeze_top`
        self.top_count = 0  # blocks or stages in the trained top (0: none)
        self.top_bn_statistics = False  # whether the top's batch norm updates its statistics in train mode

    def freeze(self) -> NormalizedEncoder:
        self.frozen = True
        self.body.requires_grad_(False)
        self.body.eval()
        return self

    def unfreeze_top(self, count: int, bn_statistics: bool = False) -> NormalizedEncoder:
        """Freeze everything, then train the last `count` blocks / stages (ValueError when it has fewer). Their
        batch norm trains its scale and shift; with `bn_statistics` it also learns its running statistics
        (off by default: the heads were trained on features normalised with the frozen statistics, and moving
        them shifts every feature at once)."""
        split = split_body(self.body, count)
        self.freeze()
        self.frozen, self.split, self.top_count = False, split, count
        self.top_bn_statistics = bn_statistics
        for name, parameter in self.body.named_parameters():
            if is_under(name, split.trained):
                parameter.requires_grad_(True)
        return self.train(self.training)

    def trains(self, key: str) -> bool:
        """Whether a state-dict key of this encoder ("body.layer4.0.conv1.weight") is changed by training."""
        if self.frozen:
            return False
        return self.split is None or is_under(key.removeprefix("body."), self.split.trained)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen or self.split is not None:
            self.body.eval()
        if self.split is not None:
            for name, module in self.body.named_modules():
                if name in self.split.trained:
                    module.train(mode)
            if (
                not self.top_bn_statistics
            ):  # batch norm normalises with its running statistics, kept as they are
                for module in self.body.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_size and images.shape[-1] != self.input_size:
            size = (self.input_size, self.input_size)
            images = nn.functional.interpolate(
                images, size, mode="bilinear", antialias=True, align_corners=False
            )
        return (images - self.mean) / self.std  # [B, 3, H, W]

    @torch.no_grad()
    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """What the frozen part hands the trained top; a frozen encoder's whole output."""
        x = self.normalise(images)
        return self.split.prefix(x) if self.split is not None else self.body(x)

    def top(self, hidden: torch.Tensor) -> torch.Tensor:
        """The trained top on a prefix's output -> [B, D]; the identity for a frozen encoder."""
        return self.split.top(hidden) if self.split is not None else hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen or self.split is not None:
            return self.top(self.prefix(images))  # [B, D]
        return self.body(self.normalise(images))  # [B, D]
