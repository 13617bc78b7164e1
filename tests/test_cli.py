"""The command line (`geoloc-predict`): one-line errors with exit status 2, bad photos skipped, lazy imports."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_TRAINING

from geoloc_lib.evaluate import metrics
from geoloc_lib.predict import DECODE_MODES, main
from geoloc_lib.train.config import TrainConfig
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
        ("not-a-run", "is not a run folder (it has no config.json); pass runs/<name>"),
        ("phase0", "is a Phase 0 run (province pre-training); prediction needs a Phase 1 run"),
        ("checkpoint", "checkpoint not found; try --checkpoint last"),
    ],
)
def test_fatal_problems_print_one_line_and_exit_2(runs, tiny_data, tmp_path, capsys, case, expected):
    good = tiny_data / "images" / "pk000000.jpg"
    argv = {
        "no-photo": [runs / "p1", tmp_path / "missing.jpg"],
        "not-a-run": [tmp_path, good],
        "phase0": [runs / "p0", good],
        "checkpoint": [runs / "p1", good, "--checkpoint", "phase1_epoch_99.pt"],
    }[case]
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert err[-1].startswith("geoloc-predict: error: ") and expected in err[-1]


def test_the_console_script_is_installed():
    script = shutil.which("geoloc-predict", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . installs geoloc-predict beside python"
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: geoloc-predict" in result.stdout
