"""The command line (`geoloc-predict`): one-line errors with exit status 2, bad photos skipped, lazy imports."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TRAINING

from geoloc_lib.evaluate import metrics
from geoloc_lib.geo.places import PLACES_CSV
from geoloc_lib.predict import DECODE_MODES, main
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """A finished tiny Phase 0 run and Phase 1 run."""
    runs_dir = tmp_path_factory.mktemp("runs")
    common = {"data_dir": str(tiny_data), "runs_dir": str(runs_dir), "cache_dir": str(runs_dir / "cache")}
    for phase, name in ((0, "p0"), (1, "p1")):
        fit(
            TrainConfig(
                **(common | TINY_TRAINING | {"run_name": name, "phase": phase, "batches_per_epoch": 4})
            ),
            progress=False,
        )
    return runs_dir


def _main(capsys, *argv):
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    messages = [
        line for line in out.err.splitlines() if line.startswith("geoloc-predict:")
    ]  # not progress bars
    return code, out.out, messages


def test_help_documents_everything_and_imports_no_torch():
    script = "import sys; from geoloc_lib.predict import parser; print(parser().format_help()); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    text, imported_torch = result.stdout.rsplit("\n", 2)[0], result.stdout.rsplit("\n", 2)[1]
    assert imported_torch == "False"
    for word in (
        "run_dir",
        "images",
        "--mode",
        "--checkpoint",
        "--device",
        "--batch-size",
        "--data-dir",
        "--csv",
    ):
        assert word in text
    assert all(mode in text for mode in DECODE_MODES) and "probability-weighted mean" in text
    assert DECODE_MODES == metrics.DECODE_MODES


def test_bad_photos_are_reported_and_skipped_and_the_csv_holds_json(runs, tiny_data, tmp_path, capsys):
    good = tiny_data / "images" / "pk000000.jpg"
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a photo")
    csv = tmp_path / "out.csv"
    code, out, err = _main(capsys, runs / "p1", good, tmp_path / "missing.jpg", not_image, "--csv", csv)
    assert code == 1  # the placed photos are printed, and the status says that some were skipped
    assert (
        err
        == [
            f"geoloc-predict: {tmp_path / 'missing.jpg'}: photo not found; skipped",
            err[1],
        ]
        and err[1].startswith(f"geoloc-predict: {not_image}: not a readable image (")
        and err[1].endswith("skipped")
    )
    assert str(good) in out and "missing.jpg" not in out
    table = pd.read_csv(csv)
    hypotheses = json.loads(table["hypotheses"].iloc[0])
    assert len(table) == 1 and {"province", "cell_id", "prob", "lat", "lon"} <= set(hypotheses[0])


@pytest.mark.parametrize(
    "case,expected",
    [
        ("no-photo", "none of the photos could be read"),
        ("no-run", "no such run folder; runs live in runs/<name>"),
        ("empty-folder", "a folder with no image files"),
        ("not-a-run", "is not a run folder (it has no config.json); pass runs/<name>"),
        ("phase0", "is a Phase 0 run (province pre-training); prediction needs a Phase 1 or 2 run"),
        ("checkpoint", "checkpoint not found; try --checkpoint last"),
    ],
)
def test_fatal_problems_print_one_line_and_exit_2(runs, tiny_data, tmp_path, capsys, case, expected):
    good = tiny_data / "images" / "pk000000.jpg"
    argv = {
        "no-photo": [runs / "p1", tmp_path / "missing.jpg"],
        "no-run": [tmp_path / "runs" / "my_run", good],
        "empty-folder": [runs / "p1", tmp_path],
        "not-a-run": [tmp_path, good],
        "phase0": [runs / "p0", good],
        "checkpoint": [runs / "p1", good, "--checkpoint", "phase1_epoch_99.pt"],
    }[case]
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert err[-1].startswith("geoloc-predict: error: ") and expected in err[-1]


@pytest.mark.parametrize("command", ["geoloc-predict", "geoloc-ingest", "geoloc-pages"])
def test_the_console_scripts_are_installed(command):
    script = shutil.which(command, path=str(Path(sys.executable).parent))
    assert script is not None, f"pip install -e . installs {command} beside python"
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and f"usage: {command}" in result.stdout


def test_folders_and_csvs_of_photos_with_top_k_rounding_and_the_nearest_town(
    runs, tiny_data, tmp_path, capsys
):
    photos = tmp_path / "trip" / "day1"
    photos.mkdir(parents=True)
    names = ["pk000000.jpg", "pk000001.jpg", "pk000002.jpg"]
    for name in names:
        shutil.copyfile(tiny_data / "images" / name, photos / name)
    (tmp_path / "trip" / "notes.txt").write_text("not a photo: not picked up from a folder")
    (tmp_path / "list.csv").write_text("image\ntrip/day1/pk000001.jpg\n")
    csv = tmp_path / "out.csv"
    argv = [runs / "p1", tmp_path / "trip", tmp_path / "list.csv", "--top-k", "2", "--csv", csv]
    code, out, err = _main(capsys, *argv)
    assert code == 0 and err == []
    table = pd.read_csv(csv)
    assert [Path(p).name for p in table["image"]] == [*names, "pk000001.jpg"]
    assert all(len(json.loads(h)) <= 2 for h in table["hypotheses"])
    assert all(len(str(v).split(".")[-1]) <= 5 for v in table["lat"])
    places = pd.read_csv(PLACES_CSV)
    for row in table.itertuples():  # the nearest town, by an independent great-circle distance
        km = haversine_np(row.lat, row.lon, places["latitude"].to_numpy(), places["longitude"].to_numpy())
        assert row.nearest_town == places["name"].iloc[km.argmin()]
        assert row.town_km == pytest.approx(km.min(), abs=0.06)
    assert "nearest_town" in out


def haversine_np(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(a))


def test_training_help_answers_before_torch_is_imported():
    script = (
        "import sys, runpy\nsys.argv = ['train', '--help']\ntry:\n    runpy.run_module('geoloc_lib.train', "
        "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False") and "keep_checkpoints=3" in result.stdout
