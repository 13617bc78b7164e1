"""The closing paragraph of each notebook, computed from its results (Markdown text).

Each function reads the tables its notebook has just shown and says what they mean: which provinces are
thin or repeated, which fail and the likeliest reason (large cells, few photos, confusion with a
neighbour), and whether the model beats what it is compared with.
"""

from __future__ import annotations

import pandas as pd

LARGE_CELL_KM = 100  # a cell this wide caps how close a correct cell can get
FEW_PHOTOS = 50  # a province with fewer training photos than this is thin


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def audit(balance: pd.DataFrame, cells: pd.DataFrame, leakage: pd.DataFrame) -> str:
    """From 00: the province balance, the geocells and the leakage checks."""
    biggest, smallest = balance["train"].idxmax(), balance["train"].idxmin()
    lines = [
        f"{biggest} holds {balance.loc[biggest, 'train_share_%']:.0f} % of the training photos; the balanced "
        f"sampler gives it {balance.loc[biggest, 'batch_share_%']:.1f} % of each batch.",
        f"The thinnest province is {smallest}: {balance.loc[smallest, 'train']} training photos in "
        f"{balance.loc[smallest, 'cells']} cell(s).",
    ]
    wide = cells[cells["median_radius_km"] > LARGE_CELL_KM]
    for name, row in wide.iterrows():
        lines.append(
            f"{name}'s cells are wide (median radius {row['median_radius_km']:.0f} km over {row['cells']} "
            f"cell(s)): even the right cell leaves the offset head most of the work there."
        )
    leaks = leakage[leakage["count"] > 0]
    lines.append(
        "No leakage between train and test."
        if leaks.empty
        else "Leakage: " + "; ".join(f"{r.check}: {r.count}" for r in leaks.itertuples())
    )
    return _bullets(lines)


def sampler(repeats: pd.DataFrame) -> str:
    """From 01: how often each province's photos come back in one epoch."""
    most, least = repeats["draws_per_photo"].idxmax(), repeats["draws_per_photo"].idxmin()
    ratio = repeats.loc[most, "draws_per_photo"] / repeats.loc[least, "draws_per_photo"]
    return _bullets(
        [
            f"Every batch has the same province composition; {most}'s {repeats.loc[most, 'photos']} photos are "
            f"drawn {repeats.loc[most, 'draws_per_photo']:.1f} times each per epoch, {ratio:.0f}x as often as "
            f"{least}'s ({repeats.loc[least, 'draws_per_photo']:.1f}).",
            "Heavily repeated provinces can be memorised: watch their validation accuracy against training.",
        ]
    )


def model(counts: pd.DataFrame) -> str:
    """From 02: where the parameters are."""
    parts = counts.drop(index="total", errors="ignore")
    trainable, frozen = parts["trainable"].sum(), parts["frozen"].sum()
    largest = parts["trainable"].idxmax()
    return _bullets(
        [
            f"{trainable:,} trainable parameters against {frozen:,} frozen in the encoders.",
            f"The largest trainable part is the {largest} "
            f"({100 * parts.loc[largest, 'trainable'] / max(trainable, 1):.0f} % of the trainable weights).",
        ]
    )


def phase0(per_province: pd.DataFrame) -> str:
    """From 02b: the province head after pre-training, on validation."""
    rated = per_province[per_province["photos"] > 0]
    worst = rated["province_acc"].idxmin()
    return _bullets(
        [
            f"Balanced validation province accuracy {rated['province_acc'].mean():.1f} %.",
            f"Weakest: {worst} at {rated.loc[worst, 'province_acc']:.1f} % "
            f"({rated.loc[worst, 'photos']} validation photos).",
        ]
    )


def training(losses: pd.DataFrame, best_epoch: int, baseline_km: float) -> str:
    """From 03: the best epoch against the constant baseline, and how steady the last epochs were."""
    val = losses[losses["split"] == "val"].set_index("epoch")
    best = val.loc[best_epoch, "median_error_km"]
    tail = val["median_error_km"].tail(3)
    return _bullets(
        [
            f"Best epoch {best_epoch} of {val.index.max()}: validation median {best:.1f} km, "
            f"{baseline_km / best:.1f}x better than the constant baseline ({baseline_km:.0f} km).",
            f"Over the last {len(tail)} epochs the validation median ranged {tail.min():.1f}-{tail.max():.1f} km.",
            "The test split has not been read; 04_error_maps reads it once.",
        ]
    )


def errors(
    per_province: pd.DataFrame, cells: pd.DataFrame, train: pd.DataFrame, confusion: pd.DataFrame
) -> str:
    """From 04: the provinces that fail most, each with its likeliest reason."""
    rated = per_province[per_province["photos"] > 0].sort_values("median_error_km", ascending=False)
    lines = []
    for name, row in rated.head(3).iterrows():
        own = cells[cells["province"] == name]
        reasons = []
        if own["radius_km"].median() > LARGE_CELL_KM:
            reasons.append(
                f"its {len(own)} cell(s) are wide (median radius {own['radius_km'].median():.0f} km)"
            )
        photos = int((train["province"] == name).sum())
        if photos < FEW_PHOTOS:
            reasons.append(f"only {photos} training photos")
        wrong = confusion.loc[name].drop(name)
        if wrong.max() > 0:
            reasons.append(
                f"{wrong.max()} of {confusion.loc[name].sum()} photos were placed in {wrong.idxmax()}"
            )
        why = "; ".join(reasons) if reasons else "no single cause stands out (cell size, photos, confusion)"
        lines.append(
            f"**{name}**: median {row['median_error_km']:.0f} km, {row['acc_25km']:.0f} % within 25 km, province "
            f"accuracy {row['province_acc']:.0f} % - {why}."
        )
    best = rated.index[-1]
    lines.append(f"Best placed: {best}, median {rated.loc[best, 'median_error_km']:.0f} km.")
    return _bullets(lines)
