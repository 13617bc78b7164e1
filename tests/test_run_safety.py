"""A run folder cannot be destroyed, mixed up or stranded, and bad photos are caught before any work.

Each test names the failure it guards against."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pandas as pd
import pytest
import torch
from PIL import Image

from geoloc_lib.base.folder_lock import RunFolderBusyError
from geoloc_lib.data.contract import DataContractError, load_dataset
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.train.loop import fit


def _snapshot(folder):
    """Every file of a run folder with its bytes (but the lock, which only says who holds the folder)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock")
    return {p.relative_to(folder): p.read_bytes() for p in files}


def _edit_csv(path, fn):
    frame = pd.read_csv(path)
    fn(frame).to_csv(path, index=False)


@pytest.fixture
def finished_run(tiny_config):
    cfg = tiny_config(batches_per_epoch=4)
    fit(cfg, progress=False)
    return cfg


def test_overwrite_with_bad_data_leaves_the_old_run_alone(finished_run, tiny_copy):
    before = _snapshot(finished_run.run_dir)
    _edit_csv(tiny_copy / "train.csv", lambda d: d.assign(latitude=d["latitude"].where(d.index != 3, 99.0)))
    with pytest.raises(DataContractError, match="outside Pakistan"):
        fit(replace(finished_run, data_dir=str(tiny_copy), overwrite=True), progress=False)
    assert _snapshot(finished_run.run_dir) == before


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "sub/..", "../outside", ".", "a/../../b"])
def test_run_names_stay_inside_runs_dir(tiny_config, tmp_path, name):
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "keep.txt").write_text("another run")
    with pytest.raises(ValueError, match="inside runs_dir|must name a folder"):
        fit(tiny_config(run_name=name, overwrite=True), progress=False)
    assert (tmp_path / "runs" / "other" / "keep.txt").read_text() == "another run"


def test_a_symbolic_link_out_of_runs_dir_is_refused(tiny_config, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="inside runs_dir"):
        fit(tiny_config(run_name="link", overwrite=True), progress=False)
    assert (outside / "data.txt").read_text() == "keep me"


def test_phase1_resume_into_a_phase0_folder_keeps_phase0(tiny_config):
    phase0 = tiny_config(phase=0, run_name="p0", batches_per_epoch=4)
    fit(phase0, progress=False)
    before = _snapshot(phase0.run_dir)
    with pytest.raises(FileExistsError, match="holds a Phase 0 run") as err:
        fit(tiny_config(phase=1, run_name="p0", resume=True), progress=False)
    assert "resume=True" not in str(err.value)
    assert _snapshot(phase0.run_dir) == before


TRAIN_SCRIPT = """
import json
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit
fit(TrainConfig.from_dict(json.loads({config!r})), progress=False)
print("finished")
"""


