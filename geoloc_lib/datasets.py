"""Torch datasets over a validated split. Images are decoded with PIL; a broken file names its row."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from PIL import Image


class ImageLoadError(RuntimeError):
    pass


def open_rgb(path: str, row_id: str = "?") -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(
            f"image of row id={row_id!r} at {path} cannot be decoded ({type(err).__name__}: {err}); replace "
            f"or remove it (the data check image_check='decode' finds every such file before training)"
        ) from err


def view_seed(seed: int, view: int, index: int) -> int:
    """Stable per-(seed, view, photo) seed, the same in every process and on every run."""
    return (
        int.from_bytes(hashlib.blake2b(f"{seed}/{view}/{index}".encode(), digest_size=8).digest(), "little")
        >> 1
    )


class PhotoDataset(torch.utils.data.Dataset):
    """(image [3, H, W] in [0, 1], row index) for a split.

    With `views` and `seed` set, item k*N + i is view k of photo i, and its random augmentation is
    seeded from (seed, k, i): the same view is reproduced exactly, which lets the cached-feature path
    and the image path be compared on identical inputs.
    """

    def __init__(self, split: pd.DataFrame, transform, views: int = 1, seed: int | None = None):
        self.paths = split["image_path"].tolist()
        self.ids = split["id"].astype(str).tolist()
        self.transform = transform
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return self.views * len(self.paths)

    def load(self, index: int, view: int = 0) -> torch.Tensor:
        image = open_rgb(self.paths[index], self.ids[index])
        if self.seed is None:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, view, index))
            return self.transform(image)

    def __getitem__(self, item: int):
        view, index = divmod(item, len(self.paths))
        return self.load(index, view), index


def label_tensors(split: pd.DataFrame, device: torch.device) -> dict[str, torch.Tensor]:
    """The labels of every row of a split on `device`: province, cell [N] int64; lat, lon [N] fp32."""
    return {
        # np.array copies: pandas can hand out read-only views, which torch warns about
        "province": torch.tensor(np.array(split["province_id"], np.int64), device=device),
        "cell": torch.tensor(np.array(split["cell_id"], np.int64), device=device),
        "lat": torch.tensor(np.array(split["latitude"], np.float32), device=device),
        "lon": torch.tensor(np.array(split["longitude"], np.float32), device=device),
    }
