"""Feature cache for frozen encoders (DESIGN.md section 4).

With both encoders frozen, training needs only their outputs. We compute CLIP and scene features once
for K augmented views of every training photo and for the clean validation photo, store them in fp16,
and train on them. The cache key covers the encoder config and a hash of every weight, the transform
settings, the image list (paths, sizes, modification times), K and the seed, so a stale cache is never
reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoints import atomic_torch_save
from .datasets import PhotoDataset
from .encoders import DualEncoder


def image_list_digest(split: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for path in split["image_path"]:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cache_key(
    encoder_fingerprint: str, split: pd.DataFrame, transform_desc: dict, views: int, seed: int, dtype
) -> str:
    payload = {
        "encoders": encoder_fingerprint,
        "images": image_list_digest(split),
        "transform": transform_desc,
        "views": views,
        "seed": seed,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def extract_features(
    encoders: DualEncoder,
    split: pd.DataFrame,
    transform,
    views: int,
    seed: int,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 2,
    dtype=torch.float16,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """{"clip": [V, N, Dc], "scene": [V, N, Ds]} on the CPU, in `dtype`."""
    dataset = PhotoDataset(split, transform, views=views, seed=seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    n = len(split)
    clip_dim, scene_dim = encoders.dims
    clip = torch.empty(views * n, clip_dim, dtype=dtype)
    scene = torch.empty(views * n, scene_dim, dtype=dtype)
    encoders.eval().to(device)
    start = 0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    # The progress bar is updated by hand and never holds the worker iterator: a notebook's tqdm
    # outlives the loop, and a live iterator inherited by the next DataLoader's forked workers makes
    # them print "can only test a child process" tracebacks when they exit.
    batches = iter(loader)
    with tqdm(total=len(loader), desc=desc, unit="batch") as bar:
        for images, _ in batches:
            with autocast:
                c, s = encoders(images.to(device, non_blocking=True))  # [b, Dc], [b, Ds]
            clip[start : start + len(images)] = c.float().to("cpu", dtype)
            scene[start : start + len(images)] = s.float().to("cpu", dtype)
            start += len(images)
            bar.update()
    del batches  # shuts its workers down now, before any later fork
    return {"clip": clip.view(views, n, clip_dim), "scene": scene.view(views, n, scene_dim)}


def load_or_extract(
    cache_dir: str | os.PathLike, key: str, log=print, **extract_kwargs
) -> dict[str, torch.Tensor]:
    """Read `cache_dir/<key>.pt` when present, else extract and write it atomically."""
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
            log(f"feature cache hit: {path}")
            return features
        except Exception as err:  # e.g. a file truncated by a full disk: rebuild it rather than stop
            log(f"feature cache {path} is unreadable ({type(err).__name__}: {err}); extracting again")
    features = extract_features(**extract_kwargs)
    atomic_torch_save(features, path)
    log(f"feature cache written: {path}")
    return features
