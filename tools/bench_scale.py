"""Scale benchmark: every stage a user runs, on synthetic data of GEOPAK's size and province shares.

    python -m tools.bench_scale                       # 10k, 30k and 90k photos (make bench-scale)
    python -m tools.bench_scale --sizes 2000,6000     # a quick look

For each size it generates photos (32 px JPEGs, so that 90k fit on a small disk) with GEOPAK's province shares
(Sindh 72 %, ..., Azad Kashmir 1.2 %) and a 90/10 train/test split, then times, in order:

- contract: load and check the data folder, every photo decoded (image_check="decode");
- audit: province balance, geocell summary and the train/test leakage checks (every image hashed);
- geocells: rebuild the cells with GEOPAK's rules (>= 40 photos, about 50 km, 8 neighbours) and assign them;
- extraction: the clean features of every photo (the demo encoders); the 5-view augmented extraction of a
  GEOPAK-like run is extrapolated from the measured rate and marked so;
- epoch: one Phase 1 epoch of 1300 batches on the cached features, with its validation;
- predictor: the predictor on the whole test split, photos decoded and encoded again.

Per stage it prints the wall time, the peak resident memory of this process during the stage (Linux:
VmHWM, reset before each stage) and the size on disk of what the stage wrote, and between sizes the exponent
of growth (1 = linear). Not a test; about 25 minutes for the three default sizes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geoloc_lib.data.audit import geocell_summary, leakage_report, province_balance
from geoloc_lib.data.contract import load_dataset
from geoloc_lib.data.demo_data import REAL_PROVINCE_COUNTS, DemoConfig, generate_demo_dataset
from geoloc_lib.data.feature_cache import clean_features
from geoloc_lib.geo.geocell_builder import GeocellConfig, assign_cells, build_geocells
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.run.folder import load_run_data
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit

GEOPAK_PHOTOS = sum(REAL_PROVINCE_COUNTS)  # 90,515
GEOPAK_CELLS = 699
GEOPAK_VIEWS = 5  # augmented views a GEOPAK-like run would extract per training photo
EPOCH_BATCHES = 1300


@dataclass
class Stage:
    size: int
    name: str
    seconds: float
    peak_rss_mb: float
    disk_mb: float
    note: str = ""


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current size


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _disk_mb(*paths: Path) -> float:
    files = [f for p in paths if p.exists() for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


class Timer:
    """Times one stage: wall time, peak memory, and the disk size of `outputs` afterwards."""

    def __init__(self, size: int, stages: list[Stage]):
        self.size, self.stages = size, stages

    @contextlib.contextmanager
    def stage(self, name: str, *outputs: Path, note: str = ""):
        _reset_peak_rss()
        start = time.perf_counter()
        yield
        self.stages.append(
            Stage(self.size, name, time.perf_counter() - start, _peak_rss_mb(), _disk_mb(*outputs), note)
        )
        print(f"  {name}: {self.stages[-1].seconds:.1f}s", flush=True)


def geopak_like(size: int) -> DemoConfig:
    """GEOPAK's shares and split at `size` photos, as small JPEGs; cells as the demo data builds them."""
    return DemoConfig(n_train=round(0.9 * size), n_test=round(0.1 * size), image_size=32, min_per_province=20)


def run_size(size: int, work: Path, stages: list[Stage]) -> None:
    data_dir, runs_dir = work / f"data{size}", work / "runs"
    print(f"{size} photos", flush=True)
    timer = Timer(size, stages)
    with timer.stage("generate (not a user stage)", data_dir):
        generate_demo_dataset(data_dir, geopak_like(size))
    with timer.stage("contract (decode check)"):
        data = load_dataset(data_dir, image_check="decode")
    with timer.stage("audit"):
        province_balance(data), geocell_summary(data), leakage_report(data)
    with timer.stage("geocells (GEOPAK rules)"):
        cells = build_geocells(data.train, GeocellConfig(min_samples=40, target_radius_km=50, n_neighbors=8))
        assign_cells(data.train, cells), assign_cells(data.test, cells)
    stages[-1].note = f"{len(cells)} cells (GEOPAK: {GEOPAK_CELLS} for {GEOPAK_PHOTOS:,} photos)"
    cfg = TrainConfig(
        data_dir=str(data_dir), runs_dir=str(runs_dir), run_name=f"scale{size}", cache_dir=str(work / f"cache{size}"),
        epochs=1, batches_per_epoch=EPOCH_BATCHES, image_check="exists", overwrite=True,
    )  # fmt: skip
    carved = load_run_data(cfg)
    encoders = DualEncoder(cfg.encoders)
    with timer.stage("extraction (clean, all photos)", work / f"cache{size}"):
        for split in (carved.train, carved.val, carved.test):
            clean_features(cfg.cache, split, encoders, log=lambda _: None)
    extraction = stages[-1]
    rate = size / extraction.seconds
    stages.append(
        Stage(size, f"extraction ({GEOPAK_VIEWS} augmented views, extrapolated)",
              0.9 * size * GEOPAK_VIEWS / rate, float("nan"), float("nan"), f"at the measured {rate:.0f} photos/s")
    )  # fmt: skip
    with timer.stage("Phase 1 epoch (1300 batches) + validation", runs_dir / f"scale{size}"):
        with contextlib.redirect_stdout(io.StringIO()):  # the epoch summary stays in the run's log.txt
            fit(cfg, progress=False)
    with timer.stage("predictor (whole test split)"):
        evaluate_run(runs_dir / f"scale{size}", "test", baselines=False, progress=False)


def growth_table(stages: list[Stage]) -> pd.DataFrame:
    """One row per stage, one column per size, and the exponent of growth between the first and last size."""
    frame = pd.DataFrame(stages)
    sizes = sorted(frame["size"].unique())
    table = frame.pivot_table(index="name", columns="size", values="seconds", sort=False)
    if len(sizes) > 1:
        table["growth exponent"] = [
            math.log(row[sizes[-1]] / row[sizes[0]]) / math.log(sizes[-1] / sizes[0])
            for _, row in table.iterrows()
        ]
    return table


def report(stages: list[Stage]) -> str:
    frame = pd.DataFrame(stages)
    lines = [
        "seconds per stage (growth exponent 1 = linear, between the smallest and largest size):",
        growth_table(stages).round(2).to_string(),
        "",
        "peak resident memory (MB) and size on disk (MB) per stage:",
        frame.pivot_table(index="name", columns="size", values=["peak_rss_mb", "disk_mb"], sort=False)
        .round(0)
        .to_string(),
        "",
        *[f"{s.size}: {s.name}: {s.note}" for s in stages if s.note],
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,30000,90000", help="comma-separated photo counts")
    parser.add_argument(
        "--work-dir", default="runs/bench_scale", help="data, caches and runs (removed first)"
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    stages: list[Stage] = []
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(size, work, stages)
    text = report(stages)
    print(text)
    (work / "report.txt").write_text(text + "\n")
    pd.DataFrame(stages).to_csv(work / "stages.csv", index=False)


if __name__ == "__main__":
    main()
