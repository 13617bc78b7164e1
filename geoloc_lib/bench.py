"""Benchmark: the seed-literal training step against the cached-feature step, side by side in one run.

    python -m geoloc_lib.bench                      # demo encoders and real-size random encoders
    python -m geoloc_lib.bench --encoders tiny-random --data-dir data/demo --steps 50
    python -m geoloc_lib.bench --geocells 100000    # time the geocell builder instead

Both paths run the real `Trainer` code on the same photos, machine and batch size:

- seed-literal: the training DataLoader (JPEG decode + augmentation in `num_workers` processes), both
  frozen encoders and the heads at every step. The first batch (worker start-up) is not timed.
- cached: `Trainer.train_epoch` over cached features (one warm-up epoch first, which on CUDA also
  captures the CUDA graph), so the per-step bookkeeping of a real epoch is included.

The seed-literal reference reuses our batched heads and vectorised soft targets, so it is faster than
the original system's step (a Python loop over the seven heads, pandas per sample) and the ratio is
conservative.
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

from .demo_data import TINY_DEMO, generate_demo_dataset, sample_locations
from .geocells import assign_cells, build_geocells
from .train import TrainConfig, Trainer, select_device

DEFAULT_ENCODERS = "tiny-random,vit-b-32-resnet18-random"
EPOCH_STEPS = 1300  # the seed's batches per epoch
RUN_EPOCHS = 30  # the seed's epochs


@dataclass
class StepTiming:
    encoder: str
    extraction_images_per_s: float
    literal_s: float  # seconds per seed-literal step
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _literal_step_seconds(trainer: Trainer, steps: int) -> float:
    """Mean seconds of seed-literal steps 2..steps+1 of an epoch (step 1 pays the worker start-up)."""
    device = trainer.device
    batches = torch.as_tensor(trainer.sampler.epoch_batches(1), device=device)  # [steps + 1, B]
    offset_weight = torch.tensor(1.0, device=device)
    trainer.model.train()
    start = None
    for step, (images, _) in enumerate(trainer._literal_loader(1)):
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._step(*trainer.encode(images), batches[step], offset_weight)
        if step == 0:
            _sync(device)
            start = time.perf_counter()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _cached_step_flops(trainer: Trainer) -> int:
    device = trainer.device
    idx = torch.as_tensor(trainer.sampler.epoch_batches(3)[0], device=device)  # [B]
    with FlopCounterMode(display=False) as counter:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._step(*trainer._features_for(idx, None), idx, torch.tensor(1.0, device=device))
    return counter.get_total_flops()


def _matmul_flops_per_s(trainer: Trainer, rounds: int = 5, repeats: int = 10) -> float:
    """Best fp32 rate over `rounds` of [B, D] @ [D, U], the largest product of the cached step."""
    w = trainer.model.heads.geocell_heads.w_fused.detach()  # [D, U]
    x = torch.randn(trainer.cfg.batch_size, w.shape[0], device=trainer.device)  # [B, D]
    x @ w  # warm-up
    best = float("inf")
    for _ in range(rounds):
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w
        _sync(trainer.device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * x.numel() * w.shape[1] / best


def time_encoder(encoder: str, data_dir: str, work: Path, args: argparse.Namespace) -> StepTiming:
    common = {
        "data_dir": data_dir,
        "runs_dir": str(work / "runs"),
        "encoder": encoder,
        "batch_size": args.batch_size,
        "cache_views": 1,
        "cache_dir": str(work / "cache"),
        "device": args.device,
        "num_workers": args.num_workers,
    }
    name = encoder.replace("/", "_")
    cached = Trainer(
        TrainConfig(run_name=f"{name}-cached", batches_per_epoch=args.steps, **common), progress=False
    )
    start = time.perf_counter()
    cached.prepare_features()
    n_images = len(cached.data.train) + len(cached.data.test)
    extraction_rate = n_images / (time.perf_counter() - start)

    cached.train_epoch(1)  # warm-up; on CUDA this also captures the graph
    _sync(cached.device)
    start = time.perf_counter()
    cached.train_epoch(2)
    _sync(cached.device)
    cached_s = (time.perf_counter() - start) / args.steps

    # Extraction runs decode + augmentation + both encoders, the bulk of a literal step: use its rate
    # to fit the literal measurement into about --literal-seconds.
    estimate_s = args.batch_size / extraction_rate
    literal_steps = int(np.clip(args.literal_seconds / estimate_s, 2, args.steps))
    literal = Trainer(
        TrainConfig(
            run_name=f"{name}-literal", feature_cache=False, batches_per_epoch=literal_steps + 1, **common
        ),
        progress=False,
    )
    literal_s = _literal_step_seconds(literal, literal_steps)
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
            f"{RUN_EPOCHS * EPOCH_STEPS * t.literal_s / 3600:.1f} h seed-literal (feature extraction excluded)"
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
    timings = [time_encoder(e.strip(), data_dir, work, args) for e in args.encoders.split(",")]
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}"
    print(f"device: {name}, {torch.get_num_threads()} CPU threads; data: {data_dir}")
    print(timing_table(timings, args.batch_size))


if __name__ == "__main__":
    main()
