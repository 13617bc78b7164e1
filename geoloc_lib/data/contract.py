"""Loading and validating the data contract (docs/design.md, "Data contract").

Every check that fails raises `DataContractError` naming the file, the offending rows (the first few
and the count) and what to do about it. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geoloc_lib.base.folder_marks import CELLS_CSV, TEST_CSV, TRAIN_CSV
from geoloc_lib.base.progress import progress_bar
from geoloc_lib.data.photos import image_problem, photo_digest
from geoloc_lib.data.splits import location_split
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import BBOX_MARGIN_DEG, PAKISTAN_BBOX, inside_pakistan_bbox

SPLIT_COLUMNS = ("id", "image", "latitude", "longitude", "province", "province_id", "cell_id")
CELL_COLUMNS = (
    "cell_id",
    "province",
    "province_id",
    "center_lat",
    "center_lon",
    "radius_km",
    "neighbor_cell_ids",
)
MAX_ROWS_SHOWN = 5
MAX_CELL_RADIUS_KM = 1500.0  # Pakistan spans about 1,500 km: a larger cell radius is a unit mistake
IMAGE_CHECKS = ("none", "exists", "decode")
DECODE_THREADS = min(8, os.cpu_count() or 1)


class DataContractError(ValueError):
    """A CSV or image does not meet the data contract; the message says where and how to fix it."""


def _fail(path, problem: str, rows: pd.DataFrame | None, fix: str):
    where = ""
    if rows is not None and len(rows):
        shown = []
        for index, row in rows.head(MAX_ROWS_SHOWN).iterrows():
            ident = f", id={row['id']!r}" if "id" in row.index else ""
            # index + 2: the header is line 1 and pandas counts from 0
            shown.append(f"line {index + 2}{ident}")
        more = f" and {len(rows) - MAX_ROWS_SHOWN} more" if len(rows) > MAX_ROWS_SHOWN else ""
        where = f" in {len(rows)} row(s): {'; '.join(shown)}{more}"
    raise DataContractError(f"{path}: {problem}{where}. Fix: {fix}")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        what = "its folder is a file, not a data folder" if path.parent.is_file() else "file not found"
        _fail(path, what, None, "check the data directory, or generate the demo data (make demo)")
    try:
        return pd.read_csv(path, dtype={"id": str, "image": str, "province": str, "neighbor_cell_ids": str})
    except pd.errors.EmptyDataError:
        _fail(
            path,
            "the file is empty (not even a header)",
            None,
            "write the header and the rows of the contract",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        _fail(
            path, f"not a readable CSV ({err})", None, "save the file as comma-separated UTF-8 with a header"
        )


def _require_columns(df: pd.DataFrame, path: Path, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        _fail(
            path,
            f"missing column(s) {missing}; found {list(df.columns)}",
            None,
            f"add the column(s); the contract needs {list(columns)}",
        )


def _require_numeric(df: pd.DataFrame, path: Path, column: str) -> None:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = df[values.isna()]
    if len(bad):
        _fail(path, f"{column} is missing or not a number", bad, f"give every row a numeric {column}")
    df[column] = values


def _require_integer(df: pd.DataFrame, path: Path, column: str) -> None:
    """A column of whole numbers, stored as int64; 2.7 is refused, not truncated."""
    _require_numeric(df, path, column)
    bad = df[df[column] != np.round(df[column])]
    if len(bad):
        _fail(path, f"{column} must be a whole number", bad, f"write {column} as an integer id")
    df[column] = df[column].astype(np.int64)


def _normalise_provinces(df: pd.DataFrame, path: Path) -> None:
    """Map every province spelling to its canonical name and check province_id agrees with it."""
    spellings = df["province"].fillna("")
    lookup = {s: prov.try_lookup(s) for s in spellings.unique()}
    found = spellings.map(lookup)
    unknown = df[found.isna()]
    if len(unknown):
        names = sorted(set(unknown["province"].astype(str)))[:MAX_ROWS_SHOWN]
        _fail(
            path,
            f"unknown province name(s) {names}",
            unknown,
            f"use one of the accepted spellings: {prov.accepted_spellings()}",
        )
    df["province"] = spellings.map({s: p.name for s, p in lookup.items() if p is not None})
    expected_id = spellings.map({s: p.id for s, p in lookup.items() if p is not None}).astype(int)
    given_id = pd.to_numeric(df["province_id"], errors="coerce")
    disagree = df[given_id != expected_id]
    if len(disagree):
        _fail(
            path,
            "province_id disagrees with the province name (ids: "
            + ", ".join(f"{p.id} {p.name}" for p in prov.PROVINCES)
            + ")",
            disagree,
            "correct province_id, or the province name, so that both name the same province",
        )
    df["province_id"] = expected_id


def _check_coordinates(df: pd.DataFrame, path: Path, lat_col: str, lon_col: str) -> None:
    lat = pd.to_numeric(df[lat_col], errors="coerce")
    lon = pd.to_numeric(df[lon_col], errors="coerce")
    bad = df[lat.isna() | lon.isna() | ~inside_pakistan_bbox(lat, lon)]
    if len(bad):
        b = PAKISTAN_BBOX
        _fail(
            path,
            f"{lat_col}/{lon_col} missing, not a number, or outside Pakistan "
            f"(lat {b['lat_min']}..{b['lat_max']}, lon {b['lon_min']}..{b['lon_max']}, "
            f"+/-{BBOX_MARGIN_DEG} deg)",
            bad,
            "give decimal degrees (WGS84) and check that latitude and longitude are not swapped",
        )
    df[lat_col] = lat.astype(float)
    df[lon_col] = lon.astype(float)


def parse_neighbor_ids(text) -> list[int]:
    if text is None or (isinstance(text, float) and np.isnan(text)) or str(text).strip() == "":
        return []
    return [int(v) for v in str(text).replace(";", ",").split(",") if v.strip()]


def load_cell_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate `cell_metadata.csv`; cell ids need not be contiguous."""
    path = Path(path)
    df = _read_csv(path)
    _require_columns(df, path, CELL_COLUMNS)
    if df.empty:
        _fail(
            path, "no cells", None, "build the geocells first (geoloc_lib.geo.geocell_builder.build_geocells)"
        )
    _require_integer(df, path, "cell_id")
    dup = df[df["cell_id"].duplicated(keep=False)]
    if len(dup):
        _fail(path, "duplicate cell_id", dup, "give every cell a unique id")
    _normalise_provinces(df, path)
    _check_coordinates(df, path, "center_lat", "center_lon")
    radius = pd.to_numeric(df["radius_km"], errors="coerce")
    bad = df[~(radius > 0) | ~np.isfinite(radius)]
    if len(bad):
        _fail(path, "radius_km must be a positive number", bad, "rebuild the geocells")
    bad = df[radius > MAX_CELL_RADIUS_KM]
    if len(bad):
        _fail(
            path,
            f"radius_km above {MAX_CELL_RADIUS_KM} km, more than Pakistan is wide",
            bad,
            "give radii in kilometres (not metres), or rebuild the geocells",
        )
    df["radius_km"] = radius.astype(float)
    try:
        neighbors = df["neighbor_cell_ids"].map(parse_neighbor_ids)
    except ValueError as err:
        _fail(
            path, f"neighbor_cell_ids is not a list of integer ids ({err})", None, "write ids like '3,7,12'"
        )
    known = set(df["cell_id"])
    bad = df[neighbors.map(lambda ids: any(i not in known for i in ids))]
    if len(bad):
        _fail(path, "neighbor_cell_ids names unknown cells", bad, "rebuild the geocells")
    df["neighbor_cell_ids"] = neighbors.map(lambda ids: ",".join(map(str, ids)))
    if "n_samples" not in df.columns:
        df["n_samples"] = pd.NA  # metadata from other tools may have no counts
    return df.sort_values(["province_id", "cell_id"]).reset_index(drop=True)


