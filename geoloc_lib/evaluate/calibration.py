"""How far to trust one prediction: a credible radius by split-conformal prediction, and a confidence whose
ranking of errors is measured.

**Radius.** For a level such as 90 %, every prediction gets a radius R = q x s, where s is a spread the model
predicts for that photo (the predicted cell's radius, alone or in quadrature with the hypotheses' spread) and q
the conformal quantile of the validation scores error / s: the score at rank (n + 1) x level of n, interpolated
between its two neighbours. For photos exchangeable with the validation photos the true place then lies within
R of the prediction with probability `level` on average (the textbook rank ceil((n + 1) level) guarantees at
least `level` and over-covers at small n). Per predicted province, q is partially
pooled: the geometric mean of the province's own quantile and the pooled one, weighted n / (n + tau) for a
province worth n independent validation photos. A province with many photos keeps its own quantile, one with a
handful leans on the pool, and none is cut off at a threshold.

**Photos come in regions.** The model is good or bad over whole regions, so validation photos near one another
hit or miss together. The calibration measures the intra-block correlation of hits and misses on validation, at
block sizes from the validation blocks up to 20 times them, and counts photos at the scale where the design
effect 1 + (m - 1) x rho (m the size-weighted block size) is largest: n photos are worth n / design effect
independent ones, in the pooling weights and in the ranges `coverage_table` gives. Counted at the 10 km
validation blocks alone, validation photos seemed worth more than they are, and too few test coverages fell
inside their ranges (`tools/bench_calibration`; the measurements are in `docs/trust.md` and `docs/design.md`).

The spread s and the pooling strength tau (`POOLING_CHOICES`) are chosen on validation by repeated 5-fold
cross-fitting over whole validation blocks: calibrate on four folds, score the held-out fold with the pinball
(quantile) loss of each radius at its level, averaged with every province weighing the same. The pinball loss
is the proper score of a quantile: it is lowest for the radius that is the true conditional quantile of the
error, so it rewards a spread that tracks each photo's error over one that covers by being huge, and one that
fits every province over one that fits only the largest. The hypotheses' spread alone is no candidate: where
every hypothesis lies in one small cell it collapses to the 1 km floor (`docs/trust.md` shows what that did to
ICT).

**Confidence.** 1 / (1 + R90 / 25 km), from the 90 % radius R90: a photo whose credible radius is small is one
the model is sure of. How well it ranks errors is measured by `evaluate/selective.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geoloc_lib.data.splits import location_blocks
from geoloc_lib.geo import provinces as prov

LEVELS = (0.5, 0.9)
# tau: a province with tau validation photos weighs its own quantile and the pooled one alike
POOLING_CHOICES = (10.0, 20.0, 40.0, 80.0)
SPREAD_FLOOR_KM = 1.0  # a spread of 0 (all probability on one hypothesis) would make every radius 0
# a constant spread is left out: it ranks no photo above another, so the confidence would say nothing. So is
# the hypotheses' spread alone: where every hypothesis lies in one small cell it falls to the floor (docs/trust.md)
SPREADS = ("cell_radius", "mixture_and_cell")
FOLDS, REPEATS = 5, 10
# block sizes, in validation blocks, at which hits and misses may be correlated: the model is good or bad over
# whole regions: on the benchmark datasets the design effect of validation coverage grew from 10 km blocks to
# 50-200 km ones (docs/design.md)
CORRELATION_SCALES = (1.0, 2.5, 5.0, 10.0, 20.0)  # the cross-fitting of the choice


CONFIDENCE_SCALE_KM = 25.0  # the radius at which confidence is 1/2


def radius_confidence(radius_km) -> np.ndarray:
    """Confidence in (0, 1] from the credible radius at the highest level: 1 / (1 + R / 25 km)."""
    return 1.0 / (1.0 + np.asarray(radius_km, float) / CONFIDENCE_SCALE_KM)


def radius_column(level: float) -> str:
    return f"radius_{round(100 * level)}_km"


def spread_km(pred: pd.DataFrame, cells: pd.DataFrame, kind: str) -> np.ndarray:
    """[N] the spread of each prediction: the hypotheses' spread, the predicted cell's radius, or 1 km."""
    if kind == "mixture_spread":  # no longer a candidate, but runs calibrated before chose it
        values = pred["pred_spread_km"].to_numpy(float)
    elif kind in ("cell_radius", "mixture_and_cell"):
        values = pred["pred_cell_id"].map(cells.set_index("cell_id")["radius_km"]).to_numpy(float)
        if kind == "mixture_and_cell":  # the hypotheses' spread and the cell's own size, in quadrature
            values = np.hypot(values, pred["pred_spread_km"].to_numpy(float))
    else:
        raise ValueError(f"spread must be mixture_spread or one of {SPREADS}, not {kind!r}")
    return np.maximum(values, SPREAD_FLOOR_KM)


def conformal_quantile(scores: np.ndarray, level: float, too_few: float = math.inf) -> float:
    """The score at rank (n + 1) x level of the n sorted scores, interpolated between the two nearest ones
    (`too_few` when n is too small for the level, rank > n). For exchangeable scores the share of new scores at
    or below it is then `level` on average: the rank ceil((n + 1) level) alone (the textbook conformal quantile)
    guarantees at least `level` and gives more at small n, 17 photos covering 94.4 % at the 90 % level."""
    scores = np.sort(np.asarray(scores, float))
    rank = (len(scores) + 1) * level
    if rank > len(scores):
        return too_few
    below = max(1, math.floor(rank))
    if below == len(scores):
        return float(scores[-1])
    return float(scores[below - 1] + (rank - below) * (scores[below] - scores[below - 1]))


def _log(quantile: float) -> float:
    return math.log(max(quantile, 1e-9))  # a quantile of 0 (errors of exactly 0 km) must not break the mean


def photo_blocks(pred: pd.DataFrame, block_km: float) -> np.ndarray:
    """[N] the location block of each photo's true place (the splits' grid); each photo its own block when the
    frame has no true coordinates."""
    if block_km <= 0 or not {"latitude", "longitude"} <= set(pred.columns):
        return np.arange(len(pred))
    return location_blocks(pred["latitude"], pred["longitude"], block_km)


def block_correlation(values, blocks) -> float:
    """The intra-block correlation of `values` (one-way ANOVA estimator), clipped to [0, 1]: how much more alike
    two photos of one block are than two photos at random. 0 when there are fewer than two blocks."""
    values = np.asarray(values, float)
    # numpy, not a pandas groupby: calibrate() fits about 400 times over its cross-fitting folds
    _, block = np.unique(np.asarray(blocks), return_inverse=True)
    sizes, n = np.bincount(block).astype(float), len(values)
    k = len(sizes)
    if k < 2 or k == n:
        return 0.0
    means = np.bincount(block, values) / sizes  # [k]
    between = float((sizes * (means - values.mean()) ** 2).sum()) / (k - 1)
    within = float(((values - means[block]) ** 2).sum()) / (n - k)
    size = (n - (sizes**2).sum() / n) / (k - 1)  # the mean block size, adjusted for unequal sizes
    denominator = between + (size - 1) * within
    return float(np.clip((between - within) / denominator, 0.0, 1.0)) if denominator > 0 else 0.0


def design_effect(blocks, correlation: float) -> float:
    """Kish's design effect 1 + (m - 1) rho of photos drawn in blocks, m the size-weighted mean block size: n such
    photos tell as much about a share as n / deff independent ones."""
    sizes = np.unique(np.asarray(blocks), return_counts=True)[1].astype(float)
    if len(sizes) == 0:
        return 1.0
    return 1.0 + ((sizes**2).sum() / sizes.sum() - 1.0) * correlation


def pooling_weight(photos: float, pooling: float) -> float:
    """The weight n / (n + tau) of a province's own quantile against the pooled one."""
    return photos / (photos + pooling)


