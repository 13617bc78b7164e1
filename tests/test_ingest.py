"""geoloc-ingest: a folder of geotagged JPEGs (written here, as a phone writes them) becomes a data folder of the
contract, every rejected file with its reason, split by location, trainable with no edit."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoloc_lib.data import dataset_builder as builder
from geoloc_lib.data.contract import load_dataset
from geoloc_lib.data.photo_exif import geotag, gps_degrees, read_facts
from geoloc_lib.data.splits import location_blocks
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_at
from geoloc_lib.ingest import main as ingest_main

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "exif_photos"
TOWNS = {  # town: (lat, lon, its province, spread in degrees that stays inside the province)
    "karachi": (24.86, 67.01, "Sindh", 0.05),
    "lahore": (31.55, 74.34, "Punjab", 0.05),
    "peshawar": (34.01, 71.58, "Khyber Pakhtunkhwa", 0.05),
    "islamabad": (33.69, 73.06, "Islamabad Capital Territory", 0.02),
    "gilgit": (35.92, 74.31, "Gilgit-Baltistan", 0.05),
    "quetta": (30.18, 66.99, "Balochistan", 0.05),
    "muzaffarabad": (34.37, 73.47, "Azad Kashmir", 0.02),
}
PER_TOWN = 30
SANDSPIT = (24.80, 66.93)  # a Karachi beach just beyond the generalised coastline of the bundled borders


def _photo(path: Path, colour, exif=None, image=None, size=(48, 36)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"exif": exif} if exif is not None else {}
    (image.convert("RGB") if image is not None else Image.new("RGB", size, colour)).save(
        path, "JPEG", quality=90, **kwargs
    )


def write_phone_folder(root: Path) -> dict[str, str]:
    """PER_TOWN photos around each town, in sub-folders, plus one bad file of every reason; returns
    {file name: the reason it must be rejected for}."""
    rng = np.random.default_rng(0)
    for t, (name, (lat, lon, _, spread)) in enumerate(TOWNS.items()):
        for i in range(PER_TOWN):
            dlat, dlon = (0.0, 0.0) if i == 0 else rng.uniform(-spread, spread, 2)
            colour = (30 * t, 255 - 30 * t, int(rng.integers(0, 255)))  # each photo's bytes differ
            taken = f"2024-0{1 + t}-{1 + i:02d} 10:00:00"
            _photo(root / name / f"IMG_{i:04d}.jpg", colour, geotag(lat + dlat, lon + dlon, taken))
    _photo(root / "beach" / "sandspit.jpg", (0, 90, 200), geotag(*SANDSPIT, "2024-09-01 08:00:00"))
    bad = root / "zz_later"  # after the towns in path order, so the copies here are the repeats
    _photo(bad / "no_gps.jpg", (1, 2, 3))
    _photo(bad / "zero.jpg", (4, 5, 6), geotag(0.0, 0.0, "2024-09-02 08:00:00"))
    _photo(bad / "london.jpg", (7, 8, 9), geotag(51.5, -0.13, "2024-09-03 08:00:00"))
    _photo(bad / "delhi.jpg", (7, 8, 10), geotag(28.61, 77.21, "2024-09-04 08:00:00"))
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (bad / "notes.txt").write_text("not a photo\n")
    shutil.copyfile(root / "lahore" / "IMG_0003.jpg", bad / "copy_of_lahore.jpg")
    # a second shot of Karachi's first photo: the same minute, 11 m away
    _photo(
        bad / "burst.jpg",
        (9, 9, 9),
        geotag(TOWNS["karachi"][0] + 1e-4, TOWNS["karachi"][1], "2024-01-01 10:00:30"),
    )
    return {
        "no_gps.jpg": builder.NO_GPS,
        "zero.jpg": builder.ZERO_GPS,
        "london.jpg": builder.OUTSIDE,
        "delhi.jpg": builder.OUTSIDE,
        "broken.jpg": "unreadable",
        "notes.txt": "not an image",
        "copy_of_lahore.jpg": builder.DUPLICATE,
        "burst.jpg": builder.BURST,
    }


@pytest.fixture(scope="module")
def phone_folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("phone") / "DCIM"
    return root, write_phone_folder(root)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ingested(phone_folder, tmp_path_factory):
    root, _ = phone_folder
    before = _tree_digest(root)
    out = tmp_path_factory.mktemp("ingested") / "my_photos"
    # no buffer here: these tests follow each photo (the town centres among them) from EXIF to the folder
    config = builder.IngestConfig(
        block_km=2.0, test_fraction=0.2, geocell_min_samples=8, workers=2, test_buffer_km=0
    )
    result = builder.ingest(root, out, config)
    assert _tree_digest(root) == before  # the photos are never modified, and nothing is written beside them
    return result


def test_gps_degrees_minutes_seconds_with_references():
    assert gps_degrees((33.0, 41.0, 24.0), "N") == pytest.approx(33 + 41 / 60 + 24 / 3600)
    assert gps_degrees((73.0, 3.0, 36.0), b"W\x00") == pytest.approx(-(73 + 3 / 60 + 36 / 3600))
    assert gps_degrees((12.5,), "S") == -12.5  # a single decimal-degree value
    assert np.isnan(gps_degrees((1.0, float("nan"), 0.0), "N"))


def test_the_border_tolerance_places_a_beach_beyond_the_generalised_coast():
    assert province_at([SANDSPIT[0]], [SANDSPIT[1]]).tolist() == [-1]
    assert province_at([SANDSPIT[0]], [SANDSPIT[1]], tolerance_km=5.0).tolist() == [prov.lookup("Sindh").id]
    assert province_at([28.61], [77.21], tolerance_km=5.0).tolist() == [-1]  # Delhi stays outside


def test_every_bad_file_is_reported_with_its_reason(phone_folder, ingested):
    _, expected = phone_folder
    report = ingested.report.assign(name=ingested.report["image"].map(lambda p: Path(p).name))
    assert dict(zip(report["name"], report["reason"], strict=True)) == expected
    assert report.loc[report["name"] == "copy_of_lahore.jpg", "detail"].item().endswith("lahore/IMG_0003.jpg")
    assert report.loc[report["name"] == "burst.jpg", "detail"].item().endswith("karachi/IMG_0000.jpg")
    counts = ingested.counts["photos"]
    assert counts["accepted: train"] + counts["accepted: test"] == len(TOWNS) * PER_TOWN + 1  # and the beach
    assert counts["left out: within 0 km of a test photo"] == 0  # no buffer asked
    assert counts["rejected: outside Pakistan"] == 2 and counts["rejected: burst"] == 1
    on_disk = pd.read_csv(ingested.data_dir / builder.REPORT_CSV)
    assert sorted(on_disk["reason"]) == sorted(expected.values())


def test_the_buffer_leaves_out_and_names_the_training_photos_beside_a_test_photo(phone_folder, tmp_path):
    from geoloc_lib.geo.sphere import haversine_km

    root, _ = phone_folder
    config = builder.IngestConfig(
        block_km=2.0, test_fraction=0.2, geocell_min_samples=8, workers=2
    )  # 1 km buffer
    result = builder.ingest(root, tmp_path / "buffered", config)
    ds = load_dataset(result.data_dir)
    nearest = [
        haversine_km(r.latitude, r.longitude, ds.train["latitude"], ds.train["longitude"]).min()
        for r in ds.test.itertuples()
    ]
    assert min(nearest) >= 1.0  # pair by pair: no training photo within 1 km of a test photo
    left = result.report[result.report["reason"] == builder.LEFT_OUT]
    assert len(left) == result.counts.loc["left out: within 1 km of a test photo", "photos"] > 0
    assert all(float(detail.split(" km")[0]) < 1.0 for detail in left["detail"]), left["detail"].tolist()
    kept = set(pd.concat([ds.train, ds.test])["id"])
    assert not {Path(p).relative_to(root).as_posix() for p in left["image"]} & kept


def test_the_folder_meets_the_contract_with_known_provinces_and_a_location_disjoint_split(ingested):
    ds = load_dataset(ingested.data_dir, image_check="decode")  # paths work from the folder, through `photos`
    rows = pd.concat([ds.train, ds.test])
    rows["town"] = rows["id"].str.split("/").str[0]
    for town, (lat, lon, province, _) in TOWNS.items():
        assert set(rows.loc[rows["town"] == town, "province"]) == {prov.lookup(province).name}, town
        first = rows[rows["id"] == f"{town}/IMG_0000.jpg"].iloc[0]  # the town centre itself, from EXIF
        assert (first["latitude"], first["longitude"]) == pytest.approx((lat, lon), abs=1e-5)
    assert rows.loc[rows["town"] == "beach", "province"].tolist() == ["Sindh"]
    blocks = location_blocks(rows["latitude"], rows["longitude"], 2.0)
    train_blocks, test_blocks = set(blocks[: len(ds.train)]), set(blocks[len(ds.train) :])
    assert train_blocks.isdisjoint(test_blocks) and len(ds.test) > 0
    # geocells come from the training photos only: every cell's centre lies among its training members
    assert set(ds.train["cell_id"]) == set(ds.cells["cell_id"])
    assert all(n >= 1 for n in ds.cells["province_id"].value_counts())  # Islamabad's 30 photos get a cell


def test_a_csv_of_paths_and_coordinates_is_ingested_the_same_way(phone_folder, tmp_path):
    root, _ = phone_folder
    table = pd.DataFrame(
        {
            "file": [
                "DCIM/lahore/IMG_0001.jpg",
                "DCIM/karachi/IMG_0002.jpg",
                "missing.jpg",
                "DCIM/zz_later/notes.txt",
            ],
            "lat": [31.5, 24.9, 31.0, 31.0],
            "lon": [74.3, 67.0, 74.0, 74.0],
        }
    )
    rows = [table]
    for town, (lat, lon, *_rest) in TOWNS.items():
        files = [f"DCIM/{town}/IMG_{i:04d}.jpg" for i in range(3, PER_TOWN)]
        rows.append(pd.DataFrame({"file": files, "lat": lat, "lon": lon + np.arange(len(files)) * 0.01}))
    (root.parent / "list.csv").write_text(pd.concat(rows).to_csv(index=False))
    argv = [str(root.parent / "list.csv"), str(tmp_path / "out"), "--image-column", "file"]
    argv += [
        "--latitude-column",
        "lat",
        "--longitude-column",
        "lon",
        "--block-km",
        "2",
        "--geocell-min-samples",
        "8",
        "--test-buffer-km",  # every photo stays: the test follows Lahore's second photo to the folder
        "0",
    ]
    assert ingest_main(argv) == 0
    report = pd.read_csv(tmp_path / "out" / builder.REPORT_CSV)
    assert sorted(report["reason"]) == ["not an image", "unreadable"]  # the missing file cannot be read
    ds = load_dataset(tmp_path / "out", image_check="exists")
    lahore = pd.concat([ds.train, ds.test]).set_index("id").loc["lahore/IMG_0001.jpg"]
    assert (lahore["latitude"], lahore["longitude"]) == (31.5, 74.3)  # the CSV's position, not the EXIF's


def test_folders_are_refused_before_anything_is_written(phone_folder, ingested, tmp_path, capsys):
    root, _ = phone_folder
    assert ingest_main([str(root), str(ingested.data_dir)]) == 2  # exists, not empty
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(builder.IngestError, match="outside the photos"):
        builder.ingest(root, root / "dataset")
    with pytest.raises(builder.IngestError, match="outside the photos"):
        builder.ingest(root, root.parent)  # would hold the photos
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(builder.IngestError, match="not written by ingest"):
        builder.ingest(root, other, builder.IngestConfig(overwrite=True))
    assert (other / "chapter1.tex").read_text() == "precious"
    with pytest.raises(builder.IngestError, match="no such folder"):
        builder.ingest(tmp_path / "my_photoz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_an_ingested_folder_whole(phone_folder, tmp_path):
    root, _ = phone_folder
    out = tmp_path / "data"
    config = builder.IngestConfig(block_km=2.0, geocell_min_samples=8)
    builder.ingest(root, out, config)
    (out / "stale.txt").write_text("from before")
    builder.ingest(
        root, out, builder.IngestConfig(block_km=2.0, geocell_min_samples=8, seed=1, overwrite=True)
    )
    assert not (out / "stale.txt").exists() and (out / "train.csv").is_file()
    assert not list(tmp_path.glob(".data.*"))  # no partial or replaced folder left behind


def test_a_folder_with_nothing_to_keep_says_why_for_each_reason_with_an_example(tmp_path, capsys):
    # holiday photos from abroad and a stray note: no folder is written, so the one line is all the user gets
    photos = tmp_path / "holiday"
    _photo(photos / "rome.jpg", (1, 2, 3), geotag(41.9, 12.5, "2024-09-03 08:00:00"))
    _photo(photos / "london.jpg", (7, 8, 9), geotag(51.5, -0.13, "2024-09-03 09:00:00"))
    (photos / "notes.txt").write_text("not a photo\n")
    code = ingest_main([str(photos), str(tmp_path / "out")])
    line = capsys.readouterr().err.strip().split("\n")[-1]  # after the EXIF progress bar
    assert code == 2 and not (tmp_path / "out").exists()
    assert line.startswith(
        "geoloc-ingest: error: none of the 3 files was accepted: outside Pakistan: 2 (e.g. "
    )
    assert "--border-tolerance-km" in line  # the most common reason first, with what can be changed
    assert line.endswith("; not an image: 1 (e.g. notes.txt: no image format recognised)")


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason="the real camera photos (shared/data) are not here")
def test_real_camera_photos_read_to_their_labels_and_all_lie_outside_pakistan(tmp_path):
    labels = pd.read_csv(SHARED_PHOTOS / "labels.csv")
    facts = read_facts([str(SHARED_PHOTOS / name) for name in labels["image"]], workers=1)
    assert (facts["problem"] == "").all()
    assert np.abs(facts["gps_latitude"] - labels["latitude"]).max() <= 1e-5
    assert np.abs(facts["gps_longitude"] - labels["longitude"]).max() <= 1e-5
    photos = tmp_path / "photos"
    shutil.copytree(SHARED_PHOTOS, photos, ignore=shutil.ignore_patterns("*.csv"))
    with pytest.raises(builder.IngestError, match="none of the 18 files was accepted: outside Pakistan: 18 "):
        builder.ingest(photos, tmp_path / "out")
    judged = builder.judge(builder._source_files(photos, builder.IngestConfig()), builder.IngestConfig())
    assert (judged["reason"] == builder.OUTSIDE).all() and len(judged) == len(labels)


def write_scene_folder(root: Path, scratch: Path) -> int:
    """About 330 phone photos of the demo generator's scenes (their content depends on the place) spread over
    Pakistan, with EXIF GPS and capture times, in seven day folders: a small own dataset. Returns the count."""
    from dataclasses import replace

    from geoloc_lib.data.demo_data import TINY_DEMO, generate_demo_dataset

    demo = generate_demo_dataset(
        scratch, replace(TINY_DEMO, n_train=260, n_test=60, image_size=96, workers=1)
    )
    rows = pd.concat([pd.read_csv(demo / "train.csv"), pd.read_csv(demo / "test.csv")])
    for i, row in enumerate(rows.itertuples()):
        taken = f"2024-03-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"
        with Image.open(demo / row.image) as scene:
            _photo(
                root / f"day{i % 7}" / f"IMG_{i:04d}.jpg",
                None,
                geotag(row.latitude, row.longitude, taken),
                scene,
            )
    return len(rows)


@pytest.mark.slow
def test_a_few_hundred_own_photos_train_through_phase0_phase1_and_the_error_maps_on_the_defaults(tmp_path):
    """00 ingests them, 02b and 03 train and 04 evaluates with every data-dependent setting at its default
    (cells, top_cells, the test and validation blocks); only the schedule is shortened."""
    from test_notebooks_maps import _run

    photos = write_scene_folder(tmp_path / "DCIM", tmp_path / "scenes")
    data, runs = tmp_path / "my_photos", tmp_path / "runs"
    _run(
        "00_data_audit",
        tmp_path,
        data_dir=str(data),
        ingest_from=str(tmp_path / "DCIM"),
        output_dir=str(tmp_path / "audit"),
    )
    train, test = pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")
    assert 250 < len(train) + len(test) <= photos and len(test) > 0
    from geoloc_lib.geo.sphere import haversine_km  # ingest's default 1 km buffer, checked pair by pair

    assert (
        min(
            haversine_km(r.latitude, r.longitude, train["latitude"], train["longitude"]).min()
            for r in test.itertuples()
        )
        >= 1.0
    )
    schedule = dict(epochs=2, batches_per_epoch=10)
    common = dict(data_dir=str(data), runs_dir=str(runs), cache_dir=str(tmp_path / "cache"), num_workers=0)
    _run("02b_train_phase0", tmp_path, run_name="p0", **common, **schedule)
    p0 = runs / "p0" / "checkpoints" / "phase0" / "phase0_best.pt"
    _run("03_train_phase1", tmp_path, run_name="p1", **common, **schedule)  # finds p0 itself
    assert json.loads((runs / "p1" / "config.json").read_text())["phase0_checkpoint"] == str(p0)
    _run("04_error_maps", tmp_path, run_dir=str(runs / "p1"), worst_n=5)
    predictions = pd.read_csv(runs / "p1" / "evaluation" / "predictions.csv")
    assert sorted(predictions["id"]) == sorted(test["id"])  # every held-out photo was placed and scored
