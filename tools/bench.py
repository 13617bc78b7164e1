"""Benchmark: the training step with images through the encoders against the cached-feature step, and the
same for Phase 2's trained encoder tops on cached prefixes (tools/bench_phase2.py).

    python -m tools.bench                      # demo encoders and real-size random encoders
    python -m tools.bench --encoders tiny-random --data-dir data/demo --steps 50
    python -m tools.bench --geocells 100000    # time the geocell builder instead

Both paths run the training code itself (`setup.build_training`, its stepper, `loop.train_one_epoch`)
on the same photos, machine and batch size, side by side in one run:

- image path ("literal" below, the specification's way): the training DataLoader (JPEG decode and
  augmentation in `num_workers` processes), both frozen encoders and the heads at every step. The
  first batch (worker start-up) is not timed.
- cached: `train_one_epoch` over cached features (one warm-up epoch first; on CUDA the stepper is
  a captured CUDA graph), so the per-step bookkeeping of a real epoch is included.

The image path reuses the batched heads and the precomputed soft targets, so it is faster than a
step that loops over the seven heads in Python, and the ratio is conservative.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from geoloc_lib.base.devices import select_device, synchronize
from geoloc_lib.data.contract import load_dataset
from geoloc_lib.data.demo_data import TINY_DEMO, generate_demo_dataset, sample_locations
from geoloc_lib.data.feature_sources import CachedFeatures
from geoloc_lib.data.transforms import AugmentConfig
from geoloc_lib.geo.geocell_builder import assign_cells, build_geocells
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import seed_epoch, train_one_epoch
from geoloc_lib.train.setup import Training, build_training
from tools.bench_phase2 import phase2_table, time_phase2

DEFAULT_ENCODERS = "tiny-random,vit-b-32-resnet18-random"
EPOCH_STEPS = 1300  # the specification's batches per epoch
RUN_EPOCHS = 30  # the specification's epochs


@dataclass
class StepTiming:
    encoder: str
    extraction_images_per_s: float
    literal_s: float  # seconds per step with images through the encoders
    literal_steps: int
    cached_s: float  # seconds per cached-feature step
    cached_steps: int
    cached_flops: int  # matrix-product FLOPs of one cached step, forward + backward
    matmul_flops_per_s: float  # what this device reaches on the geocell heads' first-layer product

    @property
    def cached_floor_s(self) -> float:
        """Seconds the cached step's matrix products need at the measured rate, with zero overhead."""
        return self.cached_flops / self.matmul_flops_per_s

    @property
    def ratio(self) -> float:
        return self.literal_s / self.cached_s


def image_step_seconds(t: Training, steps: int) -> float:
    """Mean seconds of image-path steps 2..steps+1 of an epoch (step 1 pays the worker start-up)."""
    batches = torch.as_tensor(t.sampler.epoch_batches(1), device=t.device)  # [steps + 1, B]
    offset_weight = torch.tensor(1.0, device=t.device)
    t.model.train()
    start = None
    lrs = [[group["base_lr"] for group in t.optimizer.param_groups]] * len(batches)
    for step, _ in enumerate(t.stepper.run(batches, seed_epoch(0, 1, t.device), offset_weight, lrs)):
        if step == 0:
            synchronize(t.device)
            start = time.perf_counter()
    synchronize(t.device)
    return (time.perf_counter() - start) / steps


def _cached_step_flops(t: Training) -> int:
    idx = torch.as_tensor(t.sampler.epoch_batches(3)[0], device=t.device)  # [B]
    step = t.stepper.step
    with FlopCounterMode(display=False) as counter:
        t.optimizer.zero_grad(set_to_none=True)
        step(idx, *t.source.gather(idx, None), torch.tensor(1.0, device=t.device))
    return counter.get_total_flops()


