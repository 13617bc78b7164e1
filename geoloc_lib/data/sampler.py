"""Province-balanced batch sampler with a fresh, reproducible order every epoch.

A batch of 64 holds 16 Sindh photos and 8 of each other province (shares from the province table);
other batch sizes scale the shares with largest-remainder rounding, so the batch size is exact.

Within a province, photos are drawn as successive random permutations: every photo is used once
before any repeats, and small provinces cycle (they are drawn "with replacement" across the epoch,
never twice in a row by accident). The order of epoch `e` depends only on (seed, e), so a resumed run
sees the same batches as an uninterrupted one, and consecutive epochs differ.

A province with no training photos (allowed only with `allow_missing_provinces`, see data/contract.py)
gives its share to the other provinces in proportion, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from geoloc_lib.geo import provinces as prov


def batch_composition(batch_size: int, shares) -> np.ndarray:
    """Photos per province in one batch: largest-remainder rounding of batch_size * shares."""
    shares = np.asarray(shares, float)
    shares = shares / shares.sum()
    exact = shares * batch_size
    counts = np.floor(exact).astype(int)
    remainder = batch_size - counts.sum()
    # ties go to the lower province id (stable sort)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return counts


class ProvinceBalancedBatchSampler(torch.utils.data.Sampler):
    def __init__(
        self,
        province_ids,
        batch_size: int = 64,
        batches_per_epoch: int = 1300,
        seed: int = 0,
    ):
        self.province_ids = np.asarray(province_ids, dtype=np.int64)
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.epoch = 1
        self.members = [np.flatnonzero(self.province_ids == p.id) for p in prov.PROVINCES]
        shares = np.array([p.batch_share for p in prov.PROVINCES])
        absent = [p.name for p, m in zip(prov.PROVINCES, self.members, strict=True) if len(m) == 0]
        if len(absent) == len(prov.PROVINCES):
            raise ValueError("the sampler got no photos at all")
        if absent:
            warnings.warn(
                f"no training photos for {absent}; their batch share goes to the other provinces",
                stacklevel=2,
            )
            shares = np.where([len(m) > 0 for m in self.members], shares, 0.0)
        self.counts = batch_composition(batch_size, shares)
        present = np.array([len(m) > 0 for m in self.members])
        if (self.counts[present] == 0).any():
            smallest = next(b for b in range(1, 10_000) if batch_composition(b, shares)[present].all())
            starved = [
                p.name for p, c, ok in zip(prov.PROVINCES, self.counts, present, strict=True) if ok and c == 0
            ]
            raise ValueError(
                f"batch_size {batch_size} gives {starved} no photo in any batch, so they would never be "
                f"trained; use batch_size {smallest} or more"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self, epoch: int | None = None) -> np.ndarray:
        """[batches_per_epoch, batch_size] dataset indices of one epoch (vectorised, no per-sample loop)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        columns = []
        for members, count in zip(self.members, self.counts, strict=True):
            if count == 0:
                continue
            need = count * self.batches_per_epoch
            passes = -(-need // len(members))  # ceil
            # successive permutations: every photo once before any photo twice
            keys = rng.random((passes, len(members)))
            draws = members[np.argsort(keys, axis=1)].reshape(-1)[:need]
            columns.append(draws.reshape(self.batches_per_epoch, count))
        batches = np.concatenate(columns, axis=1)
        # shuffle the position of each photo inside its batch
        return np.take_along_axis(batches, np.argsort(rng.random(batches.shape), axis=1), axis=1)

    def __iter__(self):
        yield from (batch.tolist() for batch in self.epoch_batches())

    def __len__(self) -> int:
        return self.batches_per_epoch


def composition_table(sampler: ProvinceBalancedBatchSampler, epoch: int = 1) -> pd.DataFrame:
    """Share of each province in every batch of an epoch: [batches, provinces]."""
    batches = sampler.epoch_batches(epoch)
    province = sampler.province_ids[batches]  # [S, B]
    counts = np.stack([(province == p.id).sum(1) for p in prov.PROVINCES], axis=1)
    return pd.DataFrame(counts / sampler.batch_size, columns=list(prov.PROVINCE_NAMES))


def repeat_rates(sampler: ProvinceBalancedBatchSampler, epoch: int = 1) -> pd.DataFrame:
    """Per province: photos available, draws per epoch, distinct photos drawn, mean draws per photo."""
    batches = sampler.epoch_batches(epoch).reshape(-1)
    rows = []
    for p, members, count in zip(prov.PROVINCES, sampler.members, sampler.counts, strict=True):
        drawn = batches[np.isin(batches, members)]
        rows.append(
            {
                "province": p.name,
                "photos": len(members),
                "per_batch": int(count),
                "draws_per_epoch": len(drawn),
                "distinct_drawn": len(np.unique(drawn)),
                "draws_per_photo": len(drawn) / max(len(members), 1),
            }
        )
    return pd.DataFrame(rows).set_index("province")


def epoch_difference(sampler: ProvinceBalancedBatchSampler, epoch_a: int, epoch_b: int) -> dict[str, float]:
    """How different two epochs are: identical batches, and identical (batch, slot) positions."""
    a, b = sampler.epoch_batches(epoch_a), sampler.epoch_batches(epoch_b)
    same_batches = np.mean([set(x) == set(y) for x, y in zip(a, b, strict=True)])
    return {
        "identical_batches_%": 100 * float(same_batches),
        "identical_positions_%": 100 * float(np.mean(a == b)),
    }