def _start(cfg, script=TRAIN_SCRIPT):
    return subprocess.Popen(
        [sys.executable, "-c", script.format(config=json.dumps(asdict(cfg)))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_locked(cfg, seconds=120):
    """Until the training started by `_start` holds the run folder (its lock file names it)."""
    lock = RunFolder(cfg.run_dir).lock_file
    deadline = time.time() + seconds
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.05)


def test_two_trainers_into_one_folder_exactly_one_runs(tiny_config):
    cfg = tiny_config(epochs=3, batches_per_epoch=400)
    first = _start(cfg)
    _wait_until_locked(cfg)
    with pytest.raises(RunFolderBusyError, match=f"pid {first.pid} on .*started"):
        fit(replace(cfg, lr=5e-4, resume=True), progress=False)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and "finished" in out, err
    losses = pd.read_csv(cfg.run_dir / "losses.csv")
    assert losses[["epoch", "split"]].values.tolist() == [[e, s] for e in (1, 2, 3) for s in ("train", "val")]
    assert json.loads((cfg.run_dir / "config.json").read_text())["lr"] == cfg.lr
    fit(replace(cfg, epochs=4, resume=True), progress=False)  # released at exit: a later run may continue


def test_resume_refuses_changed_geocells_and_data(tiny_config, tiny_copy):
    cfg = tiny_config(data_dir=str(tiny_copy), epochs=1, batches_per_epoch=4)
    fit(cfg, progress=False)
    cells = pd.read_csv(tiny_copy / "cell_metadata.csv")
    edited = cells.assign(center_lat=cells["center_lat"] + 0.01)
    edited.to_csv(tiny_copy / "cell_metadata.csv", index=False)
    with pytest.raises(ValueError, match="cells changed"):
        fit(replace(cfg, epochs=2, resume=True), progress=False)
    cells.to_csv(tiny_copy / "cell_metadata.csv", index=False)
    _edit_csv(tiny_copy / "test.csv", lambda d: d.assign(latitude=d["latitude"] + 0.001))
    with pytest.raises(ValueError, match="test changed"):
        fit(replace(cfg, epochs=2, resume=True), progress=False)


def test_a_fractional_cell_id_is_refused(tiny_copy):
    _edit_csv(
        tiny_copy / "train.csv",
        lambda d: d.assign(cell_id=d["cell_id"].astype(float).where(d.index != 5, 2.7)),
    )
    with pytest.raises(DataContractError, match="cell_id must be a whole number.*line 7"):
        load_dataset(tiny_copy)


def test_moved_and_copied_runs_resume_and_predict_anywhere(tiny_config, tiny_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # tiny_copy is tmp_path/data
    cfg = tiny_config(data_dir="data", runs_dir="runs/", run_name="a", epochs=1, batches_per_epoch=4)
    fit(cfg, progress=False)
    fit(replace(cfg, runs_dir="runs", epochs=2, resume=True), progress=False)  # another spelling of runs_dir
    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "elsewhere" / "b")
    fit(replace(cfg, runs_dir="elsewhere", run_name="b", epochs=3, resume=True), progress=False)
    monkeypatch.chdir(tmp_path / "elsewhere")  # "data" no longer resolves from here
    predictor = Predictor.from_run(tmp_path / "elsewhere" / "b")
    assert len(predictor.predict([tmp_path / "data" / "images" / "pk000000.jpg"])) == 1
    shutil.move(tmp_path / "data", tmp_path / "moved-data")
    with pytest.raises(DataContractError, match="file not found"):
        Predictor.from_run(tmp_path / "elsewhere" / "b")
    tables = evaluate_run(
        tmp_path / "elsewhere" / "b", "val", baselines=False, data_dir=tmp_path / "moved-data"
    ).tables
    assert len(tables["predictions"]) > 0
    from geoloc_lib.serve.asker import Asker

    # geoloc-serve --data-dir: served, and its page names the data it was pointed at and counts its photos
    facts = Asker.from_run(tmp_path / "elsewhere" / "b", data_dir=tmp_path / "moved-data").facts
    moved_train = pd.read_csv(tmp_path / "moved-data" / "train.csv")
    assert facts["training_data"]["data_dir"] == str(tmp_path / "moved-data")
    assert facts["training_data"]["train_photos"] == len(moved_train)


def test_a_decompression_bomb_is_a_contract_error(tiny_copy):
    Image.new("1", (14_000, 14_000)).save(tiny_copy / "images" / "bomb.png")
    _edit_csv(
        tiny_copy / "test.csv", lambda d: d.assign(image=d["image"].where(d.index != 2, "images/bomb.png"))
    )
    with pytest.raises(DataContractError, match=r"too many pixels.*line 4, id=") as err:
        load_dataset(tiny_copy, image_check="decode")
    assert "bomb.png" in str(err.value) and "Fix:" in str(err.value)


def test_undecodable_photos_stop_the_run_before_anything_is_written(tiny_config, tiny_copy):
    (tiny_copy / "images" / "pk000003.jpg").write_bytes(b"")  # a 0-byte file
    (tiny_copy / "images" / "pk000004.jpg").write_bytes(b"not a jpeg at all")
    cfg = tiny_config(data_dir=str(tiny_copy))
    with pytest.raises(DataContractError, match="cannot be decoded") as err:
        fit(cfg, progress=False)
    assert "pk000003.jpg" in str(err.value) or "pk000004.jpg" in str(err.value)
    assert not cfg.run_dir.exists()  # no folder, no empty log.txt


def test_resume_and_overwrite_together_are_refused(tiny_config):
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        tiny_config(resume=True, overwrite=True)


KILL_BETWEEN_SCRIPT = """
import json, os, signal
import geoloc_lib.train.run_state as runstate
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit

copy = runstate.atomic_link
def copy_then_die(source, path):
    # epoch 2 is committed (its checkpoint is written); die before last.pt is brought up to date
    if path.name == "last.pt" and source.name.endswith("_epoch_2.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
    copy(source, path)
runstate.atomic_link = copy_then_die
fit(TrainConfig.from_dict(json.loads({config!r})), progress=False)
"""


def test_a_kill_after_the_epoch_checkpoint_retrains_no_epoch(tiny_config, tmp_path):
    reference = tiny_config(runs_dir=tmp_path / "ref", epochs=4, batches_per_epoch=20)
    fit(reference, progress=False)
    cfg = tiny_config(runs_dir=tmp_path / "killed", epochs=4, batches_per_epoch=20, resume=True)
    proc = _start(cfg, KILL_BETWEEN_SCRIPT)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    folder = RunFolder(cfg.run_dir)
    assert torch.load(folder.last_checkpoint(1), weights_only=True)["epoch"] == 1  # last.pt lags behind
    log_before = folder.log.read_text()
    fit(cfg, progress=False)
    resumed_log = folder.log.read_text()[len(log_before) :]
    assert "Resuming" in resumed_log and "after epoch 2" in resumed_log
    assert "Epoch 2/4" not in resumed_log and "Epoch 3/4" in resumed_log  # epoch 2 is not trained again
    a = pd.read_csv(reference.run_dir / "losses.csv").drop(columns=["seconds"])
    b = pd.read_csv(cfg.run_dir / "losses.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)
    for name in ("last.pt", "phase1_best.pt"):
        want = torch.load(RunFolder(reference.run_dir).checkpoint(1, name), weights_only=True)
        got = torch.load(folder.checkpoint(1, name), weights_only=True)
        assert want["epoch"] == got["epoch"]
        for key, value in want["model_state"].items():
            torch.testing.assert_close(got["model_state"][key], value, atol=1e-5, rtol=1e-4)


def test_image_paths_cannot_climb_out_of_the_data_folder(tiny_copy):
    _edit_csv(
        tiny_copy / "train.csv",
        lambda d: d.assign(image=d["image"].where(d.index != 0, "../../../../etc/passwd")),
    )
    with pytest.raises(DataContractError, match=r"lead outside .*line 2"):
        load_dataset(tiny_copy)
    load_dataset(tiny_copy, image_check="none", allow_images_outside=True)  # when the user says so


def test_atomic_writes_use_a_temporary_name_of_their_own(tmp_path):
    from geoloc_lib.base.atomic_files import atomic_write_text

    target = tmp_path / "losses.csv"
    (tmp_path / ".losses.csv.tmp").write_text("another writer's half-written file")
    atomic_write_text(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    assert (tmp_path / ".losses.csv.tmp").read_text() == "another writer's half-written file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".losses.csv.tmp", "losses.csv"]


def test_the_lock_is_released_when_the_holder_is_killed(tiny_config):
    cfg = tiny_config(epochs=3, batches_per_epoch=200)
    proc = _start(cfg)
    _wait_until_locked(cfg)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fit(replace(cfg, epochs=1, resume=True), progress=False)  # no stale lock


def test_a_start_that_fails_after_claiming_the_folder_releases_it(tiny_config, tmp_path):
    broken = tmp_path / "phase0_best.pt"
    broken.write_bytes(b"not a checkpoint")  # passes the config check (it exists), fails when loaded
    cfg = tiny_config(phase0_checkpoint=str(broken))
    with pytest.raises(ValueError, match="not a readable checkpoint") as failed:
        fit(cfg, progress=False)
    # the failed attempt's frames are still alive here (as in a notebook's last traceback), yet the
    # folder is free: the corrected run starts at once
    fit(replace(cfg, phase0_checkpoint="", overwrite=True), progress=False)
    assert failed.traceback is not None
    assert RunFolder(cfg.run_dir).best_checkpoint(1).is_file()


def test_keep_checkpoints_keeps_the_newest_epochs_links_best_and_last_and_still_resumes(tiny_config):
    cfg = tiny_config(epochs=4, batches_per_epoch=4, keep_checkpoints=2)
    fit(cfg, progress=False)
    folder = RunFolder(cfg.run_dir)
    names = sorted(p.name for p in folder.checkpoints(1).glob("*.pt"))
    assert names == ["last.pt", "phase1_best.pt", "phase1_epoch_3.pt", "phase1_epoch_4.pt"]
    last, newest = folder.last_checkpoint(1).stat(), folder.epoch_checkpoint(1, 4).stat()
    assert last.st_ino == newest.st_ino  # one file on disk under two names, not a copy
    best_epoch = torch.load(folder.best_checkpoint(1), weights_only=True)["epoch"]
    assert best_epoch in (1, 2, 3, 4)  # the best survives even when its epoch file was pruned
    fit(replace(cfg, epochs=5, resume=True), progress=False)
    names = sorted(p.name for p in folder.checkpoints(1).glob("phase1_epoch_*.pt"))
    assert names == ["phase1_epoch_4.pt", "phase1_epoch_5.pt"]
    assert pd.read_csv(folder.losses)["epoch"].tolist() == [e for e in range(1, 6) for _ in range(2)]