def _check_images(df: pd.DataFrame, path: Path, image_check: str) -> None:
    if image_check == "none":
        return
    exists = np.array([os.path.isfile(p) for p in df["image_path"]], dtype=bool)
    missing = df[~exists]
    if len(missing):
        _fail(
            path,
            f"image file(s) not found (first: {missing['image_path'].iloc[0]})",
            missing,
            "check the image column and images_root (paths are relative to the CSV's folder by default)",
        )
    if image_check == "decode":
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:  # Pillow decodes without the GIL
            problems = list(
                progress_bar(
                    pool.map(image_problem, df["image_path"]),
                    total=len(df),
                    desc=f"check {path.name}",
                    leave=False,
                )
            )
        bad = [problem is not None for problem in problems]
        if any(bad):
            first = next(p for p in problems if p is not None)
            _fail(
                path,
                f"image file(s) cannot be decoded (first: {first})",
                df[bad],
                "replace or remove the files (a photo must be a JPEG, PNG or other image Pillow reads, under "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels)",
            )


def _check_inside(df: pd.DataFrame, path: Path, root: Path) -> None:
    """Image paths must stay inside the data folder (or images_root): a CSV is untrusted input."""
    inside = df["image_path"].str.startswith(
        os.path.join(os.path.abspath(root), "")
    )  # image_path is normalised
    outside = df[~inside]
    if len(outside):
        _fail(
            path,
            f"image path(s) lead outside {root} (first: {outside['image'].iloc[0]})",
            outside,
            "keep the photos inside the data folder or images_root, or pass allow_images_outside=True",
        )


