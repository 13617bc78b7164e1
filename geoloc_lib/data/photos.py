"""Torch datasets over a validated split. Images are decoded with PIL; a broken file names its row."""

from __future__ import annotations

import hashlib
import io
import os
import warnings

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image, ImageOps, UnidentifiedImageError

THUMBNAIL_PX = 64  # the decode check reads JPEGs at about this size


class ImageLoadError(RuntimeError):
    pass


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows the photo: its EXIF orientation applied, and 16- or 32-bit integer
    greyscale scaled to 8 bits (Pillow's own conversion clips such pixels, so a 16-bit PNG came out white).
    Floating-point images are refused: their range is unknown."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)  # [H, W]
        sixteen_bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
        values = np.clip(values / 257.0 if sixteen_bit else values, 0, 255)
        image = Image.fromarray(values.round().astype(np.uint8), "L")
    elif image.mode == "F":
        raise ValueError("a 32-bit floating-point image has no fixed range; save it as an 8-bit JPEG or PNG")
    return image.convert("RGB")


def open_rgb(path: str, row_id: str = "?") -> Image.Image:
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(
            f"image of row id={row_id!r} at {path} cannot be decoded ({type(err).__name__}: {err}); replace "
            f"or remove it (the data check image_check='decode' finds every such file before training)"
        ) from err


def image_problem(image_path: str, size: int = THUMBNAIL_PX) -> str | None:
    """None if the image opens and decodes (at thumbnail size where the format allows), else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # too large to decode safely
            with Image.open(image_path) as image:
                image.draft("RGB", (size, size))  # JPEG decodes at 1/2 to 1/8 scale: a fast full read
                to_rgb(image).load()  # the conversion training uses, so a refused mode is found here
        return None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        return f"{image_path}: too many pixels ({err})"
    except (OSError, SyntaxError, ValueError) as err:
        return f"{image_path}: {type(err).__name__}: {err}"


class UnreadablePhoto(ValueError):
    """A photo's bytes that cannot be decoded; `kind` is one of NOT_AN_IMAGE, DAMAGED, TOO_MANY_PIXELS."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


NOT_AN_IMAGE, DAMAGED, TOO_MANY_PIXELS = "not an image", "damaged", "too many pixels"


def decode_photo(data: bytes) -> Image.Image:
    """The photo whose file is `data`, fully decoded as 8-bit RGB (a photo sent to the server, never written
    to disk); an UnreadablePhoto says in a few words why it cannot be: not an image, truncated or damaged, or
    too many pixels to decode safely (Pillow's decompression-bomb limit)."""
    try:
        # the filter is the process's: two threads at once may leave it set to "error", which is only stricter
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                rgb = to_rgb(image)
                rgb.load()
                return rgb
    except UnidentifiedImageError:
        raise UnreadablePhoto(
            NOT_AN_IMAGE, "not an image (no format Pillow reads: JPEG, PNG, WebP, ...)"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UnreadablePhoto(TOO_MANY_PIXELS, f"too many pixels to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadablePhoto(
            DAMAGED, f"a damaged or truncated image ({type(err).__name__}: {err})"
        ) from None


def photo_digest(names: pd.Series, paths: pd.Series) -> str:
    """A hash of each photo's name with its file's size and modification time (whole seconds, which survive
    a copy that keeps times): it changes when a photo is replaced, without reading any pixels."""
    digest = hashlib.sha256()
    for name, path in zip(names, paths, strict=True):
        stat = os.stat(path)
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns // 1_000_000_000}\n".encode())
    return digest.hexdigest()[:20]


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
        self.split = split
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


JPEG_MAGIC = b"\xff\xd8\xff"
# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they remain the documented way
# to decode JPEGs on a GPU with this torchvision, so the notice is kept out of every batch's output
warnings.filterwarnings(
    "ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning
)


def all_jpeg(paths) -> bool:
    """Whether every file starts like a JPEG (only those can be decoded on the GPU)."""
    for path in paths:
        with open(path, "rb") as f:
            if f.read(3) != JPEG_MAGIC:
                return False
    return True


class JpegBytes(torch.utils.data.Dataset):
    """(encoded bytes [L] uint8, photo index, view) of item k*N + i: worker processes only read the files,
    and the batch is decoded and transformed on the device (see feature_cache.extract_rows)."""

    def __init__(self, split: pd.DataFrame, views: int = 1):
        self.paths = split["image_path"].tolist()
        self.views = views

    def __len__(self) -> int:
        return self.views * len(self.paths)

    def __getitem__(self, item: int):
        view, index = divmod(item, len(self.paths))
        return torchvision.io.read_file(self.paths[index]), index, view


def as_lists(batch: list) -> tuple[list, ...]:
    """Collate without stacking: encoded photos have different lengths."""
    return tuple(map(list, zip(*batch, strict=True)))
