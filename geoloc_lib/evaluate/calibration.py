"""How far to trust one prediction: a credible radius by split-conformal prediction, and a confidence whose
ranking of errors is measured.

**Radius.** For a level such as 90 %, every prediction gets a radius R = q x s, where s is a spread the model
predicts for that photo and q the conformal quantile of the validation scores error / s: the
ceil((n + 1) x level)-th smallest of n scores. For photos exchangeable with the validation photos, the true
place then lies within R of the prediction with probability at least `level` (and at most level + 1/(n + 1)).
Per predicted province, q is partially pooled: the geometric mean of the province's own quantile and the
pooled one, weighted n / (n + tau) for a province with n validation photos. A province with many photos keeps
its own quantile, one with a handful leans on the pool, and none is cut off at a threshold. The guarantee above
is exact for the pooled quantile; a province's pooled-toward quantile trades it for less noise.

The spread s and the pooling strength tau (`POOLING_CHOICES`) are chosen on validation by repeated 5-fold
cross-fitting: calibrate on four folds, score the held-out fold with
the pinball (quantile) loss of each radius at its level, averaged with every province weighing the same. The
pinball loss is the proper score of a quantile: it is lowest for the radius that is the true conditional
quantile of the error, so it rewards a spread that tracks each photo's error over one that covers by being
huge, and one that fits every province over one that fits only the largest. (A choice by the smallest median
radius among the candidates that cover overall picked the hypotheses' spread alone on the demo: it covered 87 %
of the test photos overall but 45 % of ICT's and 29 % of Balochistan's at the 90 % level.) Partial pooling
replaced a threshold (a province's own quantile from 20 or 50 validation photos, the pooled one below): over
six generated datasets (`tools/bench_calibration`) it brought the provinces' coverage closer to the levels.

**Confidence.** 1 / (1 + R90 / 25 km), from the 90 % radius R90: a photo whose credible radius is small is one
the model is sure of. On the demo's test split it ranks errors with a Spearman correlation of 0.52, against
0.13 for the probability of the predicted hypothesis (`pred_cell_prob`, the fallback of an uncalibrated run).
`confidence_curve` keeps the most confident x % of photos; a confidence that orders errors well makes the
kept photos' errors fall as x shrinks, which random ranking does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geoloc_lib.geo import provinces as prov

LEVELS = (0.5, 0.9)
# tau: a province with tau validation photos weighs its own quantile and the pooled one alike
POOLING_CHOICES = (10.0, 20.0, 40.0, 80.0)
SPREAD_FLOOR_KM = 1.0  # a spread of 0 (all probability on one hypothesis) would make every radius 0
# a constant spread is left out: it ranks no photo above another, so the confidence would say nothing
SPREADS = ("mixture_spread", "cell_radius", "mixture_and_cell")
FOLDS, REPEATS = 5, 10  # the cross-fitting of the choice


CONFIDENCE_SCALE_KM = 25.0  # the radius at which confidence is 1/2


def radius_confidence(radius_km) -> np.ndarray:
    """Confidence in (0, 1] from the credible radius at the highest level: 1 / (1 + R / 25 km)."""
    return 1.0 / (1.0 + np.asarray(radius_km, float) / CONFIDENCE_SCALE_KM)


def radius_column(level: float) -> str:
    return f"radius_{round(100 * level)}_km"


def spread_km(pred: pd.DataFrame, cells: pd.DataFrame, kind: str) -> np.ndarray:
    """[N] the spread of each prediction: the hypotheses' spread, the predicted cell's radius, or 1 km."""
    if kind == "mixture_spread":
        values = pred["pred_spread_km"].to_numpy(float)
    elif kind in ("cell_radius", "mixture_and_cell"):
        values = pred["pred_cell_id"].map(cells.set_index("cell_id")["radius_km"]).to_numpy(float)
        if kind == "mixture_and_cell":  # the hypotheses' spread and the cell's own size, in quadrature
            values = np.hypot(values, pred["pred_spread_km"].to_numpy(float))
    else:
        raise ValueError(f"spread must be one of {SPREADS}, not {kind!r}")
    return np.maximum(values, SPREAD_FLOOR_KM)


def conformal_quantile(scores: np.ndarray, level: float, too_few: float = math.inf) -> float:
    """The ceil((n + 1) level)-th smallest score (`too_few` when n is too small for the level)."""
    scores = np.sort(np.asarray(scores, float))
    k = math.ceil((len(scores) + 1) * level)
    return float(scores[k - 1]) if k <= len(scores) else too_few


def _log(quantile: float) -> float:
    return math.log(max(quantile, 1e-9))  # a quantile of 0 (errors of exactly 0 km) must not break the mean


def pooling_weight(photos: int, pooling: float) -> float:
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
        )

    def effective_photos(self, province_id: int | None) -> float:
        """How many validation photos the quantile of a predicted province (None: the pooled one) is worth: a
        weighted mean of the province's own quantile (w, from n photos) and the pooled one (1 - w, from N) has
        the spread of a quantile of 1 / (w^2 / n + (1 - w)^2 / N) photos, if the province is like the pool."""
        n = self.province_photos.get(province_id, 0)
        if province_id is None or n == 0:
            return float(self.photos)
        w = pooling_weight(n, self.pooling)
        return 1.0 / (w**2 / n + (1 - w) ** 2 / self.photos)


def _fit(pred: pd.DataFrame, cells: pd.DataFrame, kind: str, levels, pooling: float) -> RadiusCalibration:
    scores = pred["error_km"].to_numpy(float) / spread_km(pred, cells, kind)
    province = pred["pred_province_id"].to_numpy()
    pooled = {level: conformal_quantile(scores, level) for level in levels}
    counts = {p.id: int((province == p.id).sum()) for p in prov.PROVINCES}
    per_province = {}
    for p, n in counts.items():
        if n == 0:
            continue
        w = pooling_weight(n, pooling)
        own = scores[province == p]
        per_province[p] = {  # a province with too few photos for the level takes its largest score as its own
            level: math.exp(w * _log(conformal_quantile(own, level, own.max())) + (1 - w) * _log(q))
            for level, q in pooled.items()
        }
    return RadiusCalibration(kind, tuple(levels), pooled, per_province, len(pred), pooling, counts)


def pinball_loss(error_km: np.ndarray, radius_km: np.ndarray, level: float) -> np.ndarray:
    """[N] the quantile loss of each radius as the `level` quantile of the error: level x (e - R) above the
    radius, (1 - level) x (R - e) inside it."""
    d = np.asarray(error_km, float) - np.asarray(radius_km, float)
    return np.maximum(level * d, (level - 1) * d)


def _cross_fitted(pred: pd.DataFrame, cells, kind: str, levels, pooling: float, seed: int) -> dict:
    """Held-out pinball loss (provinces weighing alike), coverage and median radius of one candidate."""
    error, province = pred["error_km"].to_numpy(float), pred["province_id"].to_numpy()
    weight = 1.0 / pd.Series(province).map(pd.Series(province).value_counts()).to_numpy()
    loss, covered, top = (
        np.zeros((len(levels), len(pred))),
        np.zeros((len(levels), len(pred))),
        np.zeros(len(pred)),
    )
    rng = np.random.default_rng(seed)
    for _ in range(REPEATS):
        fold = rng.permutation(len(pred)) % FOLDS
        for f in range(FOLDS):
            held = fold == f
            # tau scaled to the calibration folds, so that a province's weight is the one it has on all photos
            calibration = _fit(pred[~held], cells, kind, levels, pooling * (FOLDS - 1) / FOLDS)
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


def calibrate(
    pred: pd.DataFrame, cells: pd.DataFrame, levels=LEVELS, seed: int = 0
) -> tuple[RadiusCalibration, pd.DataFrame]:
    """The calibration of validation predictions `pred` with the spread and pooling of the lowest
    cross-fitted pinball loss; also the table of every candidate, best first."""
    rows = [
        _cross_fitted(pred, cells, kind, levels, pooling, seed)
        for kind in SPREADS
        for pooling in POOLING_CHOICES
    ]
    candidates = pd.DataFrame(rows).sort_values("pinball_loss_km", kind="stable").reset_index(drop=True)
    best = candidates.iloc[0]
    return _fit(pred, cells, best["spread"], levels, float(best["pooling"])), candidates


def calibrated_range(level: float, calibration_photos: float, test_photos: int, mass: float = 0.95) -> tuple:
    """(low %, high %): the central `mass` of the coverages that a calibrated radius shows on `test_photos`
    photos when its quantile is the conformal one of `calibration_photos` exchangeable scores. Given the
    calibration photos, the coverage is Beta(k, n + 1 - k) distributed, k = ceil((n + 1) level); the count
    covered among the test photos is then beta-binomial. Both draws are in the range: on the demo's Punjab (28
    validation, 56 test photos) it spans 30-73 % at the 50 % level."""
    # imported here: predicting never needs it, and scipy.stats takes a second to import
    from scipy.stats import betabinom

    k = math.ceil((calibration_photos + 1) * level)
    if k > calibration_photos:  # too few photos for the level: an infinite radius covers every photo
        return 100.0, 100.0
    low, high = betabinom.interval(mass, test_photos, k, calibration_photos + 1 - k)
    return 100 * low / test_photos, 100 * high / test_photos


def coverage_table(pred: pd.DataFrame, radii: pd.DataFrame, calibration: RadiusCalibration) -> pd.DataFrame:
    """Per true province and overall: photos, the share within each radius (%), the median radius, and the
    range (95 %) in which a calibrated radius lands with these photo counts. A province's range counts the
    validation photos of its predicted-province quantile; the overall one counts every validation photo (the
    overall coverage averages the provinces' quantiles in their shares, so its spread is the pooled one's)."""
    rows = []
    groups = [(p.name, p.id, pred["province_id"] == p.id) for p in prov.PROVINCES] + [
        ("all", None, pred.index == pred.index)
    ]
    for name, province_id, mask in groups:
        if not mask.any():
            continue
        row = {"province": name, "photos": int(mask.sum())}
        for level in calibration.levels:
            r = radii.loc[mask, radius_column(level)]
            percent = round(100 * level)
            row[f"coverage_{percent}_%"] = 100 * float(np.mean(pred.loc[mask, "error_km"] <= r))
            row[f"median_radius_{percent}_km"] = float(r.median())
            low, high = calibrated_range(level, calibration.effective_photos(province_id), row["photos"])
            row[f"calibrated_{percent}_low_%"], row[f"calibrated_{percent}_high_%"] = low, high
        rows.append(row)
    return pd.DataFrame(rows).set_index("province")


def spearman(a, b) -> float:
    """Spearman's rank correlation (the Pearson correlation of average ranks); NaN when either is constant."""
    ranks = [pd.Series(np.asarray(v, float)).rank().to_numpy() for v in (a, b)]
    if min(r.std() for r in ranks) == 0:
        return float("nan")
    return float(np.corrcoef(*ranks)[0, 1])


