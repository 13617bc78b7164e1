"""Every command line against a table of bad inputs: exit status 2, one line that names the file or option,
no traceback, and no file changed. Then the rules behind it: outputs never land on inputs or inside a run,
confidence has one meaning, Phase 2 starts only from a finished Phase 1 run, conclusions print no nan."""

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_TRAINING

from geoloc_lib import extract, ingest, predict
from geoloc_lib.base.folder_lock import RunLock
from geoloc_lib.evaluate import conclusions
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train import __main__ as train_cli
from geoloc_lib.train.fine_tune import Phase1StartError, phase1_run_config
from geoloc_lib.train.loop import fit
from geoloc_lib.train.setup import build_training


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> Path:
    """A finished tiny Phase 0 run (p0) and Phase 1 run (p1)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    common = {"data_dir": str(tiny_data), "runs_dir": str(runs_dir), "cache_dir": str(runs_dir / "cache")}
    for phase, name in ((0, "p0"), (1, "p1")):
        settings = common | TINY_TRAINING | {"run_name": name, "phase": phase, "batches_per_epoch": 4}
        fit(TrainConfig(**settings), progress=False)
    return runs_dir


@pytest.fixture(scope="module")
def desk(runs, tiny_data, tmp_path_factory) -> dict[str, Path]:
    """What a user has lying around: photos, lists in good and bad shape, a damaged copy of the run."""
    root = tmp_path_factory.mktemp("desk")
    shutil.copyfile(tiny_data / "images" / "pk000000.jpg", root / "photo.jpg")
    shutil.copyfile(tiny_data / "images" / "pk000001.jpg", root / "other.jpg")
    (root / "list.csv").write_text("image,my_note\nphoto.jpg,keep this\n")
    (root / "empty.csv").write_text("")
    (root / "header.csv").write_text("image,latitude,longitude\n")
    (root / "latin1.csv").write_bytes("image,note\nphoto.jpg,café in Murree\n".encode("latin-1"))
    (root / "empty_folder").mkdir()
    (root / "latin1_data").mkdir()
    (root / "latin1_data" / "train.csv").write_bytes("id,image\né,x.jpg\n".encode("latin-1"))
    shutil.copyfile(tiny_data / "cell_metadata.csv", root / "latin1_data" / "cell_metadata.csv")
    damaged = root / "damaged"
    shutil.copytree(runs / "p1", damaged)
    (damaged / "calibration.json").write_text('{"spread": "cell"}')
    hostile = root / "hostile"
    shutil.copytree(runs / "p1", hostile)
    torch.save({"payload": Path("/etc/passwd")}, hostile / "checkpoints" / "phase1" / "phase1_best.pt")
    return {"root": root, "runs": runs, "data": tiny_data}


def _digest(*roots: Path) -> dict[str, str]:
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != ".lock":
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "folder"
    return found


def _call(command, argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = command(argv)
    except SystemExit as exit_:
        code = exit_.code
    code = code or 0  # a main that returns None succeeded
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [
        line for line in err.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line
    ]


COMMANDS = {
    "geoloc-predict": predict.main,
    "geoloc-ingest": ingest.main,
    "python -m geoloc_lib.train": train_cli.main,
    "python -m geoloc_lib.extract": extract.main,
}


def _train(d, *settings):
    runs = d["runs"]
    base = [f"runs_dir={runs}", f"cache_dir={runs / 'cache'}", f"data_dir={d['data']}", "run_name=fresh"]
    base += ["device=cpu", "num_workers=0", "epochs=1", "batches_per_epoch=2"]
    return [a for s in [*base, *settings] for a in ("--set", s)]


# (case, command, arguments from the desk, what the one line must contain: the name and the problem)
CASES = [
    (
        "no run folder",
        "geoloc-predict",
        lambda d: [d["root"] / "runs" / "mine", d["root"] / "photo.jpg"],
        ["mine", "no such run folder"],
    ),
    (
        "a photo for the run folder",
        "geoloc-predict",
        lambda d: [d["root"] / "photo.jpg", d["root"] / "other.jpg"],
        ["photo.jpg", "a file, not a run folder"],
    ),
    (
        "a folder without photos",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "empty_folder"],
        ["empty_folder", "no image files"],
    ),
    (
        "an empty CSV",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "empty.csv"],
        ["empty.csv", "an empty file"],
    ),
    (
        "a header-only CSV",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "header.csv"],
        ["header.csv", "a header with no rows"],
    ),
    (
        "a Latin-1 CSV",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "latin1.csv"],
        ["latin1.csv", "not UTF-8"],
    ),
    (
        "--csv onto the photo",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--csv", d["root"] / "photo.jpg"],
        ["--csv", "photo.jpg", "one of the command's inputs"],
    ),
    (
        "--csv onto the input list",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "list.csv", "--csv", d["root"] / "list.csv"],
        ["--csv", "list.csv", "one of the command's inputs"],
    ),
    (
        "--csv onto another photo",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--csv", d["root"] / "other.jpg"],
        ["--csv", "other.jpg", "an existing .jpg file"],
    ),
    (
        "--csv onto the run's config",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--csv", d["runs"] / "p1" / "config.json"],
        ["--csv", "config.json", "inside the run folder"],
    ),
    (
        "--csv onto the run's losses",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--csv", d["runs"] / "p1" / "losses.csv"],
        ["losses.csv", "inside the run folder"],
    ),
    (
        "--csv onto a folder",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--csv", d["root"] / "empty_folder"],
        ["empty_folder", "a folder, not a file"],
    ),
    (
        "--map onto the photo",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--map", d["root"] / "photo.jpg"],
        ["--map", "photo.jpg", "inputs"],
    ),
    (
        "--top-k 0",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--top-k", "0"],
        ["--top-k", "at least 1"],
    ),
    (
        "--mode unknown",
        "geoloc-predict",
        lambda d: [d["runs"] / "p1", d["root"] / "photo.jpg", "--mode", "nearest"],
        ["--mode", "invalid choice"],
    ),
    (
        "a damaged calibration",
        "geoloc-predict",
        lambda d: [d["root"] / "damaged", d["root"] / "photo.jpg"],
        ["calibration.json", "is damaged", "delete it"],
    ),
    (
        "a pickled checkpoint",
        "geoloc-predict",
        lambda d: [d["root"] / "hostile", d["root"] / "photo.jpg"],
        ["phase1_best.pt", "could run code"],
    ),
    (
        "no photo folder",
        "geoloc-ingest",
        lambda d: [d["root"] / "my_photoz", d["root"] / "out"],
        ["my_photoz", "no such folder"],
    ),
    (
        "an empty photo folder",
        "geoloc-ingest",
        lambda d: [d["root"] / "empty_folder", d["root"] / "out"],
        ["empty_folder", "holds no files"],
    ),
    (
        "an empty CSV",
        "geoloc-ingest",
        lambda d: [d["root"] / "empty.csv", d["root"] / "out"],
        ["empty.csv", "an empty file"],
    ),
    (
        "a header-only CSV",
        "geoloc-ingest",
        lambda d: [d["root"] / "header.csv", d["root"] / "out"],
        ["header.csv", "a header with no rows"],
    ),
    (
        "a Latin-1 CSV",
        "geoloc-ingest",
        lambda d: [d["root"] / "latin1.csv", d["root"] / "out"],
        ["latin1.csv", "not UTF-8"],
    ),
    (
        "a photo for the folder",
        "geoloc-ingest",
        lambda d: [d["root"] / "photo.jpg", d["root"] / "out"],
        ["photo.jpg", "is a photo"],
    ),
    (
        "a file for the output folder",
        "geoloc-ingest",
        lambda d: [d["data"] / "images", d["root"] / "list.csv"],
        ["list.csv", "is a file, not a folder"],
    ),
    (
        "the output onto the photos",
        "geoloc-ingest",
        lambda d: [d["data"] / "images", d["data"] / "images"],
        ["images", "outside the photos' folder"],
    ),
    (
        "the output inside a run",
        "geoloc-ingest",
        lambda d: [d["data"] / "images", d["runs"] / "p1" / "data"],
        ["p1", "inside the run folder"],
    ),
    (
        "--block-km 0",
        "geoloc-ingest",
        lambda d: [d["data"] / "images", d["root"] / "out", "--block-km", "0"],
        ["--block-km", "must be in (0, 500]"],
    ),
    (
        "--seed text",
        "geoloc-ingest",
        lambda d: [d["data"] / "images", d["root"] / "out", "--seed", "one"],
        ["--seed", "invalid int value"],
    ),
    ("epochs=0", "python -m geoloc_lib.train", lambda d: _train(d, "epochs=0"), ["epochs", "at least 1"]),
    (
        "an unknown setting",
        "python -m geoloc_lib.train",
        lambda d: _train(d, "epoch=3"),
        ["epoch=3", "did you mean epochs"],
    ),
    (
        "no data folder",
        "python -m geoloc_lib.train",
        lambda d: _train(d, f"data_dir={d['root'] / 'nowhere'}"),
        ["nowhere", "not found"],
    ),
    (
        "a photo for the data folder",
        "python -m geoloc_lib.train",
        lambda d: _train(d, f"data_dir={d['root'] / 'photo.jpg'}"),
        ["photo.jpg"],
    ),
    (
        "a Latin-1 data folder",
        "python -m geoloc_lib.train",
        lambda d: _train(d, f"data_dir={d['root'] / 'latin1_data'}"),
        ["train.csv", "UTF-8"],
    ),
    (
        "a run name that climbs out",
        "python -m geoloc_lib.train",
        lambda d: _train(d, "run_name=../escape"),
        ["../escape", "inside runs_dir"],
    ),
    (
        "the output onto a finished run",
        "python -m geoloc_lib.train",
        lambda d: _train(d, "run_name=p1"),
        ["p1", "resume"],
    ),
    (
        "Phase 2 from a Phase 0 run",
        "python -m geoloc_lib.train",
        lambda d: _train(d, "phase=2", f"phase1_checkpoint={d['runs'] / 'p0'}", "unfreeze_clip_blocks=1"),
        ["p0", "is a Phase 0 run"],
    ),
    (
        "no data folder",
        "python -m geoloc_lib.extract",
        lambda d: _train(d, f"data_dir={d['root'] / 'nowhere'}"),
        ["nowhere", "not found"],
    ),
    (
        "cache_views=0",
        "python -m geoloc_lib.extract",
        lambda d: _train(d, "cache_views=0"),
        ["cache_views", "at least 1"],
    ),
]


@pytest.mark.parametrize("case,command,arguments,expected", CASES, ids=[f"{c[1]}: {c[0]}" for c in CASES])
def test_every_refusal_is_one_line_with_status_2_and_changes_nothing(
    desk, capsys, case, command, arguments, expected
):
    watched = (desk["root"], desk["runs"], desk["data"])
    before = _digest(*watched)
    code, lines = _call(COMMANDS[command], [str(a) for a in arguments(desk)], capsys)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), lines
    assert all(word in lines[0] for word in expected), lines[0]
    print("SHOW", lines[0])
    assert _digest(*watched) == before


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["geoloc-ingest", "{root}/empty_folder", "{root}/out"], "holds no files"),
        (["geoloc-predict", "{runs}/p1", "{root}/latin1.csv"], "not UTF-8"),
        ([sys.executable, "-m", "geoloc_lib.train", "--set", "epochs=0"], "epochs must be at least 1"),
    ],
)
def test_the_commands_typed_in_a_shell_refuse_in_one_line(desk, argv, expected):
    bin_dir = Path(sys.executable).parent
    argv = [a.format(root=desk["root"], runs=desk["runs"]) for a in argv]
    argv[0] = shutil.which(argv[0], path=str(bin_dir)) or argv[0]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


def test_force_writes_over_an_input_list_and_otherwise_it_is_kept(desk, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    shutil.copyfile(desk["root"] / "list.csv", listing)
    shutil.copyfile(desk["root"] / "photo.jpg", tmp_path / "photo.jpg")
    code, lines = _call(predict.main, [str(desk["runs"] / "p1"), str(listing), "--csv", str(listing)], capsys)
    assert code == 2 and "my_note" in listing.read_text()
    code, lines = _call(
        predict.main, [str(desk["runs"] / "p1"), str(listing), "--csv", str(listing), "--force"], capsys
    )
    assert code in (0, 1) and "hypotheses" in listing.read_text()


def test_confidence_is_calibrated_or_empty_and_the_raw_probability_has_its_own_name(desk, tmp_path, capsys):
    run = tmp_path / "p1"
    shutil.copytree(desk["runs"] / "p1", run)
    photo = str(desk["root"] / "photo.jpg")
    own_mode = json.loads((run / "config.json").read_text())["decode_mode"]
    other_mode = next(m for m in predict.DECODE_MODES if m != own_mode)

    def table(*extra):
        code, lines = _call(
            predict.main, [str(run), photo, "--csv", str(tmp_path / "out.csv"), *extra], capsys
        )
        return pd.read_csv(tmp_path / "out.csv").iloc[0], lines

    calibrated, lines = table()
    assert lines == [] and 0 < calibrated["confidence"] <= 1
    assert calibrated["confidence"] == pytest.approx(1 / (1 + calibrated["radius_90_km"] / 25), abs=1e-3)
    other, lines = table("--mode", other_mode)
    assert math.isnan(other["confidence"]) and math.isnan(other["radius_90_km"])
    assert other["cell_prob"] == calibrated["cell_prob"]  # the raw probability, under its own name
    assert len(lines) == 1 and f"not {other_mode!r}" in lines[0] and "confidence" in lines[0]
    (run / "calibration.json").unlink()  # as while the run is still training
    training, lines = table()
    assert math.isnan(training["confidence"]) and "no calibration.json yet" in lines[0]


def test_phase2_starts_only_from_a_finished_phase1_run(desk, tmp_path):
    run = tmp_path / "p1"
    shutil.copytree(desk["runs"] / "p1", run)
    lock = RunLock(run)
    try:
        with pytest.raises(Phase1StartError, match="is still training \\(pid"):
            phase1_run_config(str(run))
        settings = {"phase": 2, "phase1_checkpoint": str(run), "unfreeze_clip_blocks": 1, "run_name": "p2"}
        cfg = TrainConfig(**(json.loads((run / "config.json").read_text()) | settings))
        with pytest.raises(Phase1StartError, match="is still training"):
            build_training(cfg, progress=False)
        assert not (Path(cfg.runs_dir) / "p2" / "config.json").exists()
    finally:
        lock.release()
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"epochs": 3}))  # killed after epoch 1 of 3
    with pytest.raises(
        Phase1StartError, match="stopped after epoch 1 of 3; Phase 2 starts from a finished one"
    ):
        phase1_run_config(str(run))
    (run / "config.json").write_text(json.dumps(config))
    (run / "calibration.json").unlink()  # killed while calibrating
    with pytest.raises(Phase1StartError, match="stopped before its calibration"):
        phase1_run_config(str(run / "checkpoints" / "phase1" / "phase1_best.pt"))


@pytest.mark.parametrize("name,phase", [("p0", 0)])
def test_03b_names_the_phase_of_a_run_it_cannot_start_from(desk, name, phase):
    with pytest.raises(Phase1StartError, match=f"is a Phase {phase} run; Phase 2 starts from a Phase 1 run"):
        phase1_run_config(str(desk["runs"] / name))


def test_too_few_validation_photos_print_no_nan_or_inf_as_a_figure():
    coverage = pd.DataFrame(
        {
            "photos": [6, 6],
            "coverage_50_%": [50.0, 50.0],
            "calibrated_50_low_%": [10.0, 10.0],
            "calibrated_50_high_%": [90.0, 90.0],
            "median_radius_50_km": [40.0, 40.0],
            "coverage_90_%": [100.0, 100.0],
            "calibrated_90_low_%": [np.nan, np.nan],
            "calibrated_90_high_%": [np.nan, np.nan],
            "median_radius_90_km": [np.inf, np.inf],
        },
        index=["all", "Punjab"],
    )
    ranking = pd.DataFrame(
        {"value": [np.nan, np.inf, 80.0]},
        index=["spearman_confidence_vs_closeness", "curve_mean_median_km", "random_curve_mean_median_km"],
    )
    text = conclusions.trust(coverage, ranking)
    assert "nan" not in text.lower() and "inf " not in text and "inf km" not in text
    assert "The 90 % radius cannot be judged" in text and "at least 9" in text
    assert "cannot be judged here" in text and "The 50 % radius (median 40 km) held" in text
