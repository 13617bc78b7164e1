"""Data audit checks for notebook 00: schema, balance, geocells and train/test leakage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.neighbors import BallTree

from geoloc_lib.base.atomic_files import atomic_write_texts
from geoloc_lib.base.folder_marks import CELLS_CSV, TEST_CSV, TRAIN_CSV
from geoloc_lib.data.contract import (
    DataContractError,
    GeoDataset,
    load_cell_metadata,
    load_dataset,
    load_split,
)
from geoloc_lib.data.demo_data import DEMO_PRESETS, generate_demo_dataset
from geoloc_lib.data.splits import location_blocks, nearest_km
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.geocell_builder import GeocellConfig, assign_cells, build_geocells
from geoloc_lib.geo.sphere import EARTH_RADIUS_KM


class AuditFailure(AssertionError):
    """A data audit check failed; the message lists every failed check."""


def rebuild_geocells(
    data_dir: str | Path, config: GeocellConfig | None = None, images_root=None
) -> pd.DataFrame:
    """Rebuild cell_metadata.csv from train.csv and reassign cell_id in both splits.

    This replaces the folder's train.csv, test.csv and cell_metadata.csv, and only when asked: everything is
    computed first, then the three files are written under temporary names and renamed together at the end, so
    an interrupted rebuild leaves the user's files byte for byte as they were.
    """
    data_dir = Path(data_dir)
    train = load_split(
        data_dir / TRAIN_CSV, images_root=images_root, image_check="none", require_cell_id=False
    )
    test = load_split(data_dir / TEST_CSV, images_root=images_root, image_check="none", require_cell_id=False)
    cells = build_geocells(train, config)
    texts = {}
    for name, split in ((TRAIN_CSV, train), (TEST_CSV, test)):
        split["cell_id"] = assign_cells(split, cells)
        texts[data_dir / name] = split.drop(columns=["image_path"]).to_csv(index=False)
    texts[data_dir / CELLS_CSV] = cells.to_csv(index=False)
    atomic_write_texts(texts)
    return load_cell_metadata(data_dir / CELLS_CSV)


def prepare_data_dir(data_dir: str | Path, generate_demo: str = "") -> Path:
    """The data folder to audit. Demo photos are generated only when asked (`generate_demo` names a preset):
    a missing folder is an error, never a reason to invent data."""
    data_dir = Path(data_dir)
    if (data_dir / TRAIN_CSV).is_file():
        return data_dir
    if generate_demo:
        return generate_demo_dataset(data_dir, DEMO_PRESETS[generate_demo])
    raise DataContractError(
        f"{data_dir}: no train.csv here (the folder {'is empty' if data_dir.is_dir() else 'does not exist'}). "
        "Fix: point data_dir at a folder with train.csv, test.csv and cell_metadata.csv; or make one from your "
        "geotagged photos (`geoloc-ingest PHOTOS_DIR DATA_DIR`, or -p ingest_from PHOTOS_DIR here); or generate "
        "the synthetic demo data on purpose with `make demo` (data/demo) or -p generate_demo default"
    )


def schema_report(
    data_dir: str | Path, images_root=None, image_check: str = "decode"
) -> tuple[GeoDataset, pd.DataFrame]:
    """Validate the folder (raises DataContractError on the first failed check) and summarise it."""
    ds = load_dataset(data_dir, images_root=images_root, image_check=image_check)
    rows = []
    for name, frame in ((TRAIN_CSV, ds.train), (TEST_CSV, ds.test), (CELLS_CSV, ds.cells)):
        rows.append(
            {"file": name, "rows": len(frame), "columns": ", ".join(map(str, frame.columns)), "status": "ok"}
        )
    return ds, pd.DataFrame(rows)


def province_balance(ds: GeoDataset) -> pd.DataFrame:
    rows = []
    for p in prov.PROVINCES:
        n_train = int((ds.train["province_id"] == p.id).sum())
        n_test = int((ds.test["province_id"] == p.id).sum())
        rows.append(
            {
                "province": p.name,
                "train": n_train,
                "test": n_test,
                "train_share_%": 100 * n_train / len(ds.train),
                "cells": int((ds.cells["province_id"] == p.id).sum()),
                "batch_share_%": 100 * p.batch_share,
            }
        )
    return pd.DataFrame(rows).set_index("province")


def geocell_summary(ds: GeoDataset) -> pd.DataFrame:
    counts = ds.train["cell_id"].value_counts()
    cells = ds.cells.assign(train_photos=ds.cells["cell_id"].map(counts).fillna(0).astype(int))
    return cells.groupby("province", sort=False).agg(
        cells=("cell_id", "size"),
        median_radius_km=("radius_km", "median"),
        max_radius_km=("radius_km", "max"),
        min_photos=("train_photos", "min"),
        median_photos=("train_photos", "median"),
    )


def _file_digest(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def leakage_report(ds: GeoDataset, coord_tolerance_m: float = 2.0, block_km: float = 10.0) -> pd.DataFrame:
    """Test photos that sit within `coord_tolerance_m` of a training photo, share its exact image bytes, or lie
    in a `block_km` location block (the grid of the location-disjoint splits) that holds a training photo.

    `block_km` is the block side the split was made with (10 km for the demo and ingest's default); 0 leaves the
    block check out, for data whose test split was made another way.
    """
    tree = BallTree(np.deg2rad(ds.train[["latitude", "longitude"]].to_numpy()), metric="haversine")
    radius = coord_tolerance_m / 1000.0 / EARTH_RADIUS_KM
    near = tree.query_radius(
        np.deg2rad(ds.test[["latitude", "longitude"]].to_numpy()), r=radius, count_only=True
    )
    train_digests = set(map(_file_digest, ds.train["image_path"]))
    same_image = np.array([_file_digest(p) in train_digests for p in ds.test["image_path"]])
    shared_path = ds.test["image_path"].isin(set(ds.train["image_path"])).to_numpy()
    shared_id = ds.test["id"].isin(set(ds.train["id"])).to_numpy()
    checks = [
        (f"test photos within {coord_tolerance_m:g} m of a train photo", int((near > 0).sum())),
        ("test images byte-identical to a train image", int(same_image.sum())),
        ("test rows pointing at a train image file", int(shared_path.sum())),
        ("ids present in both splits", int(shared_id.sum())),
    ]
    if block_km > 0:
        both = pd.concat([ds.train, ds.test])
        blocks = location_blocks(both["latitude"], both["longitude"], block_km)
        train_blocks, test_blocks = blocks[: len(ds.train)], blocks[len(ds.train) :]
        shared = np.isin(test_blocks, train_blocks)
        checks.append((f"test photos in a {block_km:g} km block with a train photo", int(shared.sum())))
    return pd.DataFrame(checks, columns=["check", "count"])


NEAR_KM = (1.0, 2.0, 5.0)  # the distances the audit counts test photos within


def nearest_training_photo(ds: GeoDataset) -> pd.DataFrame:
    """How far each test photo stands from its nearest training photo: the median and the counts within NEAR_KM.
    Blocks keep the two apart by block; ingest's and the demo's buffer (1 km) keeps every pair apart."""
    distance = nearest_km(ds.test, ds.train)  # [T]
    row = {"test photos": len(ds.test), "median km": round(float(np.median(distance)), 2)}
    row |= {f"within {km:g} km": int((distance < km).sum()) for km in NEAR_KM}
    return pd.DataFrame([row], index=["nearest training photo"])


def assert_audit_passes(leakage: pd.DataFrame, geocells: pd.DataFrame, min_photos_per_cell: int = 1) -> None:
    failures = [f"{row.check}: {row.count}" for row in leakage.itertuples() if row.count > 0]
    empty = geocells[geocells["min_photos"] < min_photos_per_cell]
    failures += [f"{name}: a cell with {int(r.min_photos)} training photos" for name, r in empty.iterrows()]
    if failures:
        raise AuditFailure("data audit failed:\n- " + "\n- ".join(failures))
