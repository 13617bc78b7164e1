"""Accuracy benchmark: the demo configuration over several seeds, against the baseline ladder.

    python -m tools.bench_accuracy                 # seeds 0, 1, 2 on data/demo (make bench-accuracy)
    python -m tools.bench_accuracy --seeds 0,1,2,3,4
    python -m tools.bench_accuracy --set augment=strong --set beta=0.999 --splits val   # an ablation
    python -m tools.bench_accuracy --set encoder=tiny-random-clip+lite0-imagenet --phase2   # Phase 2 too

For each seed it trains Phase 0 and Phase 1 exactly as `make demo` does (the demo's epochs and batches,
every other setting at its default), then evaluates the best checkpoint on the validation split and,
once, on the test split. It prints the model's mean and range over the seeds next to the baseline
ladder, computed on the same rows and features, and writes the table to runs/bench_accuracy/. `--set`
changes any TrainConfig field in both phases (the ablations of docs/accuracy.md are such runs; each
setting gets its own folder). With `--phase2` each seed also trains Phase 2 from its Phase 1 run with the demo's
Phase 2 settings (make demo-phase2) and reports both phases on the same splits. Not a test: it takes several
minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import time
from pathlib import Path

import pandas as pd

from geoloc_lib.data.demo_data import DEMO_PRESETS, generate_demo_dataset
from geoloc_lib.evaluate.metrics import SUMMARY_METRICS, prediction_metrics
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.spec import TrainConfig, parse_settings
from geoloc_lib.train.fine_tune import phase1_run_config
from geoloc_lib.train.loop import fit
from tools.demo import DEMO_PHASE0, DEMO_PHASE1, DEMO_PHASE2

SHOWN = ["median_error_km", "p90_error_km", "acc_25km", "geoscore", "province_acc", "gate_alpha"]


def train_seed(data_dir: str, runs_dir: Path, seed: int, overrides: dict, phase0: bool = True) -> RunFolder:
    """Phase 0, then Phase 1 from its best checkpoint (from scratch without `phase0`), with the demo's settings;
    resumes finished runs."""
    common = {"data_dir": data_dir, "runs_dir": str(runs_dir), "seed": seed, "resume": True} | overrides
    start = {}
    if phase0:
        run0 = fit(
            TrainConfig(run_name=f"seed{seed}_phase0", phase=0, **common, **DEMO_PHASE0), progress=False
        )
        start["phase0_checkpoint"] = str(RunFolder(run0.run_dir).best_checkpoint(phase=0))
    phase1 = fit(TrainConfig(run_name=f"seed{seed}", **start, **common, **DEMO_PHASE1), progress=False)
    return RunFolder(phase1.run_dir)


def train_phase2(phase1: RunFolder) -> RunFolder:
    """Phase 2 from a Phase 1 run with the demo's Phase 2 settings (its data, split and model are Phase 1's)."""
    start = str(phase1.root)
    settings = DEMO_PHASE2 | {
        "run_name": f"{phase1.root.name}_phase2",
        "resume": True,
        "phase1_checkpoint": start,
    }
    cfg = TrainConfig.from_parameters(settings, base=phase1_run_config(start), phase=2)
    return RunFolder(fit(cfg, progress=False).run_dir)


def mean_and_range(values: pd.Series, digits: int = 1) -> str:
    return f"{values.mean():.{digits}f} [{values.min():.{digits}f}-{values.max():.{digits}f}]"


def ladder_report(model_rows: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """The model's mean [min-max] over seeds above the baselines (one value each), as text. The gate's mean
    weight on the scene CNN (`gate_alpha`) belongs to the model alone."""
    model = {c: mean_and_range(model_rows[c], 2 if c == "gate_alpha" else 1) for c in SHOWN}
    table = {"model (mean [min-max] over seeds)": model}
    table |= {
        name: {c: f"{row[c]:.1f}" if c in row else "" for c in SHOWN} for name, row in baselines.iterrows()
    }
    return pd.DataFrame(table).T


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--data-dir", default="data/demo", help="generated (default preset) when missing")
    parser.add_argument("--runs-dir", default="runs/bench_accuracy")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="change a setting")
    parser.add_argument(
        "--splits", default="val,test", help="val, test or both (the test split is the report)"
    )
    parser.add_argument(
        "--no-phase0", action="store_true", help="train Phase 1 from scratch, without Phase 0"
    )
    parser.add_argument("--phase2", action="store_true", help="also Phase 2 from each seed's Phase 1 run")
    args = parser.parse_args(argv)
    overrides = parse_settings(args.set)
    splits = args.splits.split(",")
    if not (Path(args.data_dir) / "train.csv").exists():
        generate_demo_dataset(args.data_dir, DEMO_PRESETS["default"])
    labels = [f"{k}={v}" for k, v in overrides.items()] + (["no_phase0"] if args.no_phase0 else [])
    phases = [1, 2] if args.phase2 else [1]
    runs_dir = Path(args.runs_dir) / ("_".join(labels) or "defaults")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, baselines = [], {}
    for seed in seeds:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch logs stay in each run's log.txt
            folder = train_seed(args.data_dir, runs_dir, seed, overrides, phase0=not args.no_phase0)
            folders = {1: folder, 2: train_phase2(folder)} if args.phase2 else {1: folder}
            for (phase, run), split in itertools.product(folders.items(), splits):
                evaluation = evaluate_run(
                    run.root,
                    split,
                    out_dir=run.evaluation / split,
                    baselines=split not in baselines,
                    progress=False,
                )
                baselines.setdefault(split, evaluation.tables.get("baselines"))
                metrics = prediction_metrics(evaluation.predictions)
                rows.append({"seed": seed, "phase": phase, "split": split, **metrics})
        print(f"seed {seed}: {time.perf_counter() - started:.0f}s ({folder.root})", flush=True)
    results = pd.DataFrame(rows)
    results.to_csv(runs_dir / "seeds.csv", index=False)
    for phase, split in itertools.product(phases, splits):
        part = results[(results["split"] == split) & (results["phase"] == phase)]
        report = ladder_report(part, baselines[split][SUMMARY_METRICS])
        report.to_csv(runs_dir / f"ladder_{split}{'_phase2' if phase == 2 else ''}.csv")
        median = part["median_error_km"]
        spread = (median.max() - median.min()) / median.mean()
        setting = ", ".join(labels) or "default settings"
        print(
            f"\nPhase {phase}, {split} split, seeds {seeds}, {setting}; median range / mean = {100 * spread:.0f} %"
        )
        print(report.to_string())


if __name__ == "__main__":
    main()
