"""Calibration benchmark: the credible radii judged over several generated datasets, not on one draw.

    python -m tools.bench_calibration                  # datasets 21-30 (make bench-calibration)
    python -m tools.bench_calibration --datasets 21,22,23 --test-photos 3000

A split's coverage moves with its photo counts: were the demo's Punjab calibrated on its 28 validation photos alone
and scored on its 56 test photos, a perfectly calibrated 50 % radius would land anywhere in 30-73 %. One dataset
therefore cannot tell a better calibration from a luckier one. This tool generates datasets of the demo's sizes but
with a larger test split (`DemoConfig(seed=s, n_test=...)` under data/bench_calibration/), trains each one as `make
demo` does (Phase 0, then Phase 1, resumed when finished; runs/bench_calibration/), predicts its test split once,
and calibrates the radii with the current code on the run's validation predictions. For every dataset and every
province with at least 50 test photos it prints the coverage at each level beside the range a calibrated radius
shows with those photo counts (`calibrated_range`), then each province's mean over the datasets. With 95 % ranges
about one row in twenty falls outside by chance. Its last lines are the verdict: at least 90 % of the coverages
inside their ranges, and each group's mean coverage over the datasets (every province and all photos, at each
level) no further from its level than chance allows: its z-score, the distance in units of the chance spread of
a mean of that many calibrated coverages, within the 95 % bound corrected for the number of means compared
(Bonferroni: about 2.9 for 14 means). A fixed band of a few points would be narrower than chance for a small
province, which even a perfect calibration would fail. The datasets are development data: their test splits
are not the demo's. About 80 s per dataset on 2 CPU cores; a rerun only recalibrates. Not a test.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from geoloc_lib.data.contract import load_cell_metadata
from geoloc_lib.data.demo_data import DemoConfig, generate_demo_dataset
from geoloc_lib.evaluate.calibration import calibrate, coverage_table
from geoloc_lib.inference.run_evaluation import evaluate_run, read_evaluation
from geoloc_lib.viz.notebook import project_root
from tools.bench_accuracy import train_seed

MIN_TEST_PHOTOS = 50  # the provinces reported, as in the acceptance bands of the credible radii
MIN_INSIDE_SHARE = 0.90  # of all coverages inside their calibrated ranges (95 % would be by chance alone)
FAMILY_ALPHA = (
    0.05  # the chance that any of the group means strays past its bound when calibration is perfect
)
DATA_ROOT, RUNS_ROOT = Path("data/bench_calibration"), Path("runs/bench_calibration")


def dataset_coverage(dataset_seed: int, test_photos: int) -> pd.DataFrame:
    """The coverage table of one generated dataset's test split, with radii calibrated by the current code."""
    data_dir = DATA_ROOT / f"seed{dataset_seed}"
    if not (data_dir / "train.csv").exists():
        generate_demo_dataset(data_dir, DemoConfig(seed=dataset_seed, n_test=test_photos))
    run = train_seed(str(data_dir), RUNS_ROOT / f"data{dataset_seed}", seed=0, overrides={})
    try:
        test = read_evaluation(run.evaluation, "predictions")
    except ValueError:  # not evaluated yet, or left part-way
        test = evaluate_run(run.root, "test", baselines=False, progress=False).predictions
    cells = load_cell_metadata(data_dir / "cell_metadata.csv")
    calibration, _ = calibrate(pd.read_csv(run.val_predictions_best), cells)
    table = coverage_table(test, calibration.radii(test, cells), calibration)
    return table[table["photos"] >= MIN_TEST_PHOTOS]


