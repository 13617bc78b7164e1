import numpy as np
import pandas as pd
import pytest

from geoloc_lib.data.contract import DataContractError, load_cell_metadata, load_dataset, load_split
from geoloc_lib.geo.geocell_builder import GeocellConfig, assign_cells, build_geocells
from geoloc_lib.geo.sphere import haversine_km


def _edit(path, fn):
    df = pd.read_csv(path)
    df = fn(df)
    df.to_csv(path, index=False)


def test_valid_demo_folder_loads(tiny_data):
    ds = load_dataset(tiny_data, image_check="decode")
    assert set(ds.train["province_id"]) == set(range(7))
    assert ds.train["image_path"].map(lambda p: p.startswith("/")).all()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.drop(columns=["latitude"]), "missing column"),
        (lambda d: d.assign(province=d["province"].where(d.index != 3, "Atlantis")), "unknown province"),
        (
            lambda d: d.assign(province_id=d["province_id"].where(d.index != 2, (d["province_id"] + 1) % 7)),
            "province_id disagrees",
        ),
        (lambda d: d.assign(latitude=d["latitude"].where(d.index != 1, np.nan)), "outside Pakistan"),
        (lambda d: d.assign(longitude=d["longitude"].where(d.index != 1, 10.0)), "outside Pakistan"),
        (lambda d: d.assign(cell_id=d["cell_id"].where(d.index != 4, 99999)), "not in cell_metadata"),
        (lambda d: d.assign(image=d["image"].where(d.index != 5, "images/nope.jpg")), "not found"),
        (lambda d: d.iloc[:0], "no rows"),
    ],
)
def test_bad_train_csv_gets_clear_error(tiny_copy, edit, match):
    _edit(tiny_copy / "train.csv", edit)
    with pytest.raises(DataContractError, match=match) as err:
        load_dataset(tiny_copy)
    message = str(err.value)
    assert "train.csv" in message and "Fix:" in message
    if match not in ("missing column", "no rows"):
        assert "line " in message  # names the offending row(s)


def test_cell_of_another_province(tiny_copy):
    cells = pd.read_csv(tiny_copy / "cell_metadata.csv")
    foreign = int(cells.loc[cells["province_id"] == 1, "cell_id"].iloc[0])
    _edit(
        tiny_copy / "test.csv", lambda d: d.assign(cell_id=d["cell_id"].where(d["province_id"] != 0, foreign))
    )
    with pytest.raises(DataContractError, match="belongs to another province"):
        load_dataset(tiny_copy)


def test_corrupt_image_detected_on_decode(tiny_copy):
    path = tiny_copy / pd.read_csv(tiny_copy / "test.csv")["image"].iloc[0]
    path.write_bytes(b"not a jpeg")
    load_dataset(tiny_copy, image_check="exists")  # existence alone passes
    with pytest.raises(DataContractError, match="cannot be decoded"):
        load_dataset(tiny_copy, image_check="decode")


def test_province_without_training_rows(tiny_copy):
    _edit(tiny_copy / "train.csv", lambda d: d[d["province_id"] != 6])
    with pytest.raises(DataContractError, match=r"no training rows for province\(s\) \['Azad Kashmir'\]"):
        load_dataset(tiny_copy)
    assert len(load_dataset(tiny_copy, allow_missing_provinces=True).train)


def test_original_system_csv_format(tmp_path):
    """Full names, aliases, contiguous per-province ids, neighbor_cell_ids, no n_samples column."""
    (tmp_path / "cell_metadata.csv").write_text(
        "cell_id,province,province_id,center_lat,center_lon,radius_km,neighbor_cell_ids\n"
        '0,Sindh,0,24.86,67.01,12.5,"1"\n1,Sindh,0,25.39,68.37,20.0,"0"\n'
        '2,Khyber Pakhtunkhwa,2,34.01,71.52,30.0,""\n3,KPK,2,34.77,72.36,25.0,"2"\n'
    )
    cells = load_cell_metadata(tmp_path / "cell_metadata.csv")
    assert cells["province"].tolist() == ["Sindh", "Sindh", "Khyber Pakhtunkhwa", "Khyber Pakhtunkhwa"]
    assert cells["n_samples"].isna().all()
    (tmp_path / "train.csv").write_text(
        "id,image,latitude,longitude,province,province_id,cell_id,extra\n"
        "a,x.jpg,24.9,67.0,Sindh,0,0,keep\nb,y.jpg,34.0,71.5,KP,2,2,me\n"
    )
    split = load_split(tmp_path / "train.csv", cells, image_check="none")
    assert split["province"].tolist() == ["Sindh", "Khyber Pakhtunkhwa"] and "extra" in split


