"""A folder of geotagged photos (or a CSV of image, latitude, longitude) becomes a data folder in the contract.

1. Every file under the photo folder (recursive), or every row of the CSV, is read without decoding pixels
   (data/photo_exif.py): its EXIF GPS position and capture time, its size and a hash of its first bytes.
2. Each is accepted or rejected with one reason (REASONS), in that order: not an image, unreadable, no GPS,
   GPS at (0, 0), outside Pakistan (the bundled borders, with a tolerance), an exact duplicate of an earlier
   file, or a burst (within `burst_m` of an earlier photo taken in the same minute). "Earlier" is path order.
3. The accepted photos are split train/test by whole location blocks (data/splits.py), and geocells are built
   on the training photos only (geo/geocell_builder.py).
4. The folder is written under a temporary name and renamed into place at the end; an existing folder is
   replaced only with `overwrite`, and the photos are never touched. `photos` in the new folder links to the
   folder that holds them, so the CSVs' image paths work from the data folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc_lib.base.atomic_files import write_json
from geoloc_lib.data.photo_exif import NOT_AN_IMAGE, UNREADABLE, file_digest, read_facts
from geoloc_lib.data.splits import location_split
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_at
from geoloc_lib.geo.geocell_builder import GeocellConfig, assign_cells, build_geocells
from geoloc_lib.geo.sphere import haversine_km

NO_GPS, ZERO_GPS, OUTSIDE = "no GPS", "GPS at (0, 0)", "outside Pakistan"
DUPLICATE, BURST = "exact duplicate", "burst"
REASONS = (NOT_AN_IMAGE, UNREADABLE, NO_GPS, ZERO_GPS, OUTSIDE, DUPLICATE, BURST)
PHOTOS_LINK = "photos"
REPORT_CSV, SUMMARY_JSON = "ingest_report.csv", "ingest_summary.json"
MIN_PHOTOS = 20  # fewer accepted photos cannot be split into train and test by location


class IngestError(ValueError):
    """The photos cannot become a data folder; the message says why and what to do."""


@dataclass
class IngestConfig:
    test_fraction: float = 0.1  # share of the accepted photos held out as test.csv, by whole location blocks
    block_km: float = 10.0  # side of the location blocks that the split never cuts
    seed: int = 0  # of the split and the geocells
    border_tolerance_km: float = 5.0  # a photo this close outside a border takes the nearest province
    burst_m: float = 50.0  # photos taken in the same minute within this distance count as one burst
    geocell_min_samples: int = 40  # minimum training photos per cell (a province with fewer gets one cell)
    geocell_target_radius_km: float = 50.0  # cells larger than this are split
    csv_image_column: str = "image"  # with a CSV input: the columns of image path, latitude and longitude
    csv_latitude_column: str = "latitude"
    csv_longitude_column: str = "longitude"
    workers: int = 0  # processes reading EXIF (0: every core)
    overwrite: bool = False  # replace an existing output folder


@dataclass
class IngestResult:
    data_dir: Path
    counts: pd.DataFrame  # one row per outcome: accepted (train, test) and each rejection reason
    report: pd.DataFrame  # one row per rejected file: image, reason, detail


def _source_files(source: Path, cfg: IngestConfig) -> pd.DataFrame:
    """path (absolute) and the CSV's latitude/longitude (NaN for a folder: they come from EXIF)."""
    if source.is_dir():
        paths = sorted(str(p) for p in source.rglob("*") if p.is_file())
        return pd.DataFrame({"path": paths, "csv_latitude": np.nan, "csv_longitude": np.nan})
    columns = [cfg.csv_image_column, cfg.csv_latitude_column, cfg.csv_longitude_column]
    table = pd.read_csv(source, dtype={cfg.csv_image_column: str})
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise IngestError(
            f"{source}: no column(s) {missing} (it has {list(table.columns)}); name the columns with "
            "--image-column, --latitude-column and --longitude-column"
        )
    coords = table[columns[1:]].apply(pd.to_numeric, errors="coerce")
    paths = [os.path.abspath(source.parent / str(p)) for p in table[cfg.csv_image_column].fillna("")]
    return pd.DataFrame(
        {"path": paths, "csv_latitude": coords.iloc[:, 0], "csv_longitude": coords.iloc[:, 1]}
    )


