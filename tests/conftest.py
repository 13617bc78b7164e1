import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from geoloc_lib.demo_data import TINY_DEMO, generate_demo_dataset  # noqa: E402
from geoloc_lib.train import TrainConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny demo dataset, generated once per session (never modify it; copy it first)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "tiny", replace(TINY_DEMO, workers=1))


@pytest.fixture
def tiny_copy(tiny_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


def tiny_config(data_dir, runs_dir, **overrides) -> TrainConfig:
    values = dict(
        data_dir=str(data_dir),
        runs_dir=str(runs_dir),
        run_name="run",
        epochs=1,
        batches_per_epoch=8,
        batch_size=32,
        cache_views=2,
        cache_dir=str(Path(runs_dir) / "cache"),
        proj_dim=64,
        geocell_hidden=64,
        small_geocell_hidden=32,
        eval_batch_size=64,
        num_workers=0,
        device="cpu",
        cuda_graph=False,
    )
    values.update(overrides)
    return TrainConfig(**values)