def _matmul_flops_per_s(t: Training, rounds: int = 5, repeats: int = 10) -> float:
    """Best fp32 rate over `rounds` of [B, D] @ [D, U], the largest product of the cached step."""
    w = t.model.heads.geocell_heads.w_fused.detach()  # [D, U]
    x = torch.randn(t.cfg.batch_size, w.shape[0], device=t.device)  # [B, D]
    x @ w  # warm-up
    best = float("inf")
    for _ in range(rounds):
        synchronize(t.device)
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w
        synchronize(t.device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * x.numel() * w.shape[1] / best


def _extraction_rate(cfg: TrainConfig) -> float:
    """Images per second of filling the feature cache (train views and evaluation photos) from scratch."""
    device = select_device(cfg.device)
    data = load_dataset(cfg.data_dir, image_check="none")
    encoders = DualEncoder(cfg.encoders).to(device)
    fingerprint = encoders.fingerprint()
    start = time.perf_counter()
    CachedFeatures.prepare(
        cfg.cache,
        encoders,
        fingerprint,
        data.train,
        data.test,
        AugmentConfig(),
        device,
        lambda _: None,
    )
    return (cfg.cache_views * len(data.train) + len(data.test)) / (time.perf_counter() - start)


def common_settings(encoder: str, data_dir: str, work: Path, args: argparse.Namespace) -> dict:
    """The settings every timed run shares."""
    return {
        "data_dir": data_dir,
        "runs_dir": str(work / "runs"),
        "encoder": encoder,
        "batch_size": args.batch_size,
        "cache_views": 1,
        "cache_dir": str(work / "cache"),
        "device": args.device,
        "num_workers": args.num_workers,
    }


def time_encoder(encoder: str, data_dir: str, work: Path, args: argparse.Namespace) -> StepTiming:
    common = common_settings(encoder, data_dir, work, args)
    name = encoder.replace("/", "_")
    cached_cfg = TrainConfig(run_name=f"{name}-cached", batches_per_epoch=args.steps, **common)
    extraction_rate = _extraction_rate(cached_cfg)
    cached = build_training(cached_cfg, progress=False)  # reads the cache just written
    train_one_epoch(cached, 1)  # warm-up
    synchronize(cached.device)
    start = time.perf_counter()
    train_one_epoch(cached, 2)
    synchronize(cached.device)
    cached_s = (time.perf_counter() - start) / args.steps

    # Extraction runs decode + augmentation + both encoders, the bulk of an image-path step: use its
    # rate to fit that measurement into about --literal-seconds.
    estimate_s = args.batch_size / extraction_rate
    literal_steps = int(np.clip(args.literal_seconds / estimate_s, 2, args.steps))
    literal_cfg = TrainConfig(
        run_name=f"{name}-literal", feature_cache=False, batches_per_epoch=literal_steps + 1, **common
    )
    literal_s = image_step_seconds(build_training(literal_cfg, progress=False), literal_steps)
    return StepTiming(
        encoder,
        extraction_rate,
        literal_s,
        literal_steps,
        cached_s,
        args.steps,
        _cached_step_flops(cached),
        _matmul_flops_per_s(cached),
    )


def timing_table(timings: list[StepTiming], batch_size: int) -> str:
    header = (
        f"{'encoders':<26}{'extract img/s':>14}{'literal ms':>12}{'cached ms':>11}"
        f"{'literal s/ep':>14}{'cached s/ep':>13}{'ratio':>8}"
    )
    lines = [header]
    for t in timings:
        lines.append(
            f"{t.encoder:<26}{t.extraction_images_per_s:>14.0f}{1000 * t.literal_s:>12.1f}"
            f"{1000 * t.cached_s:>11.1f}{EPOCH_STEPS * t.literal_s:>14.1f}{EPOCH_STEPS * t.cached_s:>13.1f}"
            f"{t.ratio:>7.1f}x"
        )
    lines.append(
        f"(ms per step of batch {batch_size}; s/ep = one {EPOCH_STEPS}-step epoch; "
        f"literal timed over {', '.join(str(t.literal_steps) for t in timings)} steps, cached over "
        f"{timings[0].cached_steps})"
    )
    for t in timings:
        lines.append(
            f"{t.encoder}: {RUN_EPOCHS} epochs x {EPOCH_STEPS} steps = "
            f"{RUN_EPOCHS * EPOCH_STEPS * t.cached_s / 60:.1f} min cached vs "
            f"{RUN_EPOCHS * EPOCH_STEPS * t.literal_s / 3600:.1f} h with images through the encoders (feature extraction excluded)"
        )
        lines.append(
            f"  cached step = {t.cached_flops / 1e9:.2f} GFLOP of matrix products (forward + backward); at the "
            f"{t.matmul_flops_per_s / 1e9:.0f} GFLOP/s this device reaches on the heads' largest product "
            f"that alone takes {1000 * t.cached_floor_s:.1f} ms, which caps the ratio near "
            f"{t.literal_s / t.cached_floor_s:.0f}x"
        )
    return "\n".join(lines)


def bench_geocells(n: int) -> None:
    """Build geocells for `n` demo-distributed training points and assign them, timing both."""
    points = sample_locations(n, floor=min(500, n // 20), rng=np.random.default_rng(0))
    start = time.perf_counter()
    cells = build_geocells(points)
    built = time.perf_counter()
    assign_cells(points, cells)
    done = time.perf_counter()
    print(
        f"geocells for {len(points)} points: {len(cells)} cells, build {built - start:.1f}s, "
        f"assign {done - built:.2f}s"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", default=DEFAULT_ENCODERS, help="comma-separated encoder presets")
    parser.add_argument("--data-dir", default="", help="default: a generated tiny demo set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed cached steps, and at most as many literal ones (default: a whole 1300-step epoch on "
        "CUDA, where a short epoch would be mostly its fixed end-of-epoch work; 30 elsewhere)",
    )
    parser.add_argument(
        "--literal-seconds", type=float, default=30.0, help="rough time budget of each literal timing"
    )
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of the literal path")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--geocells", type=int, default=0, help="time the geocell builder on this many points"
    )
    args = parser.parse_args(argv)
    if args.geocells:
        bench_geocells(args.geocells)
        return
    if not args.steps:
        args.steps = EPOCH_STEPS if select_device(args.device).type == "cuda" else 30
    work = Path(tempfile.mkdtemp(prefix="geoloc-bench-"))
    data_dir = args.data_dir or str(generate_demo_dataset(work / "data", TINY_DEMO))
    encoders = [e.strip() for e in args.encoders.split(",")]
    timings = [time_encoder(e, data_dir, work, args) for e in encoders]
    phase2 = [
        time_phase2(
            e, common_settings(e, data_dir, work, args), args.steps, t.literal_steps, image_step_seconds
        )
        for e, t in zip(encoders, timings, strict=True)
    ]
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}"
    print(f"device: {name}, {torch.get_num_threads()} CPU threads; data: {data_dir}")
    print(timing_table(timings, args.batch_size))
    print(phase2_table(phase2, args.batch_size))


if __name__ == "__main__":
    main()
