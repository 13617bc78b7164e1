"""The closing paragraph of each notebook, computed from its results (Markdown text).

Each function reads the tables its notebook has just shown and says what they mean: which provinces are
thin or repeated, which fail and the likeliest reason (large cells, few photos, confusion with a
neighbour), and whether the model beats what it is compared with.
"""

from __future__ import annotations

import math

import pandas as pd

LARGE_CELL_KM = 100  # a cell this wide caps how close a correct cell can get
FEW_PHOTOS = 50  # a province with fewer training photos than this is thin
SMALL_CELL_PHOTOS = 8  # the smallest geocell the advice suggests (fewer photos per cell learn little)
OVERFIT_EPOCHS = 2  # validation loss above its minimum for this many epochs, training loss still falling


def compare_errors(model_km: float, other_km: float, other: str) -> str:
    """The model's error against another's, in the right direction: "3.4x worse than X (190 km)"."""
    if not model_km > 0 or not other_km > 0 or model_km == other_km:
        return f"level with {other} ({other_km:.1f} km)"
    ratio = max(model_km, other_km) / min(model_km, other_km)
    word = "better" if model_km < other_km else "worse"
    amount = f"{ratio:.1f}x" if ratio >= 1.5 else f"{100 * (ratio - 1):.0f} %"
    return f"{amount} {word} than {other} ({other_km:.1f} km)"


