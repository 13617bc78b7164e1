"""Prediction benchmark: a trained run's predictor over a folder of photos, against the feature extraction of the
same photos by the same encoders, and the start-up cost of a 2-photo `geoloc-predict` call.

    python -m tools.bench_predict                         # runs/demo, 1,000 demo photos (make bench-predict)
    python -m tools.bench_predict --run runs/my_p1 --photos 500

The predictor decodes, transforms and encodes every photo and runs the heads, the decoding, the credible radii
and the out-of-domain check; the extraction row is the encoders alone on the same photos (no cache), so the
ratio says what prediction adds to the encoders' cost. Not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from geoloc_lib.data.cache_spec import CacheSpec
from geoloc_lib.data.contract import load_split
from geoloc_lib.data.feature_cache import clean_features
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.run.folder import RunFolder


def main(argv=None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--run", default="runs/demo")
    cli.add_argument("--photos", type=int, default=1000)
    args = cli.parse_args(argv)
    config = RunFolder(args.run).read_config()
    predictor = Predictor.from_run(args.run, "best", "cpu")
    rows = load_split(Path(config.data_dir) / "train.csv", image_check="none").head(args.photos)
    paths = rows["image_path"].tolist()
    started = time.perf_counter()
    predictor.predict(paths)
    predict_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        clean_features(CacheSpec(cache_dir=cache), rows, predictor.model.encoders, log=lambda _: None)
        extract_s = time.perf_counter() - started
    command = [sys.executable, "-m", "geoloc_lib.predict", args.run, *paths[:2]]
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    startup_s = time.perf_counter() - started
    print(f"{len(paths)} photos, {torch.get_num_threads()} threads, run {args.run}")
    print(f"predictor:  {len(paths) / predict_s:7.1f} photos/s ({predict_s:.1f} s)")
    print(f"extraction: {len(paths) / extract_s:7.1f} photos/s ({extract_s:.1f} s), the encoders alone")
    print(f"ratio predictor / extraction: {extract_s / predict_s:.2f}")
    print(f"geoloc-predict with 2 photos, from the shell: {startup_s:.1f} s")


if __name__ == "__main__":
    main()