def summary(tables: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every dataset's rows with an `inside` flag per level, each province's mean and range over datasets)."""
    rows = pd.concat(tables, names=["dataset", "province"])
    levels = [
        c.removeprefix("coverage_").removesuffix("_%") for c in rows.columns if c.startswith("coverage_")
    ]
    for level in levels:
        coverage = rows[f"coverage_{level}_%"]
        low, high = rows[f"calibrated_{level}_low_%"], rows[f"calibrated_{level}_high_%"]
        rows[f"inside_{level}"] = (coverage >= low) & (coverage <= high)
    coverage_columns = [f"coverage_{level}_%" for level in levels]
    by_province = rows.groupby(level="province")[coverage_columns].agg(["mean", "min", "max"])
    by_province.columns = [f"{column} {stat}" for column, stat in by_province.columns]  # "coverage_50_% mean"
    by_province.insert(0, "datasets", rows.groupby(level="province").size())
    return rows, by_province


def chance_spread(rows: pd.DataFrame, level: str) -> pd.Series:
    """Per province, the half-width (95 %) of the mean coverage over the datasets that calibrated radii would
    show by chance: each dataset's range read as a normal one (half-width 1.96 sd), the mean's sd
    sqrt(sum sd^2) / datasets."""
    sd = (rows[f"calibrated_{level}_high_%"] - rows[f"calibrated_{level}_low_%"]) / (2 * 1.96)
    grouped = (sd**2).groupby(level="province")
    return 1.96 * np.sqrt(grouped.sum()) / grouped.size()


def z_bound(groups: int, alpha: float = FAMILY_ALPHA) -> float:
    """The two-sided bound on |z| that `groups` means, each a normal z under perfect calibration, all stay within
    with probability at least 1 - alpha (Bonferroni)."""
    return NormalDist().inv_cdf(1 - alpha / (2 * groups))


def verdict(rows: pd.DataFrame, by_province: pd.DataFrame) -> tuple[bool, list[str]]:
    """(passed, lines): at least MIN_INSIDE_SHARE of the coverages inside their ranges, and no group's mean
    coverage over the datasets further from its level than `z_bound` chance spreads."""
    inside = rows[[c for c in rows.columns if c.startswith("inside_")]].to_numpy()
    share = inside.mean()
    passed = share >= MIN_INSIDE_SHARE
    lines = [
        f"{'PASS' if passed else 'FAIL'}: {int(inside.sum())} of {inside.size} coverages ({100 * share:.1f} %) "
        f"inside their calibrated ranges (at least {100 * MIN_INSIDE_SHARE:.0f} % wanted)"
    ]
    means = [c for c in by_province.columns if c.endswith(" mean")]
    bound = z_bound(len(means) * len(by_province))
    scores = {}
    for column in means:
        level = float(column.removeprefix("coverage_").split("_")[0])
        sd = chance_spread(rows, f"{level:.0f}") / 1.96  # of the mean over the datasets
        for province, mean in by_province[column].items():
            z = (mean - level) / sd[province]
            scores[f"{province} at {level:.0f} %"] = z
            lines.append(
                f"{'PASS' if abs(z) <= bound else 'FAIL'}: {province} mean coverage at {level:.0f} %: {mean:.1f} % "
                f"(a calibrated radius's mean: {level:.0f} +- {1.96 * sd[province]:.1f}; z = {z:+.2f})"
            )
    worst = max(scores, key=lambda group: abs(scores[group]))
    passed &= abs(scores[worst]) <= bound
    lines.append(
        f"largest |z|: {abs(scores[worst]):.2f} ({worst}); bound {bound:.2f} for {len(scores)} means "
        f"(Bonferroni, {100 * FAMILY_ALPHA:.0f} % for them all)"
    )
    lines.append(f"verdict: {'PASS' if passed else 'FAIL'}")
    return bool(passed), lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", default="21,22,23,24,25,26,27,28,29,30", help="comma-separated DemoConfig seeds"
    )
    parser.add_argument("--test-photos", type=int, default=2000, help="test photos per dataset")
    args = parser.parse_args(argv)
    os.chdir(project_root(Path(__file__).parent))
    started = time.perf_counter()
    tables = {}
    for seed in (int(s) for s in args.datasets.split(",")):
        tables[seed] = dataset_coverage(seed, args.test_photos)
        print(f"dataset {seed} done at {time.perf_counter() - started:.0f}s", flush=True)
    rows, by_province = summary(tables)
    pd.set_option("display.width", 200)
    print(
        f"\nCoverage (%) of each test split beside the 95 % range of a calibrated radius (>= {MIN_TEST_PHOTOS} photos):"
    )
    print(rows.round(1).to_string())
    inside = rows[[c for c in rows.columns if c.startswith("inside_")]]
    print(f"\n{int(inside.to_numpy().sum())} of {inside.size} coverages inside their ranges (95 % expected).")
    print("\nMean and range over the datasets:")
    print(by_province.round(1).to_string())
    RUNS_ROOT.mkdir(parents=True, exist_ok=True)
    rows.to_csv(RUNS_ROOT / "coverage.csv")
    print(f"\nwritten to {RUNS_ROOT / 'coverage.csv'}\n")
    print("\n".join(verdict(rows, by_province)[1]))  # the verdict is the last lines


if __name__ == "__main__":
    main()
