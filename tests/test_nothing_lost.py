"""Nothing lost, nothing injected: refused starts, damaged folders, torn files, hostile ids, bad settings."""

import os
import stat
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import chromium_flags, dump_dom
from PIL import Image

from geoloc_lib.base.atomic_files import (
    FileWriteError,
    atomic_torch_save,
    atomic_write_text,
    neutralise_formulas,
)
from geoloc_lib.base.folder_lock import RunFolderBusyError, RunLock
from geoloc_lib.data.contract import DataContractError, load_cell_metadata, load_dataset
from geoloc_lib.data.feature_cache import _load_parts
from geoloc_lib.data.photos import image_problem, open_rgb
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.inference.run_evaluation import EvaluationFolderError, evaluate_run, read_evaluation
from geoloc_lib.model.factory import CheckpointMismatchError
from geoloc_lib.predict import main
from geoloc_lib.run.checkpoint import load_phase0_weights
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.model import create_phase1_model
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit
from geoloc_lib.train.run_state import RunFolderDamagedError
from geoloc_lib.viz import maps


def _snapshot(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock")
    return {p.relative_to(folder): p.read_bytes() for p in files}


def _edit_csv(path, fn):
    fn(pd.read_csv(path)).to_csv(path, index=False)


@pytest.fixture
def finished(tiny_config, tiny_copy):
    cfg = tiny_config(data_dir=str(tiny_copy), epochs=2, batches_per_epoch=4)
    fit(cfg, progress=False)
    return cfg


# ---------------------------------------------------------------- refused starts change nothing


def _broken_phase0(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    return str(path)


LATE_FAILURES = {
    "mistyped phase0_checkpoint": lambda tmp: {"phase0_checkpoint": str(tmp / "no_such_phase0.pt")},
    "unreadable phase0_checkpoint": lambda tmp: {"phase0_checkpoint": _broken_phase0(tmp)},
    "batch too small for the provinces": lambda tmp: {"batch_size": 6},
    "a device this machine lacks": lambda tmp: {"device": "cuda:7"},
    "an augmentation no stage knows": lambda tmp: {"augment": "bogus"},
    "more provinces searched than exist": lambda tmp: {"top_provinces": 8},
}


@pytest.mark.parametrize("case", LATE_FAILURES, ids=list(LATE_FAILURES))
def test_an_overwrite_refused_after_the_config_check_leaves_the_finished_run_byte_identical(
    finished, tmp_path, case
):
    before = _snapshot(finished.run_dir)
    with pytest.raises((ValueError, FileNotFoundError)):
        fit(replace(finished, overwrite=True, **LATE_FAILURES[case](tmp_path)), progress=False)
    assert _snapshot(finished.run_dir) == before


def test_a_refused_start_creates_no_folder(tiny_config, tmp_path):
    cfg = tiny_config(phase0_checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError):
        fit(cfg, progress=False)
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize(
    "setting",
    [
        {"weight_decay": -1.0},
        {"seed": -1},
        {"epochs": 2.5},
        {"prior_correction": float("nan")},
        {"lr": float("inf")},
        {"temperature": float("inf")},
        {"loss_offset": -1.0},
        {"val_block_km": float("inf")},
        {"small_geocell_hidden": 0},
        {"batch_size": True},
    ],
    ids=lambda s: next(iter(s)),
)
def test_settings_are_checked_for_type_finiteness_and_range(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name):
        TrainConfig(**setting)


def test_a_radius_in_metres_is_refused_with_a_hint(tiny_copy):
    _edit_csv(tiny_copy / "cell_metadata.csv", lambda d: d.assign(radius_km=d["radius_km"] * 1000))
    with pytest.raises(DataContractError, match="kilometres"):
        load_cell_metadata(tiny_copy / "cell_metadata.csv")


# ---------------------------------------------------------------- resume never deletes what it cannot read


def test_resume_with_every_checkpoint_unreadable_stops_and_keeps_everything(finished):
    folder = RunFolder(finished.run_dir)
    for path in folder.checkpoints(1).glob("*.pt"):
        path.write_bytes(path.read_bytes()[:100])  # torn by a bad disk
    before = _snapshot(finished.run_dir)
    with pytest.raises(RunFolderDamagedError, match="phase1_epoch_2.pt, phase1_epoch_1.pt") as err:
        fit(replace(finished, epochs=3, resume=True, lr=5e-4), progress=False)
    assert "overwrite=True" in str(err.value)
    assert _snapshot(finished.run_dir) == before


def test_resume_names_an_unreadable_newest_checkpoint_and_the_epoch_it_could_resume_after(finished):
    newest = RunFolder(finished.run_dir).epoch_checkpoint(1, 2)
    newest.write_bytes(b"")
    with pytest.raises(RunFolderDamagedError, match=r"phase1_epoch_2.pt.*resume after epoch 1"):
        fit(replace(finished, epochs=3, resume=True), progress=False)


def test_resume_before_any_committed_epoch_still_refuses_changed_settings(tiny_config):
    cfg = tiny_config()
    folder = RunFolder(cfg.run_dir)
    folder.root.mkdir(parents=True)
    folder.write_config(cfg)  # killed after writing config.json, before epoch 1 was committed
    with pytest.raises(ValueError, match="'lr'"):
        fit(replace(cfg, resume=True, lr=5e-4), progress=False)
    fit(replace(cfg, resume=True), progress=False)
    assert "no epoch was committed before" in folder.log.read_text()


# ---------------------------------------------------------------- appends are all-or-nothing


def test_a_torn_losses_row_is_cut_and_rewritten_on_resume(tiny_config, tmp_path):
    reference = tiny_config(runs_dir=tmp_path / "ref", epochs=3, batches_per_epoch=4)
    fit(reference, progress=False)
    cfg = tiny_config(runs_dir=tmp_path / "torn", epochs=1, batches_per_epoch=4)
    fit(cfg, progress=False)
    losses = RunFolder(cfg.run_dir).losses
    losses.write_bytes(losses.read_bytes()[:-40])  # the disk filled while the val row was written
    fit(replace(cfg, epochs=3, resume=True), progress=False)
    got = pd.read_csv(losses).drop(columns="seconds")
    want = pd.read_csv(RunFolder(reference.run_dir).losses).drop(columns="seconds")
    pd.testing.assert_frame_equal(got, want, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- evaluation folders hold one evaluation


def test_an_evaluation_folder_refuses_tables_of_another_evaluation(finished):
    out = RunFolder(finished.run_dir).evaluation
    evaluate_run(finished.run_dir, "val", baselines=False, progress=False)
    val_rows = len(read_evaluation(out, "predictions"))
    assert val_rows > 0
    other = pd.read_csv(out / "predictions.csv").head(3)
    other.to_csv(out / "predictions.csv", index=False)  # a second evaluation killed after this file
    with pytest.raises(EvaluationFolderError, match="split val"):
        read_evaluation(out, "predictions")
    (out / "summary.csv").write_bytes((out / "summary.csv").read_bytes()[:50])  # torn
    with pytest.raises(EvaluationFolderError):
        read_evaluation(out, "summary")


def test_two_evaluations_of_one_folder_never_run_at_once(finished):
    out = RunFolder(finished.run_dir).evaluation
    lock = RunLock(out)
    try:
        with pytest.raises(RunFolderBusyError):
            evaluate_run(finished.run_dir, "val", baselines=False, progress=False)
    finally:
        lock.release()


# ---------------------------------------------------------------- nothing from a CSV runs


HOSTILE_IDS = [
    "`);document.title='pwned1';(`",
    "${document.title='pwned2'}",
    "<img src=x onerror=\"document.title='pwned3'\">",
    "</script><script>document.title='pwned4'</script>",
]


def test_hostile_photo_ids_run_no_script_in_the_error_map(tmp_path):
    n = len(HOSTILE_IDS)
    pred = pd.DataFrame(
        {
            "id": HOSTILE_IDS,
            "latitude": np.linspace(25, 34, n),
            "longitude": np.linspace(67, 74, n),
            "pred_lat": np.linspace(26, 33, n),
            "pred_lon": np.linspace(68, 73, n),
            "error_km": np.linspace(10, 300, n),
            "province": ["Sindh"] * n,
            "pred_province": ["Punjab"] * n,
            "province_id": [0] * n,
            "pred_province_id": [1] * n,
        }
    )
    path = maps.save_map(maps.error_map(pred, worst_n=n), tmp_path / "hostile.html")
    page = path.read_text(encoding="utf-8")
    assert "`);document" not in page and "${document" not in page and "<img src=x" not in page
    dom = dump_dom(chromium_flags(tmp_path), path)
    assert "leaflet-map-pane" in dom  # the page did run
    assert "pwned" not in dom.split("<body", 1)[0]  # no script changed the title


def test_csv_outputs_neutralise_spreadsheet_formulas():
    frame = pd.DataFrame({"id": ["=HYPERLINK(1)", "+1", "-2", "@SUM(A1)", "plain"], "lat": [1.0] * 5})
    out = neutralise_formulas(frame)
    assert out["id"].tolist() == ["'=HYPERLINK(1)", "'+1", "'-2", "'@SUM(A1)", "plain"]
    assert out["lat"].tolist() == [1.0] * 5


# ---------------------------------------------------------------- the predictor and resume check what they read


def test_the_predictor_refuses_changed_cell_radii(finished, tiny_copy):
    _edit_csv(tiny_copy / "cell_metadata.csv", lambda d: d.assign(radius_km=d["radius_km"] * 1.5))
    with pytest.raises(CheckpointMismatchError, match="other geocells"):
        Predictor.from_run(finished.run_dir)


def test_resume_refuses_photos_replaced_under_the_same_names(finished, tiny_copy):
    photo = tiny_copy / pd.read_csv(tiny_copy / "train.csv")["image"].iloc[0]
    Image.new("RGB", (96, 96), (200, 10, 10)).save(photo, quality=50)
    with pytest.raises(ValueError, match="photos changed"):
        fit(replace(finished, epochs=3, resume=True), progress=False)


# ---------------------------------------------------------------- unusual images


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    values = np.full((8, 8), 1000, np.uint16)
    values[:, 4:] = 60000
    Image.fromarray(values).save(tmp_path / "deep.png")
    pixels = np.asarray(open_rgb(str(tmp_path / "deep.png")))  # [8, 8, 3]
    assert pixels[0, 0].tolist() == [round(1000 / 257)] * 3
    assert pixels[0, 7].tolist() == [round(60000 / 257)] * 3


def test_a_floating_point_image_is_refused_by_the_decode_check(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32)).save(tmp_path / "f.tif")
    assert "floating-point" in image_problem(str(tmp_path / "f.tif"))


def test_the_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_rgb(str(tmp_path / "rotated.jpg")).size == (20, 40)


# ---------------------------------------------------------------- Phase 0 checkpoints that load nothing


def test_a_phase0_checkpoint_that_loads_nothing_is_refused(tiny_data, tmp_path):
    model = create_phase1_model(tiny_data / "cell_metadata.csv")
    torch.save({"model_state": {"other.weight": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="nothing would be loaded"):
        load_phase0_weights(model, tmp_path / "foreign.pt")
    torch.save({"model_state": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a dict"):
        load_phase0_weights(model, tmp_path / "list.pt")


# ---------------------------------------------------------------- clear errors


def _cli(capsys, *argv):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def test_cli_failures_are_one_line_with_status_2(finished, tiny_copy, tmp_path, capsys):
    photo = tiny_copy / "images" / "pk000000.jpg"
    run = finished.run_dir
    code, lines = _cli(capsys, run, photo, "--csv", tmp_path / "missing" / "out.csv")
    assert code == 2 and len(lines) == 1 and "folder does not exist" in lines[0]
    code, lines = _cli(capsys, run, photo, "--device", "cuda:7")
    assert code == 2 and len(lines) == 1 and "cuda:7" in lines[0]
    code, lines = _cli(capsys, run, photo, "--batch-size", "0")
    assert code == 2 and "at least 1" in lines[-1]
    best = RunFolder(run).best_checkpoint(1)
    best.write_bytes(best.read_bytes()[:1000])
    code, lines = _cli(capsys, run, photo)
    assert code == 2 and len(lines) == 1 and "not a readable checkpoint" in lines[0]
    (run / "config.json").write_text("{not json")
    code, lines = _cli(capsys, run, photo)
    assert code == 2 and len(lines) == 1 and "config.json is not a readable run config" in lines[0]


def test_an_empty_csv_and_a_nul_in_an_image_path_are_contract_errors(tiny_copy):
    train = tiny_copy / "train.csv"
    text = train.read_text()
    train.write_text("")
    with pytest.raises(DataContractError, match="train.csv: the file is empty"):
        load_dataset(tiny_copy)
    train.write_text(text)
    _edit_csv(train, lambda d: d.assign(image=d["image"].where(d.index != 1, "images/a\x00b.jpg")))
    with pytest.raises(DataContractError, match="NUL character.*line 3"):
        load_dataset(tiny_copy)


def test_a_full_disk_while_saving_a_checkpoint_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, target)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(FileWriteError, match=r"last.pt.*disk full"):
        atomic_torch_save({"epoch": 2}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_damaged_extraction_shard_is_extracted_again(tmp_path):
    parts = tmp_path / "key.parts"
    parts.mkdir()
    clip, scene = torch.zeros(6, 2), torch.zeros(6, 3)
    torch.save({"start": 0, "clip": torch.ones(2, 2), "scene": torch.ones(2, 3)}, parts / f"{0:012d}.pt")
    (parts / f"{2:012d}.pt").write_bytes(b"torn")
    torch.save({"start": 4, "clip": torch.ones(2, 2), "scene": torch.ones(2, 3)}, parts / f"{4:012d}.pt")
    messages = []
    assert _load_parts(parts, clip, scene, messages.append) == 2
    assert any(f"{2:012d}.pt" in m and "unreadable" in m for m in messages)
    assert sorted(p.name for p in parts.iterdir()) == [f"{0:012d}.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_are_written_with_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