@dataclass
class RadiusCalibration:
    spread: str
    levels: tuple[float, ...]
    pooled: dict[float, float]  # level -> quantile of error / spread over all validation photos
    per_province: dict[int, dict[float, float]] = field(default_factory=dict)  # predicted province -> ...
    photos: int = 0  # validation photos it was fitted on
    pooling: float = POOLING_CHOICES[1]  # tau of the partial pooling
    province_photos: dict[int, int] = field(default_factory=dict)  # predicted province -> validation photos
    block_km: float = 0.0  # the location blocks the validation photos were drawn in (0: photos independent)
    correlation: float = 0.0  # intra-block correlation of being covered, on validation
    design: float = 1.0  # design effect of all validation photos
    province_design: dict[int, float] = field(default_factory=dict)  # predicted province -> its design effect

    def radii(self, pred: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
        """One column per level (`radius_50_km`, ...): the credible radius of each prediction, km."""
        scale = spread_km(pred, cells, self.spread)
        province = pred["pred_province_id"].to_numpy()
        out = {}
        for level in self.levels:
            q = np.full(len(pred), self.pooled[level])
            for p, quantiles in self.per_province.items():
                q[province == p] = quantiles[level]
            out[radius_column(level)] = q * scale
        return pd.DataFrame(out, index=pred.index)

    def to_dict(self) -> dict:
        return {
            "spread": self.spread,
            "levels": list(self.levels),
            "pooled": {str(k): v for k, v in self.pooled.items()},
            "per_province": {str(p): {str(k): v for k, v in q.items()} for p, q in self.per_province.items()},
            "photos": self.photos,
            "pooling": self.pooling,
            "province_photos": {str(p): n for p, n in self.province_photos.items()},
            "block_km": self.block_km,
            "correlation": self.correlation,
            "design": self.design,
            "province_design": {str(p): d for p, d in self.province_design.items()},
        }

    @classmethod
    def from_dict(cls, values: dict) -> RadiusCalibration:
        levels = tuple(float(v) for v in values["levels"])
        return cls(
            spread=values["spread"],
            levels=levels,
            pooled={float(k): float(v) for k, v in values["pooled"].items()},
            per_province={
                int(p): {float(k): float(v) for k, v in q.items()} for p, q in values["per_province"].items()
            },
            photos=int(values["photos"]),
            # runs calibrated before partial pooling kept a province's own quantile alone (tau 0) where it had one;
            # they stored no per-province counts, so their ranges in 04 count the pooled photos (too narrow)
            pooling=float(values.get("pooling", 0.0)),
            province_photos={int(p): int(n) for p, n in values.get("province_photos", {}).items()},
            # runs calibrated before block-aware ranges counted photos as independent
            block_km=float(values.get("block_km", 0.0)),
            correlation=float(values.get("correlation", 0.0)),
            design=float(values.get("design", 1.0)),
            province_design={int(p): float(d) for p, d in values.get("province_design", {}).items()},
        )

    def province_effective(self, province_id: int) -> float:
        """A predicted province's validation photos, counted as independent ones (photos / design effect)."""
        return self.province_photos.get(province_id, 0) / self.province_design.get(province_id, 1.0)

    def effective_photos(self, province_id: int | None) -> float:
        """How many validation photos the quantile of a predicted province (None: the pooled one) is worth: a
        weighted mean of the province's own quantile (w, from n photos) and the pooled one (1 - w, from N) has
        the spread of a quantile of 1 / (w^2 / n + (1 - w)^2 / N) photos, if the province is like the pool. Photos
        drawn in location blocks count as photos / design effect (n and N both)."""
        everyone = self.photos / self.design
        n = self.province_effective(province_id) if province_id is not None else 0.0
        if n == 0:
            return everyone
        w = pooling_weight(n, self.pooling)
        return 1.0 / (w**2 / n + (1 - w) ** 2 / everyone)


def _fit(
    pred: pd.DataFrame, cells: pd.DataFrame, kind: str, levels, pooling: float, block_km: float = 0.0
) -> RadiusCalibration:
    scores = pred["error_km"].to_numpy(float) / spread_km(pred, cells, kind)
    province = pred["pred_province_id"].to_numpy()
    pooled = {level: conformal_quantile(scores, level) for level in levels}
    blocks = photo_blocks(pred, block_km)
    # photos of one block miss or hit together: their correlation, averaged over the levels, sets how many
    # independent photos a province's validation photos are worth, both in its pooling weight and in its ranges
    correlation = float(np.mean([block_correlation(scores <= q, blocks) for q in pooled.values()]))
    counts = {p.id: int((province == p.id).sum()) for p in prov.PROVINCES}
    designs = {p: design_effect(blocks[province == p], correlation) for p, n in counts.items() if n}
    per_province = {}
    for p, n in counts.items():
        if n == 0:
            continue
        w = pooling_weight(n / designs[p], pooling)
        own = scores[province == p]
        per_province[p] = {  # a province with too few photos for the level takes its largest score as its own
            level: math.exp(w * _log(conformal_quantile(own, level, own.max())) + (1 - w) * _log(q))
            for level, q in pooled.items()
        }
    design = design_effect(blocks, correlation)
    return RadiusCalibration(
        kind,
        tuple(levels),
        pooled,
        per_province,
        len(pred),
        pooling,
        counts,
        block_km,
        correlation,
        design,
        designs,
    )


def pinball_loss(error_km: np.ndarray, radius_km: np.ndarray, level: float) -> np.ndarray:
    """[N] the quantile loss of each radius as the `level` quantile of the error: level x (e - R) above the
    radius, (1 - level) x (R - e) inside it."""
    d = np.asarray(error_km, float) - np.asarray(radius_km, float)
    return np.maximum(level * d, (level - 1) * d)


def _cross_fitted(
    pred: pd.DataFrame, cells, kind: str, levels, pooling: float, seed: int, block_km: float, scale_km: float
) -> dict:
    """Held-out pinball loss (provinces weighing alike), coverage and median radius of one candidate. The folds
    hold out whole location blocks, as a new place would come: a province's own quantile from a few blocks is
    then judged on blocks it has not seen."""
    error, province = pred["error_km"].to_numpy(float), pred["province_id"].to_numpy()
    weight = 1.0 / pd.Series(province).map(pd.Series(province).value_counts()).to_numpy()
    loss, covered, top = (
        np.zeros((len(levels), len(pred))),
        np.zeros((len(levels), len(pred))),
        np.zeros(len(pred)),
    )
    rng = np.random.default_rng(seed)
    blocks = photo_blocks(pred, block_km)
    for _ in range(REPEATS):
        fold = (rng.permutation(blocks.max() + 1) % FOLDS)[blocks]
        for f in range(FOLDS):
            held = fold == f
            # tau scaled to the calibration folds, so that a province's weight is the one it has on all photos
            calibration = _fit(pred[~held], cells, kind, levels, pooling * (FOLDS - 1) / FOLDS, scale_km)
            radii = calibration.radii(pred[held], cells)
            for i, level in enumerate(levels):
                r = radii[radius_column(level)].to_numpy()
                loss[i, held] += pinball_loss(error[held], r, level) / REPEATS
                covered[i, held] += (error[held] <= r) / REPEATS
            top[held] += radii[radius_column(max(levels))].to_numpy() / REPEATS
    row = {"spread": kind, "pooling": pooling}
    row["pinball_loss_km"] = float(sum(np.sum(w * weight) / weight.sum() for w in loss))
    row |= {
        f"coverage_{round(100 * level)}_%": 100 * float(covered[i].mean()) for i, level in enumerate(levels)
    }
    return row | {f"median_radius_{round(100 * max(levels))}_km": float(np.median(top))}


def correlation_scale(pred: pd.DataFrame, cells: pd.DataFrame, kind: str, levels, block_km: float) -> float:
    """The block size, among `CORRELATION_SCALES` x block_km, at which the validation photos' hits and misses of
    the pooled quantiles have the largest design effect: the scale at which a calibration's photos count."""
    if block_km <= 0:
        return 0.0
    scores = pred["error_km"].to_numpy(float) / spread_km(pred, cells, kind)
    covered = [scores <= conformal_quantile(scores, level) for level in levels]

    def design(scale: float) -> float:
        blocks = photo_blocks(pred, scale)
        return design_effect(blocks, float(np.mean([block_correlation(c, blocks) for c in covered])))

    return max((factor * block_km for factor in CORRELATION_SCALES), key=design)


def calibrate(
    pred: pd.DataFrame, cells: pd.DataFrame, levels=LEVELS, seed: int = 0, block_km: float = 10.0
) -> tuple[RadiusCalibration, pd.DataFrame]:
    """The calibration of validation predictions `pred` with the spread and pooling of the lowest
    cross-fitted pinball loss; also the table of every candidate, best first. `block_km`: the location blocks
    validation was drawn in (the run's val_block_km)."""
    scales = {kind: correlation_scale(pred, cells, kind, levels, block_km) for kind in SPREADS}
    rows = [
        _cross_fitted(pred, cells, kind, levels, pooling, seed, block_km, scales[kind])
        for kind in SPREADS
        for pooling in POOLING_CHOICES
    ]
    candidates = pd.DataFrame(rows).sort_values("pinball_loss_km", kind="stable").reset_index(drop=True)
    best = candidates.iloc[0]
    kind = best["spread"]
    return _fit(pred, cells, kind, levels, float(best["pooling"]), scales[kind]), candidates


def calibrated_range(
    level: float, calibration_photos: float, test_photos: int, mass: float = 0.95, test_design: float = 1.0
) -> tuple:
    """(low %, high %): the central `mass` of the coverages that a calibrated radius shows on `test_photos`
    photos when its quantile is the conformal one of `calibration_photos` exchangeable scores. Given the
    calibration photos, the coverage is Beta(k, n + 1 - k) distributed, k = (n + 1) level the quantile's rank
    (a fraction where it is interpolated); the count covered among the test photos is then beta-binomial. Both
    draws are in the range: for 28 independent validation and 56 test photos it spans 29-71 % at the 50 % level.
    Test photos drawn in location blocks count as test_photos / test_design independent ones (and
    `calibration_photos` is already such a count)."""
    # imported here: predicting never needs it, and scipy.stats takes a second to import
    from scipy.stats import betabinom

    k = (calibration_photos + 1) * level
    if k > calibration_photos:  # too few photos for the level: an infinite radius covers every photo
        return 100.0, 100.0
    independent = max(1, round(test_photos / test_design))
    low, high = betabinom.interval(mass, independent, k, calibration_photos + 1 - k)
    return 100 * low / independent, 100 * high / independent


def coverage_table(pred: pd.DataFrame, radii: pd.DataFrame, calibration: RadiusCalibration) -> pd.DataFrame:
    """Per true province and overall: photos, the share within each radius (%), the median radius, and the
    range (95 %) in which a calibrated radius lands with these photo counts. A province's range counts the
    validation photos of its predicted-province quantile; the overall one counts every validation photo (the
    overall coverage averages the provinces' quantiles in their shares, so its spread is the pooled one's).
    Photos of one location block hit or miss together, so both sides count photos / design effect, with the
    correlation measured on validation: the test photos' design effect is `test_design`."""
    rows = []
    groups = [(p.name, p.id, pred["province_id"] == p.id) for p in prov.PROVINCES] + [
        ("all", None, pred.index == pred.index)
    ]
    blocks = photo_blocks(pred, calibration.block_km)
    for name, province_id, mask in groups:
        if not mask.any():
            continue
        row = {"province": name, "photos": int(mask.sum())}
        row["test_design"] = design_effect(blocks[np.asarray(mask)], calibration.correlation)
        for level in calibration.levels:
            r = radii.loc[mask, radius_column(level)]
            percent = round(100 * level)
            row[f"coverage_{percent}_%"] = 100 * float(np.mean(pred.loc[mask, "error_km"] <= r))
            row[f"median_radius_{percent}_km"] = float(r.median())
            low, high = calibrated_range(
                level,
                calibration.effective_photos(province_id),
                row["photos"],
                test_design=row["test_design"],
            )
            row[f"calibrated_{percent}_low_%"], row[f"calibrated_{percent}_high_%"] = low, high
        rows.append(row)
    return pd.DataFrame(rows).set_index("province")