def _judge_positions(facts: pd.DataFrame, cfg: IngestConfig) -> None:
    """Set latitude, longitude, province_id, and reason/detail for every file without a usable position."""
    from_csv = facts["csv_latitude"].notna() | facts["csv_longitude"].notna()
    facts["latitude"] = facts["csv_latitude"].where(from_csv, facts["gps_latitude"])
    facts["longitude"] = facts["csv_longitude"].where(from_csv, facts["gps_longitude"])
    open_ = facts["reason"] == ""
    lat, lon = facts["latitude"], facts["longitude"]
    valid = lat.between(-90, 90) & lon.between(-180, 180)
    facts.loc[open_ & ~valid, ["reason", "detail"]] = [NO_GPS, "no GPS position in the EXIF or the CSV"]
    facts.loc[open_ & valid & (lat == 0) & (lon == 0), "reason"] = ZERO_GPS  # a receiver's placeholder
    placed = (facts["reason"] == "").to_numpy()
    facts["province_id"] = -1
    facts.loc[placed, "province_id"] = province_at(lat[placed], lon[placed], cfg.border_tolerance_km)
    outside = placed & (facts["province_id"] < 0).to_numpy()
    facts.loc[outside, "reason"] = OUTSIDE
    facts.loc[outside, "detail"] = [
        f"{a:.5f}, {b:.5f}" for a, b in zip(lat[outside], lon[outside], strict=True)
    ]


def _judge_duplicates(facts: pd.DataFrame) -> None:
    """An accepted file with the same bytes as an earlier accepted one (size and prefix hash first, the whole
    file only where those collide) is an exact duplicate of it."""
    open_ = facts[facts["reason"] == ""]
    suspects = open_[open_.duplicated(["size", "prefix_hash"], keep=False)]
    if suspects.empty:
        return
    digests = pd.Series([file_digest(p) for p in suspects["path"]], index=suspects.index)
    keys = suspects[["size"]].assign(digest=digests)
    repeated = keys.duplicated(keep="first")
    first = keys.reset_index().groupby(["size", "digest"])["index"].transform("first").to_numpy()
    repeats = suspects.index[repeated.to_numpy()]
    facts.loc[repeats, "reason"] = DUPLICATE
    facts.loc[repeats, "detail"] = ["of " + facts.at[i, "path"] for i in first[repeated.to_numpy()]]


def _judge_bursts(facts: pd.DataFrame, burst_m: float) -> None:
    """A photo within `burst_m` of an earlier kept photo taken in the same minute repeats that photo."""
    open_ = facts[(facts["reason"] == "") & (facts["taken"] != "")]
    minute = open_["taken"].str[:16]
    for _, group in open_[minute.duplicated(keep=False)].groupby(minute):
        lat, lon = group["latitude"].to_numpy(), group["longitude"].to_numpy()  # [G] each
        kept: list[int] = []  # positions in the group
        for i in range(len(group)):
            metres = haversine_km(lat[i], lon[i], lat[kept], lon[kept]) * 1000  # [K] to the kept photos
            if len(kept) and metres.min() <= burst_m:
                earlier = group["path"].iloc[kept[int(np.argmax(metres <= burst_m))]]
                facts.loc[group.index[i], ["reason", "detail"]] = [BURST, "with " + earlier]
            else:
                kept.append(i)


