"""Feature cache for frozen encoders (docs/design.md, "Feature cache").

With both encoders frozen, training needs only their outputs. `augmented_features` encodes K augmented
views of every training photo, `clean_features` the plain photo (validation, test, the baselines and
retrieval); both store the result (fp16 by default) under `CacheSpec.cache_dir`. The cache key covers the
encoder config and a hash of every weight, the transform settings, the image list (paths, sizes,
modification times), K and the seed, so a stale cache is never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torchvision

from geoloc_lib.base import distributed
from geoloc_lib.base.atomic_files import atomic_torch_save
from geoloc_lib.base.devices import autocast_for, select_device
from geoloc_lib.base.progress import TerminalTicker, progress_bar
from geoloc_lib.data.cache_spec import CacheSpec
from geoloc_lib.data.photos import JpegBytes, PhotoDataset, all_jpeg, as_lists, photo_digest, view_seed
from geoloc_lib.data.transforms import AUGMENT_PRESETS, AugmentConfig, eval_transform, train_transform

if TYPE_CHECKING:  # the data layer is handed the encoders; it never builds them
    from geoloc_lib.model.encoders import DualEncoder


def image_list_digest(split: pd.DataFrame) -> str:
    return photo_digest(split["image_path"], split["image_path"])


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


def _load_parts(parts_dir: Path, clip: torch.Tensor, scene: torch.Tensor, log) -> int:
    """Fill rows from the shards of an interrupted extraction; return how many leading rows are done."""
    done = 0
    for part in sorted(parts_dir.glob("*.pt")):  # names are zero-padded start rows: sorted = in order
        try:
            shard = torch.load(part, map_location="cpu", weights_only=True)
            start, end = shard["start"], done + len(shard["clip"])
        except Exception as err:  # a damaged shard is only a cache: extract its rows and the rest again
            log(
                f"extraction shard {part} is unreadable ({type(err).__name__}); extracting from row {done} again"
            )
            for stale in sorted(parts_dir.glob("*.pt")):
                if stale.name >= part.name:
                    stale.unlink()
            break
        if start != done:
            break  # not contiguous: extract the rest again
        clip[done:end], scene[done:end] = shard["clip"], shard["scene"]
        done = end
    if done:
        log(f"resuming feature extraction at {done}/{len(clip)} (shards in {parts_dir})")
    return done


def _save_shard(parts_dir: Path, clip: torch.Tensor, scene: torch.Tensor, start: int, end: int) -> None:
    """Rows start..end of an extraction in progress, named by their zero-padded start row."""
    shard = {"start": start, "clip": clip[start:end].clone(), "scene": scene[start:end].clone()}
    atomic_torch_save(shard, parts_dir / f"{start:012d}.pt")


@dataclass(frozen=True)
class Extraction:
    """How the encoders run over photos: on which device, in what batches, and what is kept.

    `decode_on_device`: workers only read the JPEG files; each batch is decoded on `device`
    (torchvision.io.decode_jpeg, nvJPEG on CUDA) and transformed there, with the same per-photo seeds.
    `prefix`: what the encoders' frozen prefixes hand their trained tops (`DualEncoder.prefix`), not their
    outputs. `flush_seconds`: how often an extraction saves its finished rows as shards, where it keeps them.
    """

    encoders: DualEncoder
    device: torch.device
    batch_size: int = 128
    num_workers: int = 2
    dtype: torch.dtype = torch.float16
    decode_on_device: bool = False
    prefix: bool = False
    desc: str = "features"
    log: Callable[[str], object] = print
    flush_seconds: float = 60.0

    @classmethod
    def of(
        cls, spec: CacheSpec, encoders: DualEncoder, device: torch.device, log, prefix: bool
    ) -> Extraction:
        return cls(
            encoders,
            device,
            spec.batch_size,
            spec.num_workers,
            getattr(torch, spec.dtype),
            prefix=prefix,
            log=log,
        )


@torch.no_grad()
def extract_rows(how: Extraction, dataset: PhotoDataset, items: range, parts_dir: Path | None = None):
    """Encoder outputs of dataset items `items` (a contiguous range): clip [R, Dc], scene [R, Ds], in the
    extraction's dtype; with its prefix flag, the prefixes' outputs (clip [R, T, W], scene [R, C, H, W]).

    With `parts_dir`, finished rows are saved there as shards about every flush_seconds, and an
    extraction killed part-way continues from its shards: each view's augmentation is seeded per photo,
    so the rows do not depend on where a batch starts.
    """
    encoders, device, log, dtype = how.encoders, how.device, how.log, how.dtype
    clip, scene = (
        torch.empty(len(items), *shape, dtype=dtype) for shape in encoders.output_shapes(how.prefix)
    )
    encode = encoders.prefix if how.prefix else encoders
    done = _load_parts(parts_dir, clip, scene, log) if parts_dir is not None and parts_dir.is_dir() else 0
    loader = _loader(how, dataset, items[done:])
    encoders.eval().to(device)
    start, flushed, last_flush = done, done, time.monotonic()
    # The progress bar is updated by hand and never holds the worker iterator: a notebook's tqdm outlives the
    # loop, and a live iterator inherited by the next DataLoader's forked workers makes them print tracebacks.
    batches = iter(loader)
    ticker = TerminalTicker(f"{how.desc}: image", len(items), initial=done)
    with progress_bar(total=len(items), initial=done, desc=how.desc, unit="img") as bar:
        for batch in batches:
            images = decode_batch(batch, dataset, device) if how.decode_on_device else batch[0]
            with autocast_for(device):
                c, s = encode(images.to(device, non_blocking=True))  # [b, Dc], [b, Ds]
            clip[start : start + len(images)] = c.float().to("cpu", dtype)
            scene[start : start + len(images)] = s.float().to("cpu", dtype)
            start += len(images)
            bar.update(len(images))
            ticker.update(start)
            if parts_dir is not None and time.monotonic() - last_flush >= how.flush_seconds:
                _save_shard(parts_dir, clip, scene, flushed, start)
                flushed, last_flush = start, time.monotonic()
    del batches  # shuts its workers down now, before any later fork
    return clip, scene


def _loader(how: Extraction, dataset: PhotoDataset, items: range):
    """Batches of decoded images, or (decode_on_device) of the JPEG files' bytes for the device to decode."""
    source = JpegBytes(dataset.split, dataset.views) if how.decode_on_device else dataset
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(source, items),
        batch_size=how.batch_size,
        num_workers=how.num_workers,
        pin_memory=how.device.type == "cuda" and not how.decode_on_device,
        persistent_workers=False,
        collate_fn=as_lists if how.decode_on_device else None,
    )