def load_split(
    path: str | os.PathLike,
    cells: pd.DataFrame | None = None,
    images_root: str | os.PathLike | None = None,
    image_check: str = "exists",
    require_cell_id: bool = True,
    allow_images_outside: bool = False,
) -> pd.DataFrame:
    """Read and validate `train.csv` / `test.csv`.

    Adds `image_path` (absolute). Extra columns are kept. With `cells` given, every cell_id must be
    a cell of the row's own province. `image_check`: "none", "exists" (the files are there) or "decode"
    (each one also opens and decodes, in parallel, at thumbnail size where the format allows).
    """
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f"image_check must be one of {IMAGE_CHECKS}, got {image_check!r}")
    path = Path(path)
    df = _read_csv(path)
    required = SPLIT_COLUMNS if require_cell_id else tuple(c for c in SPLIT_COLUMNS if c != "cell_id")
    _require_columns(df, path, required)
    if df.empty:
        _fail(path, "the split has no rows", None, "add samples, or point at the right file")
    bad = df[df["id"].isna() | df["id"].duplicated(keep=False)]
    if len(bad):
        _fail(path, "id is missing or not unique", bad, "give every row a unique id")
    _normalise_provinces(df, path)
    _check_coordinates(df, path, "latitude", "longitude")
    bad = df[df["image"].fillna("").str.contains("\x00", regex=False)]
    if len(bad):
        _fail(path, "image path(s) contain a NUL character", bad, "write each image path as plain text")
    root = Path(images_root) if images_root is not None else path.parent
    # absolute and normalised but with links kept: a CSV's "../" cannot climb out of the folder, while a link
    # that the folder's owner put in it (ingest's `photos`) leads to the photos wherever they are
    base = os.path.abspath(root)
    df["image_path"] = [os.path.normpath(os.path.join(base, str(p))) for p in df["image"].fillna("")]
    if not allow_images_outside:
        _check_inside(df, path, root)
    if "cell_id" in df.columns and require_cell_id:
        _require_integer(df, path, "cell_id")
        if cells is not None:
            _check_cells(df, path, cells)
    _check_images(df, path, image_check)
    return df


