"""Partial unfreezing: an encoder's body cut into a frozen prefix and a trainable top (Phase 2).

`split_body(body, count)` cuts after the first L - count blocks of a CLIP ViT (the top keeps the last `count`
blocks, the final norm and the projection), before the last `count` stages of a ResNet (`layer4` for 1), or
before the last `count` stages of an EfficientNet-Lite (with its head convolution). `top(prefix(x))` is the
body's own forward pass, computed the same way, so a cached prefix stands in for the images exactly.

What the prefix hands on: ViT tokens [B, T, W] entering the first trainable block; a feature map
[B, C, H, W] entering the first trainable CNN stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn


@dataclass(frozen=True)
class BodySplit:
    prefix: Callable[[torch.Tensor], torch.Tensor]  # normalised images -> what enters the trained part
    top: Callable[[torch.Tensor], torch.Tensor]  # -> features [B, D]
    trained: tuple[str, ...]  # names inside the body of the modules and parameters that train


def _check_count(count: int, available: int, what: str) -> None:
    if not 1 <= count <= available:
        raise ValueError(f"{what}: asked to unfreeze {count}, the encoder has {available}")


def _clip_split(visual: nn.Module, blocks: int) -> BodySplit:
    """open_clip's VisionTransformer: the forward pass of `VisionTransformer.forward`, cut between blocks."""
    resblocks = visual.transformer.resblocks
    _check_count(blocks, len(resblocks), "unfreeze_clip_blocks (CLIP transformer blocks)")
    cut = len(resblocks) - blocks
    batch_first = getattr(visual.transformer, "batch_first", True)

    def run(tokens: torch.Tensor, chosen) -> torch.Tensor:
        x = tokens if batch_first else tokens.transpose(0, 1)
        for block in chosen:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def prefix(images: torch.Tensor) -> torch.Tensor:
        return run(visual._embeds(images), resblocks[:cut])  # [B, T, W]

    def top(tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = visual._pool(run(tokens, resblocks[cut:]))  # [B, W]
        return pooled @ visual.proj if visual.proj is not None else pooled  # [B, D]

    trained = (*(f"transformer.resblocks.{i}" for i in range(cut, len(resblocks))), "ln_post", "proj")
    return BodySplit(prefix, top, trained)


RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _resnet_split(net: torchvision.models.ResNet, stages: int) -> BodySplit:
    _check_count(stages, len(RESNET_STAGES), "unfreeze_scene_stages (ResNet stages)")
    frozen, trained = (
        RESNET_STAGES[: len(RESNET_STAGES) - stages],
        RESNET_STAGES[len(RESNET_STAGES) - stages :],
    )

    def prefix(images: torch.Tensor) -> torch.Tensor:
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        for name in frozen:
            x = getattr(net, name)(x)
        return x  # [B, C, H, W]

    def top(x: torch.Tensor) -> torch.Tensor:
        for name in trained:
            x = getattr(net, name)(x)
        return net.fc(torch.flatten(net.avgpool(x), 1))  # fc is the identity: [B, D]

    return BodySplit(prefix, top, trained)


def _lite_split(features: nn.Module, stages: int) -> BodySplit:
    """EfficientNet-Lite (`LiteFeatures`): a stage is the run of blocks with one output width."""
    net = features.net
    widths = [block._block_args.output_filters for block in net._blocks]
    starts = [i for i, w in enumerate(widths) if i == 0 or w != widths[i - 1]]  # first block of each stage
    _check_count(stages, len(starts), "unfreeze_scene_stages (EfficientNet-Lite stages)")
    cut = starts[len(starts) - stages]
    rate = net._global_params.drop_connect_rate

    def run(x: torch.Tensor, indices) -> torch.Tensor:
        for i in indices:  # drop connect scaled by depth, as `extract_features` does
            x = net._blocks[i](x, drop_connect_rate=rate * i / len(net._blocks) if rate else rate)
        return x

    def prefix(images: torch.Tensor) -> torch.Tensor:
        return run(net._swish(net._bn0(net._conv_stem(images))), range(cut))  # [B, C, H, W]

    def top(x: torch.Tensor) -> torch.Tensor:
        x = run(x, range(cut, len(net._blocks)))
        return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))  # [B, 1280]

    trained = (*(f"net._blocks.{i}" for i in range(cut, len(net._blocks))), "net._conv_head", "net._bn1")
    return BodySplit(prefix, top, trained)


def split_body(body: nn.Module, count: int) -> BodySplit:
    """The split of a CLIP tower, a ResNet or an EfficientNet-Lite body with its last `count` parts trained."""
    if hasattr(body, "transformer") and hasattr(body, "_embeds"):
        return _clip_split(body, count)
    if isinstance(body, torchvision.models.ResNet):
        return _resnet_split(body, count)
    if hasattr(body, "net") and hasattr(body.net, "_blocks"):
        return _lite_split(body, count)
    raise ValueError(f"{type(body).__name__} cannot be partially unfrozen (ViT, ResNet or EfficientNet-Lite)")


def is_under(key: str, names: tuple[str, ...]) -> bool:
    """Whether a state-dict key (inside the body) belongs to one of the named modules or parameters."""
    return any(key == name or key.startswith(name + ".") for name in names)