def decode_batch(batch: tuple[list, list, list], dataset: PhotoDataset, device: torch.device) -> torch.Tensor:
    """Encoded JPEGs -> transformed images [B, 3, S, S] on `device`, each seeded as `dataset.load` seeds it."""
    encoded, index, view = batch
    decoded = torchvision.io.decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB, device=device)
    images = []
    for image, i, v in zip(decoded, index, view, strict=True):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if dataset.seed is not None:
                torch.manual_seed(view_seed(dataset.seed, v, i))
            images.append(dataset.transform(image))
    return torch.stack(images)


def extract_features(
    how: Extraction, dataset: PhotoDataset, parts_dir: Path | None = None
) -> dict[str, torch.Tensor]:
    """{"clip": [V, N, Dc], "scene": [V, N, Ds]} on the CPU: the dataset's `views` seeded transforms of every
    photo."""
    clip, scene = extract_rows(how, dataset, range(len(dataset)), parts_dir)
    return by_view(clip, scene, dataset.views, len(dataset.split))


def by_view(clip: torch.Tensor, scene: torch.Tensor, views: int, n: int) -> dict[str, torch.Tensor]:
    """Rows [V*N, ...] in view-major order -> {"clip": [V, N, ...], "scene": [V, N, ...]}."""
    return {"clip": clip.view(views, n, *clip.shape[1:]), "scene": scene.view(views, n, *scene.shape[1:])}


def _read_cache(path: Path, log) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        features = torch.load(path, map_location="cpu", weights_only=True)
        log(f"feature cache hit: {path}")
        return features
    except Exception as err:  # e.g. a file truncated by a full disk: rebuild it rather than stop
        log(f"feature cache {path} is unreadable ({type(err).__name__}: {err}); extracting again")
        return None


def load_or_extract(
    cache_dir: str | os.PathLike, key: str, how: Extraction, dataset: PhotoDataset
) -> dict[str, torch.Tensor]:
    """Read `cache_dir/<key>.pt` when present, else extract and write it atomically.

    Extraction keeps shards in `cache_dir/<key>.parts/` while it runs, so a killed run loses at most
    about a minute of it; they are removed once the whole cache file is written. Under torchrun each
    process extracts its own block of whole batches (distributed.shard) and the first one merges them.
    """
    path = Path(cache_dir) / f"{key}.pt"
    features = _read_cache(path, how.log)
    if features is not None:
        return features
    world = distributed.current()
    if not world.distributed:
        parts_dir = Path(cache_dir) / f"{key}.parts"
        features = extract_features(how, dataset, parts_dir)
        atomic_torch_save(features, path)
        shutil.rmtree(parts_dir, ignore_errors=True)
        how.log(f"feature cache written: {path}")
        return features
    _extract_my_shard(Path(cache_dir), key, world, how, dataset)
    world.barrier()
    if world.is_main:
        _merge_shards(Path(cache_dir), key, world, dataset.views, len(dataset.split))
        how.log(f"feature cache written by {world.size} processes: {path}")
    world.barrier()
    return torch.load(path, map_location="cpu", weights_only=True)


