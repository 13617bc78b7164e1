"""A folder of geotagged photos (or a CSV of image, latitude, longitude) becomes a data folder in the contract.

0. The settings are range-checked and the folders checked before any photo is read.
1. Every entry under the photo folder (recursive; links to folders are not followed), or every row of the CSV,
   is listed with every path against one root, resolved once (data/photo_listing.py); each regular file is
   read without decoding pixels (data/photo_exif.py): its EXIF GPS position and capture time, its size and a
   hash of its first bytes.
2. Each is accepted or rejected with one reason (REASONS), in that order: not a regular file, a name that is
   not UTF-8, not an image, unreadable, no GPS, GPS at (0, 0), outside Pakistan (the bundled borders, with a
   tolerance), an exact duplicate of an earlier file, or a burst (within `burst_m` of an earlier photo with
   the same capture minute). "Earlier" is path order. Every rejected entry has a row in ingest_report.csv.
3. The accepted photos are split train/test by whole location blocks (data/splits.py), the training photos
   within `test_buffer_km` of a test photo are left out (each with a row in ingest_report.csv, LEFT_OUT), and
   geocells are built on the training photos only (geo/geocell_builder.py).
4. The folder is written under a temporary name, loaded back through the data contract, and only then
   renamed into place; an existing folder is replaced only with `overwrite`, and the photos are never
   touched. `photos` in the new folder links to the folder that holds them, so the CSVs' image paths work
   from the data folder. A failure removes the temporary folder.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from geoloc_lib.base.atomic_files import neutralise_formulas, write_json
from geoloc_lib.base.folder_marks import CELLS_CSV, TEST_CSV, TRAIN_CSV
from geoloc_lib.base.output_files import owning_folder
from geoloc_lib.data.bursts import burst_repeats
from geoloc_lib.data.contract import DataContractError, load_dataset
from geoloc_lib.data.photo_exif import IMAGE_SUFFIXES, NOT_AN_IMAGE, UNREADABLE, file_digest, read_facts
from geoloc_lib.data.photo_listing import BAD_NAME, NOT_A_FILE, IngestError, list_csv, list_folder, shown
from geoloc_lib.data.splits import location_split, nearest_km
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_at
from geoloc_lib.geo.geocell_builder import GeocellConfig, assign_cells, build_geocells

NO_GPS, ZERO_GPS, OUTSIDE = "no GPS", "GPS at (0, 0)", "outside Pakistan"
DUPLICATE, BURST = "exact duplicate", "burst"
LEFT_OUT = "near a test photo"  # accepted, but left out of training by the buffer around test places
REASONS = (NOT_A_FILE, BAD_NAME, NOT_AN_IMAGE, UNREADABLE, NO_GPS, ZERO_GPS, OUTSIDE, DUPLICATE, BURST)
PHOTOS_LINK = "photos"
REPORT_CSV, SUMMARY_JSON = "ingest_report.csv", "ingest_summary.json"
MIN_PHOTOS = 20  # fewer accepted photos cannot be split into train and test by location


@dataclass
class IngestConfig:
    test_fraction: float = 0.1  # share of the accepted photos held out as test.csv, by whole location blocks
    block_km: float = 10.0  # side of the location blocks that the split never cuts
    test_buffer_km: float = 1.0  # training photos this close to a test photo are left out (0: none)
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

    def __post_init__(self):
        problems = [
            f"{option_flag(name)} must be {wanted}, not {getattr(self, name)!r}"
            for name, (ok, wanted) in SETTING_RANGES.items()
            if not _is_number(getattr(self, name)) or not ok(getattr(self, name))
        ]
        problems += [
            f"{option_flag(f.name)} must name a column, not {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name.startswith("csv_") and not str(getattr(self, f.name)).strip()
        ]
        if problems:
            raise IngestError("; ".join(problems))


def option_flag(name: str) -> str:
    """The command-line option of an IngestConfig field: csv_image_column -> --image-column."""
    return "--" + name.removeprefix("csv_").replace("_", "-")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# every numeric setting's range, checked before a photo is read (NaN and infinity are never in range): a border
# tolerance of thousands of km would give a province to a photo from anywhere, and a cell radius of 0 km splits
# every cell forever
SETTING_RANGES = {
    "test_fraction": (lambda v: 0 < v <= 0.5, "in (0, 0.5]"),
    "block_km": (lambda v: 0 < v <= 500, "in (0, 500] km"),
    "test_buffer_km": (lambda v: 0 <= v <= 50, "in [0, 50] km (0: no buffer)"),
    "seed": (lambda v: v >= 0 and v == int(v), "a whole number of at least 0"),
    "border_tolerance_km": (lambda v: 0 <= v <= 50, "in [0, 50] km"),
    "burst_m": (lambda v: 0 <= v <= 1000, "in [0, 1000] m (0: only photos at the very same spot)"),
    "geocell_min_samples": (lambda v: v >= 2 and v == int(v), "a whole number of at least 2"),
    "geocell_target_radius_km": (lambda v: 1 <= v <= 2000, "in [1, 2000] km"),
    "workers": (lambda v: v >= 0 and v == int(v), "a whole number of at least 0 (0: every core)"),
}


@dataclass
class IngestResult:
    data_dir: Path
    counts: pd.DataFrame  # one row per outcome: accepted (train, test) and each rejection reason
    report: pd.DataFrame  # one row per rejected file: image, reason, detail


def _source_files(source: Path, cfg: IngestConfig) -> pd.DataFrame:
    """Every listed entry: path, csv_latitude, csv_longitude, csv_position (the CSV's text), and reason/detail
    for an entry that is not a regular file or has a name that is not UTF-8 ('' otherwise)."""
    if source.is_dir():
        return list_folder(source)
    return list_csv(source, cfg.csv_image_column, cfg.csv_latitude_column, cfg.csv_longitude_column)


def _judge_positions(facts: pd.DataFrame, cfg: IngestConfig) -> None:
    """Set latitude, longitude, province_id, and reason/detail for every file without a usable position.

    A CSV position is used where both its numbers are valid coordinates; elsewhere the photo's own EXIF."""
    from_csv = _valid_position(facts["csv_latitude"], facts["csv_longitude"])
    facts["latitude"] = facts["csv_latitude"].where(from_csv, facts["gps_latitude"])
    facts["longitude"] = facts["csv_longitude"].where(from_csv, facts["gps_longitude"])
    open_ = facts["reason"] == ""
    lat, lon = facts["latitude"], facts["longitude"]
    valid = _valid_position(lat, lon)
    nowhere = open_ & ~valid
    facts.loc[nowhere, "reason"] = NO_GPS
    facts.loc[nowhere, "detail"] = [
        f"the CSV's position ({text}) is not a pair of coordinates, and the EXIF has none"
        if text
        else "neither the EXIF nor the CSV gives a position"
        for text in facts.loc[nowhere, "csv_position"]
    ]
    facts.loc[open_ & valid & (lat == 0) & (lon == 0), "reason"] = ZERO_GPS  # a receiver's placeholder
    placed = (facts["reason"] == "").to_numpy()
    facts["province_id"] = -1
    facts.loc[placed, "province_id"] = province_at(lat[placed], lon[placed], cfg.border_tolerance_km)
    outside = placed & (facts["province_id"] < 0).to_numpy()
    facts.loc[outside, "reason"] = OUTSIDE
    facts.loc[outside, "detail"] = [
        f"{a:.5f}, {b:.5f}" for a, b in zip(lat[outside], lon[outside], strict=True)
    ]


def _valid_position(lat: pd.Series, lon: pd.Series) -> pd.Series:
    return lat.between(-90, 90) & lon.between(-180, 180)


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
    """A photo within `burst_m` of an earlier kept photo with the same capture minute repeats that photo."""
    open_ = facts[(facts["reason"] == "") & (facts["taken"] != "")]
    minute = open_["taken"].str[:16]
    repeats, details = [], []
    for _, group in open_[minute.duplicated(keep=False)].groupby(minute, sort=False):
        found = burst_repeats(group["latitude"].to_numpy(), group["longitude"].to_numpy(), burst_m)
        repeats += [group.index[i] for i in found]
        details += ["with " + group["path"].iloc[earlier] for earlier in found.values()]
    facts.loc[repeats, "reason"] = BURST
    facts.loc[repeats, "detail"] = details


def judge(files: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """FACT_COLUMNS of every file with latitude, longitude, province_id, and reason ('' when accepted)."""
    listed = files["reason"] == ""
    read = read_facts(files.loc[listed, "path"].tolist(), cfg.workers or None).set_index(files.index[listed])
    facts = read.reindex(files.index)
    facts["path"] = files["path"]
    facts.loc[~listed, ["problem", "detail"]] = files.loc[~listed, ["reason", "detail"]].to_numpy()
    facts[["size"]] = facts[["size"]].fillna(-1)
    facts[["prefix_hash", "taken"]] = facts[["prefix_hash", "taken"]].fillna("")
    for column in ("csv_latitude", "csv_longitude", "csv_position"):
        facts[column] = files[column]
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


def _left_out(rows, train, test, accepted: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """Report rows of the accepted photos the buffer left out of training, with their distance to a test photo."""
    left = ~rows.index.isin(train.index) & ~rows.index.isin(test.index)  # [A]
    distance = nearest_km(rows[left], test)
    return pd.DataFrame(
        {
            "image": accepted.loc[left, "path"].map(shown).to_numpy(),
            "reason": LEFT_OUT,
            "detail": [
                f"{d:.3f} km from the nearest test photo; --test-buffer-km {cfg.test_buffer_km:g} leaves it out of "
                "training so that no test place is seen there"
                for d in distance
            ],
        }
    )


def split_and_cells(rows: pd.DataFrame, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, cells): a location-disjoint split, geocells from the training rows alone."""
    if len(rows) < MIN_PHOTOS:
        raise IngestError(
            f"only {len(rows)} photos were accepted; at least {MIN_PHOTOS} are needed to split them into train "
            f"and test by location (see {REPORT_CSV} for why the others were rejected)"
        )
    train, test = location_split(rows, cfg.test_fraction, cfg.block_km, cfg.seed, cfg.test_buffer_km)
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


def outcome_counts(facts: pd.DataFrame, n_train: int, n_test: int, cfg: IngestConfig) -> pd.DataFrame:
    accepted = int((facts["reason"] == "").sum())
    counts = [("accepted: train", n_train), ("accepted: test", n_test)]
    # kept out of both: a training photo this near a test photo would show the test place in training
    counts += [(f"left out: within {cfg.test_buffer_km:g} km of a test photo", accepted - n_train - n_test)]
    counts += [(f"rejected: {reason}", int((facts["reason"] == reason).sum())) for reason in REASONS]
    return pd.DataFrame(counts, columns=["outcome", "photos"]).set_index("outcome")


def _rejections(report: pd.DataFrame) -> str:
    """Each reason the files were rejected for, the most common first, with its count and one file as an
    example: no folder (and so no ingest_report.csv) is written when every file is rejected."""
    parts = []
    for reason, rows in sorted(report.groupby("reason"), key=lambda item: -len(item[1])):
        example = rows.iloc[0]
        parts.append(f"{reason}: {len(rows)} (e.g. {Path(example['image']).name}: {example['detail']})")
        if reason == OUTSIDE:  # the one a user of another country's photos meets first
            parts[-1] += (
                " [only photos inside Pakistan's borders are kept; --border-tolerance-km (0-50) widens them]"
            )
    return "; ".join(parts)


def _check_folders(source: Path, out_dir: Path, overwrite: bool) -> None:
    """Before any photo is read: the source exists, the output is a folder ingest may write, and neither holds
    the other."""
    if not source.exists():
        raise IngestError(f"{source}: no such folder or CSV file")
    if not source.is_dir() and not source.is_file():
        raise IngestError(f"{source}: neither a folder nor a file; pass the folder of photos or a CSV")
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        raise IngestError(
            f"{source} is a photo; pass the folder that holds the photos (or a CSV listing them)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise IngestError(
            f"{out_dir} is a file, not a folder; name a new folder for the data, such as data/my_photos"
        )
    out = out_dir.resolve()
    if source.is_dir() and _too_broad(source.resolve()):
        raise IngestError(
            f"{source} is {source.resolve()}: ingest would read every file under it and link all of it; pass "
            "the folder that holds the photos"
        )
    if source.is_dir():
        _check_apart(source.resolve(), out, out_dir)
    elif out in source.resolve().parents:
        raise IngestError(
            f"{source} lies inside {out_dir}, the folder that would be replaced; copy the CSV out of it first"
        )
    owner = owning_folder(out / "x")
    if owner is not None and owner[1] != out:
        raise IngestError(
            f"{out_dir} lies inside the {owner[0]} folder {owner[1]}; put the new data folder beside it, "
            "such as data/my_photos"
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


def _too_broad(root: Path) -> bool:
    """`/` or a home folder: too much to read, and too much for the `photos` link to expose."""
    return root == Path(root.anchor) or root == Path.home().resolve() or root.parent == Path("/home")


def _check_apart(photos: Path, out: Path, out_dir: Path) -> None:
    if out == photos or photos in out.parents or out in photos.parents:
        raise IngestError(
            f"{out_dir}: the output folder must lie outside the photos' folder {photos} (and not hold it): "
            "ingest never writes beside the photos or replaces them"
        )


def photos_root(paths: pd.Series, source: Path, out_dir: Path) -> str:
    """The one folder the `photos` link points at: the resolved photo folder, or the deepest folder that holds
    every accepted photo of a CSV (their folders are resolved). Refused when it is `/` or a home folder (the
    photos lie too far apart to link one folder) or lies inside the folder that ingest replaces."""
    root = (
        source.resolve() if source.is_dir() else Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    )
    if _too_broad(root):
        tops = sorted({Path(*Path(p).parts[: len(root.parts) + 1]).as_posix() for p in paths})
        raise IngestError(
            f"the accepted photos of {source} lie under {', '.join(tops[:3])}{' ...' if len(tops) > 3 else ''}, "
            f"so `{PHOTOS_LINK}` would link all of {root}; gather the photos under one folder, or ingest each "
            "folder on its own"
        )
    out = out_dir.resolve()
    if root == out or out in root.parents:
        raise IngestError(
            f"the photos listed in {source} lie inside {out_dir}, the folder that would be replaced; list them "
            f"by their own folder (not through {out_dir / PHOTOS_LINK})"
        )
    _check_apart(root, out, out_dir)
    return str(root)


def _write_folder(out_dir: Path, root: str, tables: dict[str, pd.DataFrame], summary: dict) -> None:
    """Everything goes into a hidden sibling folder first, which is loaded back through the data contract and
    then takes the output folder's place. Any failure removes the hidden folder and leaves the old one."""
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        (partial / PHOTOS_LINK).symlink_to(root, target_is_directory=True)
        for name, frame in tables.items():
            neutralise_formulas(frame).to_csv(partial / name, index=False)  # a file name may start with "="
        write_json(partial / SUMMARY_JSON, summary)
        try:
            load_dataset(partial, image_check="exists", allow_missing_provinces=True)
        except DataContractError as err:
            raise IngestError(
                f"the data folder came out unreadable, so nothing was replaced: {err}"
            ) from None
        if out_dir.is_dir() and any(out_dir.iterdir()):
            replaced = out_dir.with_name(f".{out_dir.name}.replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(out_dir, replaced)
            os.replace(partial, out_dir)
            shutil.rmtree(replaced)
        else:
            os.replace(partial, out_dir)  # also over an empty folder
    finally:
        shutil.rmtree(partial, ignore_errors=True)


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
    report["image"] = report["image"].map(shown)
    if accepted.empty:
        raise IngestError(f"none of the {len(facts)} files was accepted: {_rejections(report)}")
    root = photos_root(accepted["path"], source, out_dir)
    rows = _contract_rows(accepted, root)  # [A], in the order of `accepted`
    train, test, cells = split_and_cells(rows, cfg)
    report = pd.concat([report, _left_out(rows, train, test, accepted, cfg)], ignore_index=True)
    counts = outcome_counts(facts, len(train), len(test), cfg)
    summary = {"source": str(source.resolve()), "files": len(facts), "config": asdict(cfg)}
    summary["outcomes"] = counts["photos"].to_dict()
    tables = {TRAIN_CSV: train, TEST_CSV: test, CELLS_CSV: cells, REPORT_CSV: report}
    _write_folder(out_dir, root, tables, summary)
    return IngestResult(out_dir, counts, report.reset_index(drop=True))
