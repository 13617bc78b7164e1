"""`make gpu-check`: everything that needs a GPU, in one command, for a lent GPU machine.

    python -m tools.gpu_check                # writes runs/gpu_check/results.json
    python -m tools.gpu_check --smoke        # every size shrunk: checks the script itself (any device)

1. the GPU tests (tests/test_gpu.py: the CUDA-graph step against the eager step, a resumed CUDA run);
2. the step benchmark (tools.bench): images through the encoders at every step against the cached
   step (a CUDA graph on CUDA), for the demo encoders and the real system's architectures;
   and the Phase 2 step (the encoders' trained tops on cached prefixes) against its image path (tools.bench_phase2);
3. the extraction benchmark: photos per second of 448-px JPEGs decoded on the GPU and encoded in bf16 by
   ViT-B/16 + ResNet-50 (random weights), the clean view and four augmented views;
4. a full-size synthetic Phase 1: GEOPAK's 90,515 photos and province shares, their geocells, extraction
   with ViT-B/16 + ResNet-50, 30 epochs of 1,300 batches and a validation each epoch.

`--smoke` uses the tiny demo encoders and a few hundred photos, so that the script can be checked anywhere.

Each part is timed and recorded in results.json even when another one fails. Without a GPU everything runs
on the CPU (slowly) and the JSON says so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from geoloc_lib.base.devices import select_device, synchronize
from geoloc_lib.data.demo_data import DemoConfig, generate_demo_dataset
from geoloc_lib.data.feature_cache import augmented_features, clean_features
from geoloc_lib.data.transforms import AUGMENT_PRESETS
from geoloc_lib.model.encoder_config import resolve_encoder_config
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.run.folder import load_run_data
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit
from tools.bench import StepTiming, common_settings, image_step_seconds, time_encoder
from tools.bench_phase2 import time_phase2

FULL = {"photos": 90_515, "epochs": 30, "batches": 1300, "extract_photos": 4000, "steps": 1300}
SMOKE = {"photos": 1500, "epochs": 1, "batches": 10, "extract_photos": 120, "steps": 8}
REAL_SIZE = "vit-b-16-resnet50-random"  # the real system's architectures, random weights
WORKERS = min(8, os.cpu_count() or 1)


def gpu_tests() -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return {"returncode": result.returncode, "summary": result.stdout.strip().splitlines()[-1:]}


def step_bench(work: Path, sizes: dict, encoders: list[str]) -> list[dict]:
    args = argparse.Namespace(
        batch_size=64, steps=sizes["steps"], literal_seconds=30.0, num_workers=WORKERS, device="auto"
    )
    data = generate_demo_dataset(
        work / "bench_data", DemoConfig(n_train=2000, n_test=200, image_size=96, workers=WORKERS)
    )
    timings: list[StepTiming] = [time_encoder(e, str(data), work, args) for e in encoders]
    phase2 = [
        time_phase2(
            e, common_settings(e, str(data), work, args), args.steps, t.literal_steps, image_step_seconds
        )
        for e, t in zip(encoders, timings, strict=True)
    ]
    return [{**t.__dict__, "ratio": t.ratio, "floor_s": t.cached_floor_s} for t in timings] + [
        {**t.__dict__, "phase": 2, "ratio": t.ratio} for t in phase2
    ]


def extraction_bench(work: Path, sizes: dict, device: torch.device, encoder: str) -> dict:
    """Photos/s of extracting the clean view and 4 augmented views of 448-px JPEGs with `encoder`."""
    n = sizes["extract_photos"]
    data = generate_demo_dataset(
        work / "extract_data",
        DemoConfig(
            n_train=n,
            n_test=max(28, n // 10),
            image_size=448,
            min_per_province=12,
            geocell_min_samples=4,
            workers=WORKERS,
        ),
    )
    cfg = TrainConfig(
        data_dir=str(data), cache_dir=str(work / "extract_cache"), encoder=encoder,
        cache_views=4, augment="strong", eval_batch_size=256, num_workers=WORKERS,
    )  # fmt: skip
    encoders = DualEncoder(resolve_encoder_config(cfg.encoder)).to(device)
    train = load_run_data(cfg, "exists").train
    fingerprint = encoders.fingerprint()
    synchronize(device)
    start = time.perf_counter()
    clean_features(cfg.cache, train, encoders, fingerprint, device, log=lambda _: None)
    synchronize(device)
    clean_s = time.perf_counter() - start
    augmented_features(
        cfg.cache,
        encoders,
        fingerprint,
        train,
        AUGMENT_PRESETS["strong"],
        device,
        log=lambda _: None,
    )
    synchronize(device)
    views_s = time.perf_counter() - start - clean_s
    return {
        "photos": len(train),
        "clean_photos_per_s": len(train) / clean_s,
        "augmented_views_per_s": 4 * len(train) / views_s,
    }


def full_phase1(work: Path, sizes: dict, encoder: str) -> dict:
    """GEOPAK-sized synthetic data through data check, geocells (built with the data), extraction and training."""
    n = sizes["photos"]
    start = time.perf_counter()
    data = generate_demo_dataset(
        work / "geopak_data",
        DemoConfig(n_train=round(0.9 * n), n_test=n - round(0.9 * n), image_size=32, min_per_province=20,
                   geocell_min_samples=40, workers=WORKERS),
    )  # fmt: skip
    generated = time.perf_counter()
    cfg = TrainConfig(
        data_dir=str(data), runs_dir=str(work / "runs"), run_name="geopak", cache_dir=str(work / "geopak_cache"),
        encoder=encoder, epochs=sizes["epochs"], batches_per_epoch=sizes["batches"],
        num_workers=WORKERS, overwrite=True,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as log:
        result = fit(cfg, progress=False)
    lines = log.getvalue().splitlines()
    seconds = [
        float(line.split(", ")[-1].rstrip("s")) for line in lines if line.strip().startswith("offset weight")
    ]
    return {
        "photos": n,
        "cells": int(sum(1 for _ in open(Path(data) / "cell_metadata.csv")) - 1),
        "generate_s": generated - start,
        "fit_s": time.perf_counter() - generated,
        "epoch_s": seconds,
        "best_epoch": result.best_epoch,
        "val_median_km": result.best_metric,
        "stepper": json.loads((Path(result.run_dir) / "run_info.json").read_text())["stepper"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that every part runs")
    parser.add_argument("--out", default="runs/gpu_check", help="results.json and the scratch data go here")
    args = parser.parse_args(argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE if args.smoke else FULL
    device = select_device("auto")
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (no GPU)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "sizes": sizes,
    }
    big = "tiny-random" if args.smoke else REAL_SIZE  # the smoke run checks the script, not the speed
    parts = {
        "gpu_tests": gpu_tests,
        "step_bench": lambda: step_bench(work, sizes, sorted({"tiny-random", big})),
        "extraction": lambda: extraction_bench(work, sizes, device, big),
        "full_phase1": lambda: full_phase1(work, sizes, big),
    }
    for name, part in parts.items():
        start = time.perf_counter()
        try:
            results[name] = part()
        except Exception:  # record it and go on: the other parts' numbers still count
            results[name] = {"error": traceback.format_exc(limit=5)}
        results[f"{name}_wall_s"] = time.perf_counter() - start
        print(f"{name}: {results[f'{name}_wall_s']:.0f}s", flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
