import hashlib
import math
from dataclasses import replace

import numpy as np
import pandas as pd

from geoloc_lib.data.demo_data import (
    REAL_PROVINCE_COUNTS,
    TINY_DEMO,
    DemoConfig,
    demo_photos,
    generate_demo_dataset,
)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").iterdir())}


def test_demo_dataset_is_deterministic_and_imbalanced_like_the_real_data(tiny_data, tmp_path):
    again = generate_demo_dataset(tmp_path / "again", replace(TINY_DEMO, workers=1))
    for name in ("train.csv", "test.csv", "cell_metadata.csv"):
        assert (again / name).read_bytes() == (tiny_data / name).read_bytes(), name
    assert _digest(again) == _digest(tiny_data)

    train = pd.read_csv(tiny_data / "train.csv")
    counts = train["province_id"].value_counts()
    assert counts.idxmax() == 0 and counts[0] > 0.5 * len(train)  # Sindh dominates (72% in the real data)
    real_order = sorted(range(7), key=lambda p: REAL_PROVINCE_COUNTS[p])
    assert counts[real_order[0]] <= counts[real_order[-2]]  # AJK, the rarest, is no larger than Punjab


def test_other_seed_gives_other_photos(tiny_data, tmp_path):
    other = generate_demo_dataset(tmp_path / "other", replace(TINY_DEMO, workers=1, seed=1))
    assert (other / "train.csv").read_bytes() != (tiny_data / "train.csv").read_bytes()


def _blocks_by_hand(frame: pd.DataFrame, block_km: float) -> set[tuple[int, int]]:
    # the grid written out independently: rows of block_km in latitude, columns block_km wide at 30 N
    km_per_deg = 6371.0088 * math.pi / 180
    rows = np.floor(frame["latitude"] * km_per_deg / block_km).astype(int)
    cols = np.floor(frame["longitude"] * km_per_deg * math.cos(math.radians(30)) / block_km).astype(int)
    return set(zip(rows, cols, strict=True))


def test_the_demo_test_split_shares_no_location_block_with_train():
    config = DemoConfig()  # the demo's own sizes; the split is decided before any photo is drawn
    photos, is_test = demo_photos(config)
    train, test = photos[~is_test], photos[is_test]
    assert not _blocks_by_hand(train, config.test_block_km) & _blocks_by_hand(test, config.test_block_km)
    assert abs(len(test) - config.n_test) <= 0.05 * config.n_test  # the demo's test size, near enough
    assert set(test["province_id"]) == set(range(7))  # every province is scored


def test_the_tiny_demo_written_to_disk_passes_the_block_leakage_check(tiny_data):
    from geoloc_lib.data.audit import leakage_report
    from geoloc_lib.data.contract import load_dataset

    dataset = load_dataset(tiny_data)
    train, test = dataset.train, dataset.test
    assert not _blocks_by_hand(train, 10.0) & _blocks_by_hand(test, 10.0)
    report = leakage_report(dataset, block_km=10.0).set_index("check")["count"]
    assert (report == 0).all(), report
    # the same check catches one test photo moved next to a training photo (10 m south-west, same block)
    moved = test.copy()
    moved.iloc[0, moved.columns.get_loc("latitude")] = train["latitude"].iloc[0] - 0.00006
    moved.iloc[0, moved.columns.get_loc("longitude")] = train["longitude"].iloc[0] - 0.00006
    assert _blocks_by_hand(moved.iloc[:1], 10.0) <= _blocks_by_hand(train, 10.0)
    report = leakage_report(replace(dataset, test=moved), block_km=10.0).set_index("check")["count"]
    assert report["test photos in a 10 km block with a train photo"] == 1
