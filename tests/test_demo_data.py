import hashlib
from dataclasses import replace

import pandas as pd

from geoloc_lib.data.demo_data import REAL_PROVINCE_COUNTS, TINY_DEMO, generate_demo_dataset


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