def _points(center, n, sigma_km, rng):
    lat = center[0] + rng.normal(0, sigma_km / 111, n)
    lon = center[1] + rng.normal(0, sigma_km / 95, n)
    return lat, lon


def _frame(parts):
    rows = [
        pd.DataFrame({"latitude": lat, "longitude": lon, "province_id": pid}) for pid, (lat, lon) in parts
    ]
    return pd.concat(rows, ignore_index=True)


def test_small_province_gets_one_cell_and_identical_points():
    rng = np.random.default_rng(0)
    train = _frame(
        [
            (0, _points((24.9, 67.0), 500, 20, rng)),
            (6, _points((34.4, 73.5), 10, 5, rng)),
            (3, (np.full(100, 33.7), np.full(100, 73.0))),
        ]
    )
    cells = build_geocells(train, GeocellConfig(min_samples=40))
    assert (cells["province_id"] == 6).sum() == 1
    assert (cells["province_id"] == 3).sum() == 1  # all points identical
    ict = cells[cells["province_id"] == 3].iloc[0]
    assert ict["center_lat"] == pytest.approx(33.7) and ict["radius_km"] == pytest.approx(1.0)
    assert cells.groupby("province_id")["cell_id"].apply(lambda s: s.diff().dropna().eq(1).all()).all()


def test_dense_city_next_to_empty_desert():
    rng = np.random.default_rng(1)
    city = _points((24.9, 67.0), 3000, 8, rng)
    desert = (rng.uniform(25.5, 28.5, 300), rng.uniform(67.5, 70.5, 300))
    train = _frame([(0, (np.r_[city[0], desert[0]], np.r_[city[1], desert[1]]))])
    cfg = GeocellConfig(min_samples=40, target_radius_km=50)
    cells = build_geocells(train, cfg)
    assert (cells["n_samples"] >= cfg.min_samples).all()
    assert len(cells) >= 4  # the desert is split, the city is its own cell(s)
    assert cells["radius_km"].max() < 4 * cfg.target_radius_km
    assert cells["n_samples"].sum() == len(train)
    neighbours = cells["neighbor_cell_ids"].str.split(",").map(len)
    assert (neighbours == min(cfg.n_neighbors, len(cells) - 1)).all()


def test_assign_cells_is_nearest_centre_in_own_province():
    rng = np.random.default_rng(2)
    train = _frame([(0, _points((24.9, 67.0), 400, 60, rng)), (1, _points((31.5, 74.3), 400, 60, rng))])
    cells = build_geocells(train, GeocellConfig(min_samples=30))
    test = _frame([(0, _points((25.0, 67.5), 50, 80, rng)), (1, _points((31.0, 73.0), 50, 80, rng))])
    assigned = assign_cells(test, cells)
    for i, row in test.iterrows():
        own = cells[cells["province_id"] == row.province_id]
        d = haversine_km(
            row.latitude, row.longitude, own["center_lat"].to_numpy(), own["center_lon"].to_numpy()
        )
        assert assigned[i] == own["cell_id"].to_numpy()[np.argmin(d)]
    before = cells.copy()
    assign_cells(test, cells)
    pd.testing.assert_frame_equal(before, cells)  # test rows never change the cells


KILL_DURING_REBUILD = """
import os, signal, sys
import geoloc_lib.data.audit as audit
real = {fn}
calls = []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
{patch}
audit.rebuild_geocells(sys.argv[1])
"""


@pytest.mark.parametrize(
    "where",
    ["between the two splits", "while the new files are written"],
)
def test_a_rebuild_of_the_geocells_killed_part_way_leaves_the_users_files_byte_identical(tiny_copy, where):
    import signal
    import subprocess
    import sys

    before = {
        name: (tiny_copy / name).read_bytes() for name in ("train.csv", "test.csv", "cell_metadata.csv")
    }
    if where == "between the two splits":  # killed when the test split's cells are assigned
        script = KILL_DURING_REBUILD.format(
            fn="audit.assign_cells", after=2, patch="audit.assign_cells = dying"
        )
    else:  # killed in the middle of writing the temporary files
        script = KILL_DURING_REBUILD.format(fn="os.fsync", after=2, patch="os.fsync = dying")
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_copy)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert {name: (tiny_copy / name).read_bytes() for name in before} == before
    leftovers = [p.name for p in tiny_copy.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 2  # a kill can leave temporary files, never a changed CSV


def test_a_missing_data_folder_is_an_error_not_synthetic_data(tmp_path):
    from geoloc_lib.data.audit import prepare_data_dir

    missing = tmp_path / "my_photoz"
    with pytest.raises(DataContractError, match="my_photoz: no train.csv here.*does not exist.*make demo"):
        prepare_data_dir(missing)
    assert not missing.exists()  # nothing was written there
