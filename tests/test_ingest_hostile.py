"""geoloc-ingest against an unlucky user: paths through links, names that are not UTF-8, special files, bad
settings, a stuck camera clock. Each test fails on the ingest that lost files or said nothing."""

import csv
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_ingest import TOWNS, _photo, write_phone_folder

from geoloc_lib.data import dataset_builder as builder
from geoloc_lib.data.bursts import burst_repeats
from geoloc_lib.data.contract import load_dataset
from geoloc_lib.data.photo_exif import DATETIME, geotag, gps_degrees
from geoloc_lib.data.photo_listing import BAD_NAME, NOT_A_FILE, IngestError
from geoloc_lib.geo.sphere import haversine_km
from geoloc_lib.ingest import main as ingest_main

SMALL = ["--block-km", "2", "--geocell-min-samples", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def phones(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phone") / "DCIM"
    write_phone_folder(root)
    return root


@pytest.fixture
def photos(phones, tmp_path) -> Path:
    """A copy of the phone folder that a test may change."""
    return Path(shutil.copytree(phones, tmp_path / "DCIM", symlinks=True))


def _ingest(capsys, *argv) -> tuple[int, str]:
    code = ingest_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _report(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / builder.REPORT_CSV, keep_default_na=False)


def test_reingesting_a_list_exported_through_the_photos_link_keeps_every_photo(photos, tmp_path, capsys):
    out = tmp_path / "data" / "mine"
    assert _ingest(capsys, photos, out, *SMALL)[0] == 0
    # the user corrects one coordinate in a list made from train.csv, whose paths pass through `photos`
    rows = pd.concat([pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")])
    fixed = pd.DataFrame(
        {
            "image": [str(out / p) for p in rows["image"]],
            "latitude": rows["latitude"],
            "longitude": rows["longitude"],
        }
    )
    fixed.loc[0, "latitude"] += 0.001
    fixed.to_csv(tmp_path / "corrected.csv", index=False)
    # no buffer: the second ingest makes another split, whose buffer would leave other photos out
    code, err = _ingest(
        capsys, tmp_path / "corrected.csv", out, *SMALL, "--test-buffer-km", "0", "--overwrite"
    )
    assert code == 0, err
    assert os.path.realpath(out / "photos") == str(photos.resolve())  # not a link to itself
    reloaded = load_dataset(out, image_check="exists")  # every photo reachable again
    assert len(reloaded.train) + len(reloaded.test) == len(rows)


def test_a_photo_folder_reached_through_a_link_is_stored_without_dot_dots(photos, tmp_path, capsys):
    link = tmp_path / "Pictures"
    link.symlink_to(photos, target_is_directory=True)
    out = tmp_path / "data"
    assert _ingest(capsys, link, out, *SMALL)[0] == 0
    images = pd.read_csv(out / "train.csv")["image"]
    assert not images.str.contains(r"\.\.").any() and images.str.startswith("photos/lahore/").any()
    load_dataset(out, image_check="exists")


@pytest.mark.parametrize(
    "tops",
    [["/", "alpha", "beta"], [str(Path.home()), "alpha", "beta"]],
    ids=["the root", "a home folder"],
)
def test_photos_spread_over_the_root_or_a_home_folder_are_refused(tmp_path, tops):
    base, a, b = tops
    paths = pd.Series([os.path.join(base, a, "x", "1.jpg"), os.path.join(base, b, "y", "2.jpg")])
    with pytest.raises(IngestError, match="would link all of"):
        builder.photos_root(paths, tmp_path / "list.csv", tmp_path / "out")


def test_a_home_folder_is_refused_before_a_file_is_read(tmp_path, capsys):
    code, err = _ingest(capsys, Path.home(), tmp_path / "data")
    assert code == 2 and "ingest would read every file under it" in err and "read EXIF" not in err


def test_photos_inside_the_folder_being_replaced_are_refused(tmp_path):
    out = tmp_path / "out"
    inside = pd.Series([str(out / "keep" / "1.jpg"), str(out / "keep" / "2.jpg")])
    with pytest.raises(IngestError, match="the folder that would be replaced"):
        builder.photos_root(inside, tmp_path / "list.csv", out)


def test_a_name_that_is_not_utf8_is_reported_and_the_rest_ingested(photos, tmp_path, capsys):
    name = os.fsdecode(b"caf\xe9_old_camera.jpg")
    shutil.copyfile(photos / "lahore" / "IMG_0001.jpg", photos / "lahore" / name)
    out = tmp_path / "data"
    code, err = _ingest(capsys, photos, out, *SMALL)
    assert code == 0, err
    row = _report(out).set_index("reason").loc[BAD_NAME]
    assert row["image"].endswith("caf\\xe9_old_camera.jpg") and "rename it" in row["detail"]
    assert not list(tmp_path.glob(".data.*"))


def test_links_to_folders_dangling_links_and_pipes_each_have_a_report_row(photos, tmp_path, capsys):
    (photos / "elsewhere").symlink_to(photos / "lahore", target_is_directory=True)
    (photos / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    os.mkfifo(photos / "pipe.jpg")
    out = tmp_path / "data"
    assert _ingest(capsys, photos, out, *SMALL)[0] == 0
    report = _report(out).assign(name=lambda r: r["image"].map(lambda p: Path(p).name)).set_index("name")
    assert set(report.loc[["elsewhere", "gone.jpg", "loop.jpg", "pipe.jpg"], "reason"]) == {NOT_A_FILE}
    assert "not followed" in report.loc["elsewhere", "detail"]
    assert "leads nowhere" in report.loc["gone.jpg", "detail"] and "FIFO" in report.loc["pipe.jpg", "detail"]
    assert not pd.read_csv(out / "train.csv")["image"].str.contains("elsewhere").any()


def test_a_zero_byte_photo_is_called_empty_not_heic(photos, tmp_path, capsys):
    (photos / "cut_short.jpg").write_bytes(b"")
    assert _ingest(capsys, photos, tmp_path / "data", *SMALL)[0] == 0
    row = _report(tmp_path / "data").set_index("image").loc[str(photos.resolve() / "cut_short.jpg")]
    assert (
        row["reason"] == "unreadable"
        and "empty file (0 bytes)" in row["detail"]
        and "HEIC" not in row["detail"]
    )


def test_a_formula_file_name_cannot_run_in_a_spreadsheet(photos, tmp_path, capsys):
    shutil.copyfile(photos / "lahore" / "IMG_0002.jpg", photos / '=HYPERLINK("x").jpg')
    os.remove(photos / "lahore" / "IMG_0002.jpg")
    out = tmp_path / "data"
    assert _ingest(capsys, photos, out, *SMALL)[0] == 0
    for name in ("train.csv", "test.csv"):
        with open(out / name, newline="", encoding="utf-8") as f:
            cells = [cell for row in csv.reader(f) for cell in row]
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)
    ids = pd.concat([pd.read_csv(out / n) for n in ("train.csv", "test.csv")])["id"]
    assert '\'=HYPERLINK("x").jpg' in set(ids)
    load_dataset(out, image_check="exists")  # the image path still leads to the photo


def test_csv_positions_with_decimal_commas_and_the_exif_as_fallback(photos, tmp_path, capsys):
    listed = sorted(str(p.relative_to(photos)) for p in photos.rglob("IMG_*.jpg"))
    table = pd.DataFrame({"image": listed, "latitude": "", "longitude": ""})
    lahore = [i for i, p in enumerate(listed) if p.startswith("lahore/")]
    table.loc[lahore[0], ["latitude", "longitude"]] = ["31,5601", "74,3402"]  # a decimal comma
    table.loc[lahore[1], ["latitude", "longitude"]] = ["north", "east"]  # unreadable: the EXIF's position
    _photo(photos / "plain.jpg", (5, 5, 5))  # no EXIF position and no CSV position
    table.loc[len(table)] = ["plain.jpg", "", ""]
    table.to_csv(photos / "list.csv", index=False)
    out = tmp_path / "data"
    assert _ingest(capsys, photos / "list.csv", out, *SMALL)[0] == 0
    rows = pd.concat([pd.read_csv(out / n) for n in ("train.csv", "test.csv")]).set_index("id")
    assert rows.loc[listed[lahore[0]], ["latitude", "longitude"]].tolist() == [31.5601, 74.3402]
    near = haversine_km(
        rows.loc[listed[lahore[1]], "latitude"], rows.loc[listed[lahore[1]], "longitude"], 31.55, 74.34
    )
    assert near < 10  # the photo's own EXIF position, not "no GPS"
    row = _report(out).set_index("image").loc[str(photos.resolve() / "plain.jpg")]
    assert (
        row["reason"] == builder.NO_GPS and row["detail"] == "neither the EXIF nor the CSV gives a position"
    )


def test_a_southern_latitude_stored_negative_is_negated_once():
    assert gps_degrees((-33.0, 52.0, 0.0), "S") == pytest.approx(-(33 + 52 / 60))
    assert gps_degrees((-33.0, 52.0, 0.0), "N") == pytest.approx(33 + 52 / 60)  # the reference decides
    assert gps_degrees((-33.5,), "") == -33.5  # no reference: the sign as stored


def _brute_force_bursts(lat, lon, burst_m) -> dict[int, int]:
    """The rule written the slow way: every photo against every kept one."""
    kept, repeats = [], {}
    for i in range(len(lat)):
        close = [k for k in kept if haversine_km(lat[i], lon[i], lat[k], lon[k]) * 1000 <= burst_m]
        if close:
            repeats[i] = close[0]
        else:
            kept.append(i)
    return repeats


@pytest.mark.parametrize("burst_m", [0.0, 50.0, 400.0])
def test_the_grid_burst_check_equals_the_pairwise_rule(burst_m):
    rng = np.random.default_rng(1)
    spots = rng.uniform([24.0, 62.0], [36.5, 76.0], (40, 2))  # [40, 2] places across Pakistan
    pick = spots[rng.integers(0, 40, 600)]  # 600 photos around them, a few metres to a kilometre apart
    points = pick + rng.normal(0, 1, pick.shape) * rng.choice([1e-6, 1e-4, 3e-3], (600, 1))
    points[5] = points[3]  # the very same spot
    lat, lon = points[:, 0], points[:, 1]
    assert burst_repeats(lat, lon, burst_m) == _brute_force_bursts(lat, lon, burst_m)


def test_a_stuck_clock_and_a_batch_export_time_are_not_bursts(photos, tmp_path, capsys):
    lat, lon, _, _ = TOWNS["quetta"]
    for day in range(3):  # one spot on three days; an export set every file's DateTime alike
        exif = geotag(lat + 0.3, lon + 0.1)
        exif[DATETIME] = "2024:12:01 09:00:00"
        _photo(photos / "export" / f"day{day}.jpg", (80 * day, 50, 50), exif)
    out = tmp_path / "data"
    assert _ingest(capsys, photos, out, *SMALL)[0] == 0
    accepted = pd.concat([pd.read_csv(out / n) for n in ("train.csv", "test.csv")])["id"]
    assert {f"export/day{d}.jpg" for d in range(3)} <= set(accepted)


def test_a_stuck_clock_minute_of_many_photos_is_judged_in_near_linear_time():
    rng = np.random.default_rng(2)
    lat, lon = 30 + rng.uniform(0, 5, 20_000), 67 + rng.uniform(0, 5, 20_000)
    lat[1], lon[1] = lat[0] + 1e-5, lon[0]  # one real burst among them
    import time

    start = time.perf_counter()
    repeats = burst_repeats(lat, lon, 50.0)
    elapsed = time.perf_counter() - start
    assert repeats[1] == 0 and len(repeats) < 20
    assert elapsed < 5, f"{elapsed:.1f} s for one minute of 20,000 photos (the pairwise check took 12 s)"


@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("--geocell-target-radius-km", "0", "--geocell-target-radius-km must be in [1, 2000] km, not 0.0"),
        ("--geocell-min-samples", "0", "--geocell-min-samples must be a whole number of at least 2, not 0"),
        ("--burst-m", "nan", "--burst-m must be in [0, 1000] m"),
        ("--border-tolerance-km", "5000", "--border-tolerance-km must be in [0, 50] km, not 5000.0"),
        ("--test-fraction", "1.5", "--test-fraction must be in (0, 0.5]"),
        ("--workers", "-1", "--workers must be a whole number of at least 0"),
    ],
)
def test_settings_are_range_checked_before_a_photo_is_read(phones, tmp_path, capsys, option, value, expected):
    code, err = _ingest(capsys, phones, tmp_path / "data", option, value)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0]
    assert "read EXIF" not in err and not (tmp_path / "data").exists()


def test_a_damaged_write_leaves_the_old_folder_and_no_partial_one(photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "data"
    assert _ingest(capsys, photos, out, *SMALL)[0] == 0
    before = (out / "train.csv").read_bytes()

    def refuse(*args, **kwargs):
        raise builder.DataContractError("planted: the folder does not load")

    monkeypatch.setattr(builder, "load_dataset", refuse)
    code, err = _ingest(capsys, photos, out, *SMALL, "--seed", "1", "--overwrite")
    assert code == 2 and "nothing was replaced" in err and "planted" in err
    assert (out / "train.csv").read_bytes() == before and not list(tmp_path.glob(".data.*"))


def test_the_burst_radius_is_honoured_in_metres():
    lat = np.array([30.0, 30.0 + 40 / 111_195, 30.0 + 60 / 111_195])  # 40 m and 60 m north of the first
    lon = np.full(3, 70.0)
    assert burst_repeats(lat, lon, 50.0) == {1: 0}
    assert math.isclose(haversine_km(lat[0], lon[0], lat[1], lon[1]) * 1000, 40, rel_tol=1e-3)
