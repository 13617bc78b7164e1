"""Benchmark: seed-literal step (images through the frozen encoders every step) vs the cached-feature step.

    python -m geoloc_lib.bench [--encoder tiny-random] [--batch-size 64] [--steps 20]
    python -m geoloc_lib.bench --geocells 100000     # time the geocell builder instead

Both paths use the same batched heads and loss, on the same machine and data, in the same run. The
seed-literal reference here is therefore faster than the original system's (which also looped over the
seven heads in Python and built soft targets with pandas per sample), so the ratio is conservative.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .demo_data import TINY_DEMO, generate_demo_dataset, sample_locations
from .geocells import assign_cells, build_geocells
from .train import TrainConfig, Trainer


def _time(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


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
    parser.add_argument("--encoder", default="tiny-random")
    parser.add_argument("--data-dir", default="", help="default: a generated tiny demo set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--geocells", type=int, default=0, help="time the geocell builder on this many points"
    )
    args = parser.parse_args(argv)
    if args.geocells:
        bench_geocells(args.geocells)
        return
    work = Path(tempfile.mkdtemp(prefix="geoloc-bench-"))
    data_dir = args.data_dir or str(generate_demo_dataset(work / "data", TINY_DEMO))
    cfg = TrainConfig(
        data_dir=data_dir,
        runs_dir=str(work / "runs"),
        run_name="bench",
        encoder=args.encoder,
        batch_size=args.batch_size,
        cache_views=1,
        cache_dir=str(work / "cache"),
        device=args.device,
        num_workers=0,
        cuda_graph=False,
    )
    trainer = Trainer(cfg, progress=False)
    device = trainer.device
    t0 = time.perf_counter()
    trainer.prepare_features()
    n_images = len(trainer.data.train) + len(trainer.data.test)
    extract_rate = n_images / (time.perf_counter() - t0)
    batches = torch.as_tensor(trainer.sampler.epoch_batches(1), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    offset_weight = torch.tensor(1.0, device=device)
    images = torch.rand(args.batch_size, 3, trainer.image_size, trainer.image_size, device=device)
    trainer.model.train()

    def literal_step():
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.amp:
            clip, scene = trainer.model.encoders(images)
        trainer._step(clip.float(), scene.float(), batches[0], offset_weight)

    def cached_step():
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._step(*trainer._features_for(batches[0], generator), batches[0], offset_weight)

    literal = _time(literal_step, args.steps, device)
    cached = _time(cached_step, args.steps, device)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; encoder preset: {args.encoder}; batch {args.batch_size}")
    print(f"feature extraction: {extract_rate:.0f} images/s (decode + augment + both encoders)")
    print(f"{'path':<14}{'ms/step':>10}{'s/1300-step epoch':>20}")
    print(f"{'seed-literal':<14}{1000 * literal:>10.1f}{1300 * literal:>20.1f}")
    print(f"{'cached':<14}{1000 * cached:>10.1f}{1300 * cached:>20.1f}")
    print(f"ratio (seed-literal / cached): {literal / cached:.1f}x  (seed-literal excludes image decoding)")


if __name__ == "__main__":
    main()