def _check_cells(df: pd.DataFrame, path: Path, cells: pd.DataFrame) -> None:
    cell_province = dict(zip(cells["cell_id"], cells["province_id"], strict=True))
    owner = df["cell_id"].map(cell_province)
    unknown = df[owner.isna()]
    if len(unknown):
        _fail(
            path,
            "cell_id not in cell_metadata.csv",
            unknown,
            "rebuild the geocells and reassign cell ids (geoloc_lib.geo.geocell_builder), or use the matching metadata",
        )
    wrong = df[owner.astype(int) != df["province_id"]]
    if len(wrong):
        _fail(
            path,
            "cell_id belongs to another province's cell",
            wrong,
            "reassign cells within each row's own province (geoloc_lib.geo.geocell_builder.assign_cells)",
        )


@dataclass
class GeoDataset:
    """The validated train split, test split and cell metadata of one data directory.

    `val` is empty until `with_validation` carves a validation split out of train.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    cells: pd.DataFrame
    data_dir: Path
    val: pd.DataFrame | None = None
    buffered: int = 0  # training photos left out by `with_validation`: too near a validation photo

    @cached_property  # hashing 90k rows and their files takes under a second, and every checkpoint records it
    def signature(self) -> dict[str, str]:
        """A hash of the rows of each split (id, image, coordinates, province, cell) and of the cells.

        A resumed run compares it with the one its checkpoints recorded, so that it never continues on other
        data; `photos` covers the image files (name, size, time) of train and test.
        """
        columns = ["id", "image", "latitude", "longitude", "province_id", "cell_id"]
        parts = {
            "train": self.train[columns],
            "test": self.test[columns],
            "cells": self.cells[list(CELL_COLUMNS)],
        }
        if self.val is not None:
            parts["val"] = self.val[columns]
        signature = {
            name: hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]
            for name, frame in parts.items()
        }
        # the photos themselves: a file replaced under the same name changes its size or time
        photos = pd.concat([self.train, self.test])
        signature["photos"] = photo_digest(photos["image"], photos["image_path"])
        return signature

    def with_validation(
        self, fraction: float, block_km: float, seed: int, buffer_km: float = 0.0
    ) -> GeoDataset:
        """The same data with about `fraction` of train held out as `val`, whole location blocks at a time, and
        the training photos within `buffer_km` of a validation photo left out of both (counted in `buffered`).

        Choices (best epoch, decoding, tuning) are made on `val`; `test` is kept for the final report.
        """
        train, val = location_split(self.train, fraction, block_km, seed, buffer_km)
        if val.empty:
            problem = f"no validation photos: the training photos lie in too few {block_km:g} km blocks to spare one"
            _fail(self.data_dir / TRAIN_CSV, problem, None, "lower val_block_km (say to 1), or add places")
        return replace(self, train=train, val=val, buffered=len(self.train) - len(train) - len(val))


def check_train_covers_provinces(train: pd.DataFrame, path, allow_missing: bool = False) -> list[str]:
    """A province with no training rows cannot be learned; it is an error unless explicitly allowed."""
    present = set(train["province_id"].unique())
    missing = [p.name for p in prov.PROVINCES if p.id not in present]
    if missing and not allow_missing:
        _fail(
            path,
            f"no training rows for province(s) {missing}",
            None,
            "add training photos for them, or pass allow_missing_provinces=True to train without them "
            "(their batch share is then given to the other provinces)",
        )
    return missing


def load_dataset(
    data_dir: str | os.PathLike,
    images_root: str | os.PathLike | None = None,
    image_check: str = "exists",
    allow_missing_provinces: bool = False,
    allow_images_outside: bool = False,
) -> GeoDataset:
    """Load and cross-check `train.csv`, `test.csv` and `cell_metadata.csv` of one folder."""
    data_dir = Path(data_dir)
    if data_dir.is_file():
        _fail(
            data_dir, "a file, not a data folder", None, "point data_dir at the folder that holds train.csv"
        )
    cells = load_cell_metadata(data_dir / CELLS_CSV)
    train, test = (
        load_split(
            data_dir / name, cells, images_root, image_check, allow_images_outside=allow_images_outside
        )
        for name in (TRAIN_CSV, TEST_CSV)
    )
    check_train_covers_provinces(train, data_dir / TRAIN_CSV, allow_missing_provinces)
    return GeoDataset(train=train, test=test, cells=cells, data_dir=data_dir)