def judge(files: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """FACT_COLUMNS of every file with latitude, longitude, province_id, and reason ('' when accepted)."""
    facts = read_facts(files["path"].tolist(), cfg.workers or None)
    facts[["csv_latitude", "csv_longitude"]] = files[["csv_latitude", "csv_longitude"]].to_numpy()
    facts["reason"] = facts["problem"]
    _judge_positions(facts, cfg)
    _judge_duplicates(facts)
    _judge_bursts(facts, cfg.burst_m)
    return facts


def _contract_rows(accepted: pd.DataFrame, root: str) -> pd.DataFrame:
    relative = [Path(os.path.relpath(p, root)).as_posix() for p in accepted["path"]]
    return pd.DataFrame(
        {
            "id": relative,
            "image": [f"{PHOTOS_LINK}/{r}" for r in relative],
            "latitude": accepted["latitude"].round(7).to_numpy(),
            "longitude": accepted["longitude"].round(7).to_numpy(),
            "province": [prov.by_id(i).name for i in accepted["province_id"]],
            "province_id": accepted["province_id"].to_numpy(),
            "taken": accepted["taken"].to_numpy(),
        }
    )


def split_and_cells(rows: pd.DataFrame, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, cells): a location-disjoint split, geocells from the training rows alone."""
    if len(rows) < MIN_PHOTOS:
        raise IngestError(
            f"only {len(rows)} photos were accepted; at least {MIN_PHOTOS} are needed to split them into train "
            f"and test by location (see {REPORT_CSV} for why the others were rejected)"
        )
    train, test = location_split(rows, cfg.test_fraction, cfg.block_km, cfg.seed)
    if test.empty:
        raise IngestError(
            f"the {len(rows)} accepted photos lie in too few {cfg.block_km:g} km blocks to hold any out as test "
            "photos; lower block_km or add photos from more places"
        )
    geocells = GeocellConfig(
        min_samples=cfg.geocell_min_samples, target_radius_km=cfg.geocell_target_radius_km, seed=cfg.seed
    )
    cells = build_geocells(train, geocells)
    train, test = (part.assign(cell_id=assign_cells(part, cells)) for part in (train, test))
    return train, test, cells


def outcome_counts(facts: pd.DataFrame, n_train: int, n_test: int) -> pd.DataFrame:
    counts = [("accepted: train", n_train), ("accepted: test", n_test)]
    counts += [(f"rejected: {reason}", int((facts["reason"] == reason).sum())) for reason in REASONS]
    return pd.DataFrame(counts, columns=["outcome", "photos"]).set_index("outcome")


def _check_folders(source: Path, out_dir: Path, overwrite: bool) -> None:
    if not source.exists():
        raise IngestError(f"{source}: no such folder or CSV file")
    photos, out = (source if source.is_dir() else source.parent).resolve(), out_dir.resolve()
    if out == photos or photos in out.parents or out in photos.parents:
        raise IngestError(
            f"{out_dir}: the output folder must lie outside the photos' folder {photos} (and not hold it): "
            "ingest never writes beside the photos or replaces them"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise IngestError(
                f"{out_dir} exists and is not empty; choose a new folder, or pass overwrite (--overwrite)"
            )
        if not (out_dir / SUMMARY_JSON).is_file():
            raise IngestError(
                f"{out_dir} was not written by ingest (no {SUMMARY_JSON}), so overwrite will not replace it; "
                "choose a new folder"
            )


def _write_folder(out_dir: Path, photos_root: str, tables: dict[str, pd.DataFrame], summary: dict) -> None:
    """Everything goes into a hidden sibling folder first, which then takes the output folder's place."""
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / PHOTOS_LINK).symlink_to(photos_root, target_is_directory=True)
    for name, frame in tables.items():
        frame.to_csv(partial / name, index=False)
    write_json(partial / SUMMARY_JSON, summary)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        replaced = out_dir.with_name(f".{out_dir.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(out_dir, replaced)
        os.replace(partial, out_dir)
        shutil.rmtree(replaced)
    else:
        os.replace(partial, out_dir)  # also over an empty folder


def ingest(
    source: str | os.PathLike, out_dir: str | os.PathLike, config: IngestConfig | None = None
) -> IngestResult:
    """Write a data folder (train.csv, test.csv, cell_metadata.csv, ingest_report.csv, ingest_summary.json and
    the `photos` link) from a folder of photos or a CSV of image, latitude and longitude."""
    cfg = config or IngestConfig()
    source, out_dir = Path(source), Path(out_dir)
    _check_folders(source, out_dir, cfg.overwrite)
    facts = judge(_source_files(source, cfg), cfg)
    accepted = facts[facts["reason"] == ""]
    report = facts.loc[facts["reason"] != "", ["path", "reason", "detail"]].rename(columns={"path": "image"})
    if accepted.empty:
        counts = outcome_counts(facts, 0, 0)["photos"]
        first = facts.iloc[0]
        raise IngestError(
            f"none of the {len(facts)} files was accepted ({', '.join(f'{k}: {v}' for k, v in counts[counts > 0].items())}); "
            f"the first, {first['path']}, was rejected as {first['reason']} {first['detail']}".rstrip()
        )
    root = (
        str(source.resolve())
        if source.is_dir()
        else os.path.commonpath([os.path.dirname(p) for p in accepted["path"]])
    )
    train, test, cells = split_and_cells(_contract_rows(accepted, root), cfg)
    counts = outcome_counts(facts, len(train), len(test))
    summary = {"source": str(source.resolve()), "files": len(facts), "config": asdict(cfg)}
    summary["outcomes"] = counts["photos"].to_dict()
    tables = {"train.csv": train, "test.csv": test, "cell_metadata.csv": cells, REPORT_CSV: report}
    _write_folder(out_dir, root, tables, summary)
    return IngestResult(out_dir, counts, report.reset_index(drop=True))
