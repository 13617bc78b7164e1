"""What the feature cache needs of a run (`CacheSpec`), in a module without torch: a run's settings take their
defaults from here (`data/feature_cache.py` does the caching)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheSpec:
    """Where encoder features are cached and how they are extracted: all the data layer needs of a run."""

    cache_dir: str = "runs/feature_cache"
    dtype: str = "float16"  # storage type of the cached features
    views: int = 4  # augmented views cached per training photo
    seed: int = 0  # seed of the augmented views
    batch_size: int = 256  # photos per extraction batch
    num_workers: int = 2  # decoding workers