def confidence_curve(pred: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """Accuracy against coverage: for x = 10 %, ..., 100 % the most confident x % of photos, their median error
    and accuracy within 25 km, beside the same shares ranked at random. Also the Spearman correlation between
    confidence and closeness (minus the error), and the mean median error over the curve (lower is better)."""
    confidence = pred["confidence"].to_numpy(float)
    error = pred["error_km"].to_numpy(float)
    by_confidence = np.argsort(-confidence, kind="stable")
    at_random = np.random.default_rng(seed).permutation(len(pred))
    rows = []
    for share in range(10, 101, 10):
        n = max(1, round(len(pred) * share / 100))
        kept, random_kept = error[by_confidence[:n]], error[at_random[:n]]
        rows.append(
            {
                "kept_%": share,
                "median_error_km": float(np.median(kept)),
                "acc_25km": 100 * float(np.mean(kept <= 25)),
                "random_median_error_km": float(np.median(random_kept)),
                "random_acc_25km": 100 * float(np.mean(random_kept <= 25)),
            }
        )
    curve = pd.DataFrame(rows).set_index("kept_%")
    summary = {
        "spearman_confidence_vs_closeness": spearman(confidence, -error),
        "curve_mean_median_km": float(curve["median_error_km"].mean()),
        "random_curve_mean_median_km": float(curve["random_median_error_km"].mean()),
    }
    return curve, summary
