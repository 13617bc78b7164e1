"""A researcher's first hour: the design card's command typed from notebooks/, twice, with a relative data
folder; its progress on the terminal; and path parameters read from where they were typed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from geoloc_lib.viz.notebook import project_root, typed_path

ROOT = Path(__file__).resolve().parents[1]
# a user's shell: pytest's marker would make the kernel leave its output descriptors alone
SHELL_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
TINY = [
    "-p",
    "epochs",
    "2",
    "-p",
    "batches_per_epoch",
    "4",
    "-p",
    "batch_size",
    "32",
    "-p",
    "cache_views",
    "1",
]
TINY += ["-p", "proj_dim", "64", "-p", "geocell_hidden", "64", "-p", "small_geocell_hidden", "32"]
TINY += ["-p", "num_workers", "0", "-p", "image_check", "exists", "-p", "device", "cpu"]


@pytest.mark.slow
def test_the_design_card_command_twice_from_notebooks_with_a_relative_data_folder(tiny_data, tmp_path):
    papermill = shutil.which("papermill", path=str(Path(sys.executable).parent))
    data = os.path.relpath(tiny_data, ROOT / "notebooks")  # typed from notebooks/: ../../tmp/...
    outputs = ["-p", "runs_dir", str(tmp_path / "runs"), "-p", "cache_dir", str(tmp_path / "cache")]
    terminals = []
    for out in ("out.ipynb", "out2.ipynb"):
        command = [
            papermill,
            "03_train_phase1.ipynb",
            str(tmp_path / out),
            "-p",
            "data_dir",
            data,
            *outputs,
            *TINY,
        ]
        result = subprocess.run(
            command, cwd=ROOT / "notebooks", capture_output=True, text=True, timeout=600, env=SHELL_ENV
        )
        assert result.returncode == 0, result.stderr[-3000:]
        terminals.append(result.stdout + result.stderr)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("phase1_"))
    assert len(runs) == 2 and all(
        (tmp_path / "runs" / r / "checkpoints/phase1/phase1_best.pt").is_file() for r in runs
    )
    for run, terminal in zip(runs, terminals, strict=True):  # each epoch's line reached the terminal
        assert f"{run}: epoch 1/2, validation median" in terminal and "about" in terminal
        assert f"{run}: epoch 2/2" in terminal and f"{run}: done, best epoch" in terminal
        # without Phase 0 the province head starts from scratch, and the terminal, the log and the notebook say so
        assert f"{run}: NO PHASE 0: phase0_checkpoint is empty" in terminal
        assert "NO PHASE 0" in (tmp_path / "runs" / run / "log.txt").read_text()
    assert "NO PHASE 0" in (tmp_path / "out.ipynb").read_text()
    assert not (ROOT / "notebooks" / "out.ipynb").exists()


def test_a_path_typed_where_papermill_started_is_read_from_there(tmp_path):
    root, started = tmp_path / "project", tmp_path / "project" / "notebooks"
    (root / "data" / "demo").mkdir(parents=True)
    started.mkdir()
    (tmp_path / "project" / "data" / "mine").mkdir()
    # a default of the notebooks is read from the project root, where the notebooks run
    assert typed_path("data/demo", started, root) == "data/demo"
    assert typed_path("runs", started, root) == "runs"  # not made yet: still the project's
    # what the user typed from notebooks/ is read from there
    assert typed_path("../data/mine", started, root) == str(root / "data" / "mine")
    assert typed_path("./new_runs", started, root) == str(started / "new_runs")
    assert typed_path("/abs/data", started, root) == "/abs/data" and typed_path("", started, root) == ""
    assert typed_path("../data/mine", root, root) == "../data/mine"  # started at the root: unchanged


def test_the_project_root_is_found_from_anywhere_through_the_installed_checkout(tmp_path):
    assert project_root(tmp_path) == ROOT  # an editable install knows its checkout
    assert project_root(ROOT / "notebooks") == ROOT


def test_more_top_cells_than_any_province_has_trains_on_the_cells_there_are(tiny_config):
    from geoloc_lib.train.loop import fit

    # a few hundred photos make one or two cells per province; the default top_cells=5 no longer stops Phase 1
    result = fit(tiny_config(top_cells=50, batches_per_epoch=2), progress=False)
    log = (result.run_dir / "log.txt").read_text()
    assert "top_cells 50, but no province has more than" in log and result.best_epoch == 1


@pytest.mark.slow
def test_a_refused_notebook_start_is_one_line_not_a_traceback(tmp_path):
    papermill = shutil.which("papermill", path=str(Path(sys.executable).parent))
    out = tmp_path / "out.ipynb"
    command = [papermill, "03_train_phase1.ipynb", str(out), "-p", "data_dir", "../data/nowhere"]
    command += ["-p", "runs_dir", str(tmp_path / "runs")]
    result = subprocess.run(
        command, cwd=ROOT / "notebooks", capture_output=True, text=True, timeout=300, env=SHELL_ENV
    )
    assert result.returncode != 0
    errors = [
        o
        for c in nbformat.read(out, as_version=4).cells
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert len(errors) == 1 and len(errors[0].traceback) == 2  # the refusal, and how to see its traceback
    assert (
        errors[0].traceback[0].startswith("DataContractError: ")
        and "nowhere/cell_metadata.csv" in errors[0].traceback[0]
    )
    assert "Traceback" not in result.stderr.split("Exception encountered at")[-1]  # papermill shows that line