def _overfitting(losses: pd.DataFrame, best_epoch: int) -> str | None:
    """A sentence when the validation loss has risen for several epochs while the training loss fell."""
    val = losses[losses["split"] == "val"].set_index("epoch")["loss_total"]
    train = losses[losses["split"] == "train"].set_index("epoch")["loss_total"]
    lowest, last = int(val.idxmin()), int(val.index.max())
    if last - lowest < OVERFIT_EPOCHS or not train.loc[last] < train.loc[lowest]:
        return None
    rose = (
        f"the validation loss rose from {val.loc[lowest]:.3f} (epoch {lowest}) to {val.loc[last]:.3f} (epoch "
        f"{last}) while the training loss fell from {train.loc[lowest]:.3f} to {train.loc[last]:.3f}"
    )
    if best_epoch == last:  # the median, which picks the checkpoint, still improves: the two disagree
        return (
            f"**Loss and median disagree**: {rose}, yet the validation median was lowest at the last epoch "
            f"({last}): the model grows more confident where it is wrong while placing more photos closer. "
            "More epochs may still lower the median; watch whether it keeps falling."
        )
    return (
        f"**Overfitting**: {rose}. The kept checkpoint is epoch {best_epoch} (lowest validation median); more "
        "epochs will not help without more data, augmentation or regularisation."
    )


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
        photos = int(balance.loc[name, "train"])
        most = photos // SMALL_CELL_PHOTOS
        fix = (
            f"To split them, re-ingest with a smaller --geocell-min-samples (each cell needs that many training "
            f"photos; {photos} allow at most {most} cells of {SMALL_CELL_PHOTOS}), or add photos from more places."
            if most > row["cells"]
            else f"Its {photos} training photos are too few for more cells of {SMALL_CELL_PHOTOS}: add photos from "
            "more places there."
        )
        lines.append(
            f"{name}'s cells are wide (median radius {row['median_radius_km']:.0f} km over {int(row['cells'])} "
            f"cell(s)): even the right cell leaves the offset head most of the work there. {fix}"
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
    """From 03: the best epoch against the constant baseline (with a warning when it loses), overfitting,
    and how steady the last epochs were."""
    val = losses[losses["split"] == "val"].set_index("epoch")
    best = val.loc[best_epoch, "median_error_km"]
    tail = val["median_error_km"].tail(3)
    lines = [
        f"Best epoch {best_epoch} of {val.index.max()}: validation median {best:.1f} km, "
        f"{compare_errors(best, baseline_km, 'the constant baseline')}."
    ]
    if best >= baseline_km:
        lines.append(
            "**Warning**: the model does not beat a constant guess; train longer, check the data, or lower the lr."
        )
    overfit = _overfitting(losses, best_epoch)
    if overfit:
        lines.append(overfit)
    lines += [
        f"Over the last {len(tail)} epochs the validation median ranged {tail.min():.1f}-{tail.max():.1f} km.",
        "The test split has not been read; 04_error_maps reads it once.",
    ]
    return _bullets(lines)


def ladder(table: pd.DataFrame) -> str:
    """From 04: the model (the first row) against every rung of the baseline ladder, by median error; a
    warning names each rung the model does not beat."""
    model_name, model = table.index[0], table.iloc[0]
    lines, lost = [], []
    for name, rung in table.iloc[1:].iterrows():
        lines.append(f"{compare_errors(model['median_error_km'], rung['median_error_km'], name)}.")
        if model["median_error_km"] >= rung["median_error_km"]:
            lost.append(name)
    head = f"The {model_name} has a median error of {model['median_error_km']:.1f} km."
    if lost:
        lines.append(
            f"**Warning**: the model does not beat {', '.join(lost)}; its results are not yet useful."
        )
    return _bullets([head, *lines])


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


def _radius_held(coverage: pd.DataFrame, level: str) -> str:
    """One level's sentence: how often its radius held, overall and per province, against the calibrated range;
    or why it cannot be judged (an infinite radius holds for every photo by construction)."""
    overall, column = coverage.loc["all"], f"coverage_{level}_%"
    if not math.isfinite(overall[f"median_radius_{level}_km"]):
        needed = math.ceil(int(level) / (100 - int(level)) - 1e-9)
        return (
            f"The {level} % radius cannot be judged: the validation split had too few photos to calibrate it "
            f"(a {level} % radius needs at least {needed} in a province or overall), so it is infinite and "
            "holds for every photo by construction. Train on more photos, or a larger val_fraction."
        )
    low, high = coverage[f"calibrated_{level}_low_%"], coverage[f"calibrated_{level}_high_%"]
    outside = (coverage[column] < low) | (coverage[column] > high)
    missed = [f"{p} ({coverage.loc[p, column]:.0f} %)" for p in coverage.index[outside] if p != "all"]
    verdict = (
        "inside the range a calibrated radius shows on as many photos"
        if not outside["all"]
        else "**off its level**: these photos are not like the validation photos"
    )
    provinces = (
        f"Outside their own ranges: {', '.join(missed)}." if missed else "Every province is inside its range."
    )
    return (
        f"The {level} % radius (median {overall[f'median_radius_{level}_km']:.0f} km) held for {overall[column]:.1f} % "
        f"of the {int(overall['photos'])} photos ({low['all']:.0f}-{high['all']:.0f} % expected), {verdict}. "
        f"{provinces}"
    )


def trust(coverage: pd.DataFrame, ranking: pd.DataFrame) -> str:
    """From 04: how often the credible radii held on this split, overall and in each province, against the
    range a calibrated radius shows with as many photos; how large the radii are; whether the confidence orders
    the errors."""
    levels = [
        c.removeprefix("coverage_").removesuffix("_%") for c in coverage.columns if c.startswith("coverage_")
    ]
    lines = [_radius_held(coverage, level) for level in levels]
    rho = ranking.loc["spearman_confidence_vs_closeness", "value"]
    kept, shuffled = (
        ranking.loc["curve_mean_median_km", "value"],
        ranking.loc["random_curve_mean_median_km", "value"],
    )
    if not all(math.isfinite(v) for v in (rho, kept, shuffled)):
        lines.append(
            "Whether confidence orders the errors cannot be judged here: confidence is the same for every photo "
            "(its radius is infinite or constant), so there is no order to compare with the errors."
        )
        return _bullets(lines)
    order = "orders the errors" if rho > 0 else "**does not order the errors**"
    lines.append(
        f"Confidence {order}: Spearman {rho:.2f} with closeness; keeping the most confident photos gives a mean "
        f"median error of {kept:.0f} km over the curve, against {shuffled:.0f} km for the same shares at random."
    )
    return _bullets(lines)


def fusion_gate(predictions: pd.DataFrame, scene: str, clip: str) -> str:
    """What the gate's mean weight on the scene CNN (0: all CLIP, 1: all scene CNN) says about the encoders."""
    if "gate_alpha" not in predictions:
        return _bullets(["These predictions were written before the gate's weight was recorded."])
    alpha = float(predictions["gate_alpha"].mean())
    leaning = "the scene CNN" if alpha > 0.55 else "the CLIP tower" if alpha < 0.45 else "neither encoder"
    return _bullets(
        [
            f"The fusion gate gives the scene CNN ({scene}) a mean weight of {alpha:.2f} on these photos, and "
            f"the CLIP tower ({clip}) {1 - alpha:.2f}: it leans on {leaning}.",
            "The weight is learned per feature and per photo from both encoders' outputs, so it follows which "
            "features help the loss on this data, not which network is pretrained.",
        ]
    )


def comparison(best: pd.DataFrame) -> str:
    """Which run is best on validation, by how much, and what one training seed per run can and cannot say."""
    ranked = best.sort_values("median_error_km")
    winner, rest = ranked.index[0], ranked.iloc[1:]
    lines = [
        f"Best on validation: **{winner}**, median {ranked['median_error_km'].iloc[0]:.1f} km "
        f"(epoch {int(ranked['best_epoch'].iloc[0])})."
    ]
    lines += [
        f"{name}: {compare_errors(row['median_error_km'], ranked['median_error_km'].iloc[0], winner)}."
        for name, row in rest.iterrows()
    ]
    lines.append(
        "Each run is one training seed: a gap smaller than the seed-to-seed range (5-15 % of the median on the "
        "demo, docs/accuracy.md) is no evidence. Repeat a setting over 3 seeds (`make bench-accuracy`, "
        "`--set FIELD=VALUE`) before choosing it, and choose on validation, never on the test split."
    )
    return _bullets(lines)


def fine_tuning(best: pd.DataFrame, phase1: str, phase2: str, stopped: str | None) -> str:
    """From 03b: Phase 2's best validation epoch against the Phase 1 run it started from (rows of
    `run_comparison.best_validation`), and why it stopped."""
    start, tuned = best.loc[phase1, "median_error_km"], best.loc[phase2, "median_error_km"]
    started = f"Phase 1 ({phase1}, epoch {int(best.loc[phase1, 'best_epoch'])})"
    lines = [
        f"Phase 2 best epoch {int(best.loc[phase2, 'best_epoch'])}: validation median {tuned:.1f} km, "
        f"{compare_errors(tuned, start, started)}."
    ]
    if not tuned < start:
        lines.append(
            f"**Phase 2 did not improve on Phase 1**: predict with {phase1}, or try lower lr_clip / lr_scene, fewer "
            "unfrozen blocks, or augmentation against overfitting."
        )
    lines.append(
        f"Stopped early: {stopped}." if stopped else "Trained every epoch; no early-stopping signal fired."
    )
    lines.append(
        "One seed: a gap under the seed-to-seed range (docs/accuracy.md) is no evidence; the test split is read "
        "once, by 04_error_maps on this run."
    )
    return _bullets(lines)
