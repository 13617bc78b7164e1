"""Early stopping of Phase 2 on three signals, as the original system's fine-tuning stops:

- **rare province lost**: a rare province (under `rare_province_share` of the training photos) whose validation
  accuracy was at least `stop_rare_province_acc` % when Phase 2 started falls below it: fine-tuning is trading
  the small provinces for the large ones. Provinces with fewer than `MIN_VAL_PHOTOS` validation photos are not
  watched (one photo would swing their accuracy by 10 points or more).
- **offset collapse**: the training offset loss falls below `stop_offset_collapse` times its first epoch's
  value: the trained tops let the offset head memorise the training photos.
- **validation median risen**: the end-to-end validation median has been above its best for `stop_patience`
  epochs in a row.

`stop_reason` is a pure function of the epochs' rows, so a resumed run decides exactly as the uninterrupted one
did, and a finished, stopped run is not trained further when resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from geoloc_lib.geo import provinces as prov

MIN_VAL_PHOTOS = 10  # validation photos a rare province needs to be watched


@dataclass(frozen=True)
class StopRules:
    rare_province_acc: float  # % (0: off)
    watched: tuple[str, ...]  # accuracy columns of the rare provinces watched ("balochistan_acc", ...)
    offset_collapse: float  # share of the first epoch's training offset loss (0: off)
    patience: int  # epochs above the best validation median (0: off)

    @classmethod
    def of(cls, cfg, train: pd.DataFrame, val: pd.DataFrame, start_val: dict) -> StopRules:
        """The rules of a run: its thresholds, and the rare provinces that start at or above the accuracy one."""
        shares = train["province_id"].value_counts(normalize=True)
        val_counts = val["province_id"].value_counts()
        watched = tuple(
            f"{p.key}_acc"
            for p in prov.PROVINCES
            if shares.get(p.id, 0.0) < cfg.rare_province_share
            and val_counts.get(p.id, 0) >= MIN_VAL_PHOTOS
            and start_val.get(f"{p.key}_acc", np.nan) >= cfg.stop_rare_province_acc
        )
        return cls(cfg.stop_rare_province_acc, watched, cfg.stop_offset_collapse, cfg.stop_patience)

    def describe(self) -> str:
        names = [column.removesuffix("_acc") for column in self.watched]
        rare = (
            f"rare province accuracy below {self.rare_province_acc:g} % ({', '.join(names) or 'none watched'})"
            if self.rare_province_acc > 0
            else "rare provinces off"
        )
        offset = (
            f"offset loss below {self.offset_collapse:g} x epoch 1's"
            if self.offset_collapse > 0
            else "offset off"
        )
        median = f"{self.patience} epochs above the best median" if self.patience > 0 else "median off"
        return f"early stopping: {rare}; {offset}; {median}"


def stop_reason(rules: StopRules, history: list[dict]) -> str | None:
    """Why training stops after the last epoch of `history` ({"train": row, "val": row} per epoch, in order),
    or None to go on."""
    if not history:
        return None
    last = history[-1]
    if rules.rare_province_acc > 0:
        lost = [c for c in rules.watched if last["val"].get(c, np.nan) < rules.rare_province_acc]
        if lost:
            values = ", ".join(f"{c.removesuffix('_acc')} {last['val'][c]:.1f} %" for c in lost)
            return (
                f"a rare province's validation accuracy fell below {rules.rare_province_acc:g} % ({values})"
            )
    if rules.offset_collapse > 0:
        first, now = history[0]["train"]["loss_offset"], last["train"]["loss_offset"]
        if now < rules.offset_collapse * first:
            return (
                f"the training offset loss collapsed to {now:.4g}, below {rules.offset_collapse:g} x its first "
                f"epoch's {first:.4g}"
            )
    if rules.patience > 0 and len(history) > rules.patience:
        medians = [epoch["val"]["median_error_km"] for epoch in history]
        best_before = min(medians[: -rules.patience])
        if all(m > best_before for m in medians[-rules.patience :]):
            return (
                f"the validation median has been above its best ({best_before:.2f} km) for {rules.patience} epochs "
                f"(now {medians[-1]:.2f} km)"
            )
    return None
