"""How well a sureness ranks errors: accuracy against the share of photos kept when the least sure are dropped.

A calibrated run's confidence (`evaluate/calibration.py`, 1 / (1 + R90 / 25 km)) is one ranking; the 90 % radius
itself, the top hypothesis's probability (`pred_cell_prob`, the heads' own uncalibrated sureness and the
fallback of an uncalibrated run) and a random order are the others. A ranking that orders errors well makes the
kept photos' errors fall as fewer are kept, which the random one does not. What each ranking does on the demo is
measured in `docs/trust.md` (figures go stale at every retrain, so none is kept here).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def spearman(a, b) -> float:
    """Spearman's rank correlation (the Pearson correlation of average ranks); NaN when either is constant."""
    ranks = [pd.Series(np.asarray(v, float)).rank().to_numpy() for v in (a, b)]
    if min(r.std() for r in ranks) == 0:
        return float("nan")
    return float(np.corrcoef(*ranks)[0, 1])


# each ranking keeps the photos it ranks first: (column, True where a larger value is surer)
SELECTIVE_RANKINGS = {
    "confidence": ("confidence", True),
    "90 % radius": ("radius_90_km", False),
    "top hypothesis": ("pred_cell_prob", True),
}
SELECTIVE_SHARES = tuple(range(5, 101, 5))  # % of photos kept
SELECTIVE_FIGURES = (50, 80, 100)  # the shares quoted in 04's table and conclusion


def selective_accuracy(pred: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """Accuracy against the share kept when the least sure photos are dropped: for each ranking of
    `SELECTIVE_RANKINGS` that `pred` has, and a random one, and every share x of `SELECTIVE_SHARES`, the first x %
    of photos (at least one) with their median error and accuracy within 25 km. Rows (ranking, kept_%). Ties keep
    the photos' order. A calibrated run's confidence is a falling function of its 90 % radius, so those two
    rankings coincide; the top hypothesis's probability is the heads' own, uncalibrated sureness. Also the
    Spearman correlation between confidence and closeness (minus the error), and the mean median error over the
    confidence curve and the random one (lower is better)."""
    error = pred["error_km"].to_numpy(float)
    orders = {
        name: np.argsort(
            -pred[column].to_numpy(float) if surer_high else pred[column].to_numpy(float), kind="stable"
        )
        for name, (column, surer_high) in SELECTIVE_RANKINGS.items()
        if column in pred
    }
    orders["random"] = np.random.default_rng(seed).permutation(len(pred))
    rows = []
    for name, order in orders.items():
        for share in SELECTIVE_SHARES:
            kept = error[order[: max(1, round(len(pred) * share / 100))]]
            rows.append(
                {
                    "ranking": name,
                    "kept_%": share,
                    "photos": len(kept),
                    "median_error_km": float(np.median(kept)),
                    "acc_25km": 100 * float(np.mean(kept <= 25)),
                }
            )
    curve = pd.DataFrame(rows).set_index(["ranking", "kept_%"])
    median = curve["median_error_km"].unstack("ranking")
    summary = {
        "spearman_confidence_vs_closeness": spearman(pred["confidence"], -error),
        "curve_mean_median_km": float(median["confidence"].mean()),
        "random_curve_mean_median_km": float(median["random"].mean()),
    }
    return curve, summary


def selective_figures(curve: pd.DataFrame, shares=SELECTIVE_FIGURES) -> pd.DataFrame:
    """The curve at a few shares: one row per ranking, median error and accuracy within 25 km at each share."""
    at = curve[curve.index.get_level_values("kept_%").isin(shares)]
    table = at[["median_error_km", "acc_25km"]].unstack("kept_%")
    table.columns = [f"{metric} at {share} %" for metric, share in table.columns]
    return table.loc[curve.index.get_level_values("ranking").unique()]