def _extract_my_shard(cache_dir: Path, key: str, world, how: Extraction, dataset: PhotoDataset) -> None:
    items = distributed.shard(len(dataset), how.batch_size, world)
    parts_dir = cache_dir / f"{key}.rank{world.rank}.parts"
    clip, scene = extract_rows(how, dataset, items, parts_dir)
    atomic_torch_save(
        {"start": items.start, "clip": clip, "scene": scene}, cache_dir / f"{key}.rank{world.rank}.pt"
    )
    shutil.rmtree(parts_dir, ignore_errors=True)


def _merge_shards(cache_dir: Path, key: str, world, views: int, n: int) -> None:
    """Concatenate the ranks' blocks in order into the cache file a single process would have written."""
    files = [cache_dir / f"{key}.rank{rank}.pt" for rank in range(world.size)]
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    clip = torch.cat([s["clip"] for s in shards])  # [V*N, Dc]
    scene = torch.cat([s["scene"] for s in shards])
    atomic_torch_save(by_view(clip, scene, views, n), cache_dir / f"{key}.pt")
    for f in files:
        f.unlink()


_SAID: set[str] = set()


def _say_once(log, message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        log(message)


def decode_on_device(device: torch.device, split: pd.DataFrame, log=print) -> bool:
    """JPEGs are decoded on the GPU when there is one; elsewhere (or for other formats) on the CPU."""
    if device.type != "cuda":
        _say_once(log, "photos are decoded on the CPU (no GPU)")
        return False
    if not all_jpeg(split["image_path"]):
        _say_once(log, "photos are decoded on the CPU: not all of them are JPEGs")
        return False
    _say_once(log, "JPEGs are decoded and transformed on the GPU")
    return True


def _cached(
    spec: CacheSpec, how: Extraction, fingerprint: str, dataset: PhotoDataset, transform_desc: dict
) -> dict[str, torch.Tensor]:
    on_device = decode_on_device(how.device, dataset.split, how.log)
    if on_device:  # another decoder: its features go to their own cache entry
        transform_desc = transform_desc | {"decoded_on": how.device.type}
    if how.prefix:  # the prefixes' outputs: an entry of their own (the features' keys stay as they were)
        transform_desc = transform_desc | {"output": "prefix"}
    kind = (
        f"{'augmented' if 'train' in transform_desc else 'clean'} {'prefixes' if how.prefix else 'features'}"
    )
    key = cache_key(fingerprint, dataset.split, transform_desc, dataset.views, dataset.seed, how.dtype)
    return load_or_extract(
        spec.cache_dir, key, dataclasses.replace(how, decode_on_device=on_device, desc=kind), dataset
    )


def augmented_features(
    spec: CacheSpec, encoders: DualEncoder, fingerprint: str, split: pd.DataFrame, augment: AugmentConfig,
    device: torch.device, log=print, prefix: bool = False,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """`CacheSpec.views` augmented views of every photo: {"clip": [V, N, Dc], "scene": [V, N, Ds]} (`prefix`: the
    prefixes' outputs, [V, N, ...]).

    Without augmentation every view would be the clean photo, so the clean features serve as the one view.
    """
    if augment == AUGMENT_PRESETS["none"]:
        clean = clean_features(spec, split, encoders, fingerprint, device, log, prefix)
        return {k: v[None] for k, v in clean.items()}
    size = encoders.image_size
    dataset = PhotoDataset(split, train_transform(size, augment), views=spec.views, seed=spec.seed)
    how = Extraction.of(spec, encoders, device, log, prefix)
    return _cached(spec, how, fingerprint, dataset, {"train": augment.describe(), "size": size})


def clean_features(
    spec: CacheSpec,
    split: pd.DataFrame,
    encoders: DualEncoder,
    fingerprint: str | None = None,
    device: torch.device | None = None,
    log=print,
    prefix: bool = False,
) -> dict[str, torch.Tensor]:
    """The frozen encoders' outputs of every photo of `split`, without augmentation, from the cache.

    {"clip": [N, Dc], "scene": [N, Ds]} on the CPU in `CacheSpec.dtype` (`prefix`: the prefixes' outputs, [N, ...]);
    whatever is not cached yet is extracted and cached.
    """
    fingerprint = fingerprint or encoders.fingerprint()
    device = device or select_device("auto")
    size = encoders.image_size
    dataset = PhotoDataset(split, eval_transform(size), views=1, seed=0)
    how = Extraction.of(spec, encoders, device, log, prefix)
    features = _cached(spec, how, fingerprint, dataset, {"eval": True, "size": size})
    return {k: v[0] for k, v in features.items()}
