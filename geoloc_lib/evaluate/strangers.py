"""Generated strangers: images from outside the training world, made without any real outside photo, on which
the out-of-domain rule is chosen (`evaluate/novelty.py`).

Three kinds are validation photos changed so that what a place looks like is broken while the photo's
statistics stay photographic: `recoloured` (hue turned by a third to two thirds of the circle, saturation
raised), `re-textured` (the photo cut into a 4 x 4 grid and the tiles shuffled) and `inverted` (the colour
negative). The fourth, `procedural`, is drawn from nothing: smooth noise under a few colour gradients. Real
photos from elsewhere are deliberately not among them: they are what the rule is judged on, never what it is
fitted to.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from geoloc_lib.data.demo_data import GROUND, render_scene
from geoloc_lib.data.photos import open_rgb
from geoloc_lib.data.transforms import eval_transform
from geoloc_lib.geo.sphere import PAKISTAN_BBOX

STRANGER_KINDS = ("recoloured", "re-textured", "inverted", "procedural")
STRANGERS_PER_KIND = 128  # validation photos changed per kind (fewer when validation has fewer)
GRID = 4  # re-textured: tiles per side
FOREIGN_COLOUR_DISTANCE = (
    0.3  # a street stranger's ground colours lie at least this far (RGB, 0..1) from the demo's
)


def recoloured(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    hsv = np.asarray(image.convert("HSV"), np.int32).copy()  # [H, W, 3], each 0..255
    hsv[..., 0] = (hsv[..., 0] + int(rng.uniform(85, 170))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.6 + 40, 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def retextured(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image)
    h, w = (pixels.shape[0] // GRID) * GRID, (pixels.shape[1] // GRID) * GRID
    tiles = [
        pixels[r * h // GRID : (r + 1) * h // GRID, c * w // GRID : (c + 1) * w // GRID]
        for r in range(GRID)
        for c in range(GRID)
    ]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[r * GRID + c]] for c in range(GRID)], axis=1) for r in range(GRID)]
    return Image.fromarray(np.concatenate(rows, axis=0))


def procedural(size: int, rng: np.random.Generator) -> Image.Image:
    """Smooth noise (bicubically enlarged from 6-16 px) under two linear colour gradients."""
    small = int(rng.integers(6, 17))
    noise = Image.fromarray(rng.integers(0, 256, (small, small, 3), dtype=np.uint8)).resize(
        (size, size), Image.BICUBIC
    )
    y, x = np.mgrid[0:size, 0:size] / size  # [S, S] each
    gradient = np.zeros((size, size, 3))
    for _ in range(2):
        direction = rng.uniform(-1, 1, 2)
        gradient += (direction[0] * x + direction[1] * y)[..., None] * rng.uniform(0, 255, 3)
    mixed = (
        0.5 * np.asarray(noise, float) + 0.5 * (gradient - gradient.min()) / max(np.ptp(gradient), 1e-6) * 255
    )
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def stranger_images(
    image_paths, seed: int = 0, per_kind: int = STRANGERS_PER_KIND
) -> dict[str, list[Image.Image]]:
    """{kind: images} for every kind of STRANGER_KINDS, from up to `per_kind` of the given validation photos."""
    rng = np.random.default_rng(seed)
    paths = list(image_paths)
    chosen = [paths[i] for i in rng.permutation(len(paths))[:per_kind]]
    photos = [open_rgb(p) for p in chosen]
    size = max(photos[0].size) if photos else 96
    return {
        "recoloured": [recoloured(p, rng) for p in photos],
        "re-textured": [retextured(p, rng) for p in photos],
        "inverted": [ImageOps.invert(p) for p in photos],
        "procedural": [procedural(size, rng) for _ in range(max(len(photos), 1))],
    }


def street_strangers(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """`n` photos with the demo's street layout (ground, sky, horizon, road, buildings, camera and noise) of
    another world: ground colours no province has, at places outside Pakistan. Real street photos from elsewhere
    share this layout, which brings them close to the training photos in feature space; this kind is never
    among the rule's choice (STRANGER_KINDS), only a check on it."""
    rng = np.random.default_rng(seed)
    demo_colours = np.array([c for pair in GROUND.values() for c in pair])  # [14, 3]
    photos = []
    while len(photos) < n:
        ground = rng.uniform(0, 1, (2, 3))  # [2, RGB]
        if np.linalg.norm(ground[:, None] - demo_colours[None], axis=-1).min() < FOREIGN_COLOUR_DISTANCE:
            continue  # too near a colour the demo's provinces have
        lat, lon = rng.uniform(-40, 60), rng.uniform(-120, 150)
        box = PAKISTAN_BBOX
        if box["lat_min"] <= lat <= box["lat_max"] and box["lon_min"] <= lon <= box["lon_max"]:
            continue
        population = 10 ** rng.uniform(2, 6)  # a village to a city, as the demo's places
        pixels = render_scene(lat, lon, int(rng.integers(0, len(GROUND))), population, size, rng,
                              ground=tuple(map(tuple, ground)))  # fmt: skip
        photos.append(Image.fromarray(pixels))
    return photos


@torch.no_grad()
def encode_images(images: list[Image.Image], encoders, device: torch.device, batch_size: int = 64) -> dict:
    """{"clip": [N, Dc], "scene": [N, Ds]} the frozen encoders' features of PIL images, on the CPU."""
    transform = eval_transform(encoders.image_size)
    was_training = encoders.training
    encoders.eval()
    clip, scene = [], []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([transform(x) for x in images[i : i + batch_size]]).to(device)  # [B, 3, H, W]
        c, s = encoders(batch)  # [B, Dc], [B, Ds]
        clip.append(c.float().cpu())
        scene.append(s.float().cpu())
    encoders.train(was_training)
    return {"clip": torch.cat(clip), "scene": torch.cat(scene)}
