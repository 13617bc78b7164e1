"""A researcher's first hour: the design card's command typed from notebooks/, twice, with a relative data
folder; its progress on the terminal; and path parameters read from where they were typed."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from geoloc_lib.train.setup import build_training
from geoloc_lib.viz.notebook import project_root, typed_path

ROOT = Path(__file__).resolve().parents[1]


def in_a_new_shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """`line` run by bash as in a new terminal after the two setup commands: the system's PATH only, then the
    README's one step, `. .venv/bin/activate`."""
    activate = Path(sys.executable).parent / "activate"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    command = f". {shlex.quote(str(activate))} && {line}"
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_every_program_the_readme_types_is_found_in_a_new_shell():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    programs = {
        line.split()[0] for block in blocks for line in block.splitlines() if line and line[0].isalpha()
    }
    programs -= {"cd", "make"}  # a shell builtin; make is the system's
    assert {"papermill", "geoloc-ingest", "geoloc-predict", "geoloc-serve"} <= programs
    for program in sorted(programs):
        result = in_a_new_shell(f"{program} --help", ROOT)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (program, result.stderr[-500:])


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


def _state(path: Path) -> tuple | None:
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None


@pytest.mark.slow
def test_the_design_card_command_twice_from_notebooks_with_a_relative_data_folder(tiny_data, tmp_path):
    data = os.path.relpath(tiny_data, ROOT / "notebooks")  # typed from notebooks/: ../../tmp/...
    users = _state(ROOT / "notebooks" / "out.ipynb")  # a user's own run of the design card, if there is one
    outputs = ["-p", "runs_dir", str(tmp_path / "runs"), "-p", "cache_dir", str(tmp_path / "cache")]
    terminals = []
    for out, every in (("out.ipynb", "0"), ("out2.ipynb", "")):  # the design card command, in a new terminal
        line = shlex.join(["papermill", "03_train_phase1.ipynb", str(tmp_path / out), "-p", "data_dir", data])
        line = f"GEOLOC_PROGRESS_EVERY_S={every} {line}" if every else line  # first: a line after every batch
        result = in_a_new_shell(f"{line} {shlex.join(outputs + TINY)}", ROOT / "notebooks")
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
        assert f"{run}: NO PHASE 0: no finished Phase 0 run of this data and validation split" in terminal
        assert "NO PHASE 0" in (tmp_path / "runs" / run / "log.txt").read_text()
    # inside an epoch, a line a minute (by default; here after every batch) says how far it is and what is left
    assert re.search(rf"{runs[0]}: epoch 1/2, batch 3/4 \(75 %\), \d+ s in, about \d+ s left", terminals[0])
    assert "batch 3/4" not in terminals[1]  # the default minute is longer than these epochs
    assert "NO PHASE 0" in (tmp_path / "out.ipynb").read_text()
    assert _state(ROOT / "notebooks" / "out.ipynb") == users  # the test wrote nothing into the checkout


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
    out = tmp_path / "out.ipynb"
    line = shlex.join(["papermill", "03_train_phase1.ipynb", str(out), "-p", "data_dir", "../data/nowhere"])
    result = in_a_new_shell(f"{line} -p runs_dir {shlex.quote(str(tmp_path / 'runs'))}", ROOT / "notebooks")
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


def test_the_batches_of_an_epoch_follow_the_training_photos_up_to_1300():
    from geoloc_lib.run.spec import TrainConfig
    from geoloc_lib.train.setup import batches_per_epoch

    auto = TrainConfig()
    assert batches_per_epoch(auto, 300) == 33  # 7 passes over 300 photos in batches of 64: ceil(2100 / 64)
    assert batches_per_epoch(auto, 2_677) == 293  # the demo's training photos: about the 300 its recipe sets
    assert (
        batches_per_epoch(auto, 90_000) == 1300 and batches_per_epoch(auto, 12_000) == 1300
    )  # GEOPAK: the cap
    assert batches_per_epoch(TrainConfig(batches_per_epoch=500), 300) == 500  # a number given is kept


def test_any_run_gets_its_offline_pages(tmp_path, capsys):
    from geoloc_lib.pages import main as pages

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# 03 · my own run"), nbformat.v4.new_code_cell("1 + 1")]
    notebook.cells[1].outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    ]
    run = tmp_path / "runs" / "my_p1"
    run.mkdir(parents=True)
    nbformat.write(notebook, run / "03_train_phase1.ipynb")
    assert pages([str(run)]) == 0
    page = (run / "03_train_phase1.html").read_text(encoding="utf-8")
    assert "my own run" in page and not re.search(r'<script[^>]*src="https?:', page)  # offline
    (tmp_path / "notes.txt").write_text("not a notebook")
    (tmp_path / "broken.ipynb").write_text("{not json")
    for bad, expected in (("notes.txt", "not a notebook"), ("broken.ipynb", "not a readable notebook")):
        assert pages([str(tmp_path / bad)]) == 2
        assert expected in capsys.readouterr().err


def test_phase1_starts_from_the_newest_finished_phase0_run_of_the_same_data_and_split(tiny_config):
    from geoloc_lib.run.folder import RunFolder
    from geoloc_lib.train.loop import fit

    def killed_after_the_first_epoch(folder):
        raise KeyboardInterrupt

    good = fit(tiny_config(phase=0, run_name="p0_good"), progress=False)
    # newer, but each unfit to start from: another validation split (its province head saw this run's
    # validation photos), and a run stopped before its last epoch
    fit(tiny_config(phase=0, run_name="p0_other_split", val_seed=1), progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_config(phase=0, run_name="p0_stopped", epochs=2),
            progress=False,
            on_epoch=killed_after_the_first_epoch,
        )
    run = fit(tiny_config(run_name="p1"), progress=False)  # phase0_checkpoint left at its default
    chosen = RunFolder(good.run_dir).best_checkpoint(0)
    assert RunFolder(run.run_dir).read_config().phase0_checkpoint == str(chosen)  # recorded, not "auto"
    assert (  # the log names paths from the run folder
        "Phase 1 starts from Phase 0 (found by phase0_checkpoint=auto; an empty one starts from scratch): "
        "Phase 0 weights from ../p0_good/checkpoints/phase0/phase0_best.pt"
        in (run.run_dir / "log.txt").read_text()
    )
    resumed = fit(tiny_config(run_name="p1", epochs=2, resume=True), progress=False)
    assert RunFolder(resumed.run_dir).read_config().phase0_checkpoint == str(
        chosen
    )  # its start stays its own

    scratch = fit(tiny_config(run_name="p1_scratch", phase0_checkpoint=""), progress=False)
    assert "NO PHASE 0: phase0_checkpoint is empty" in (scratch.run_dir / "log.txt").read_text()
    assert RunFolder(scratch.run_dir).read_config().phase0_checkpoint == ""


@pytest.mark.slow
def test_ctrl_c_stops_make_demo_in_one_line_with_no_traceback(tiny_data, tmp_path):
    import signal
    import time

    run = f"ctrl_c_{os.getpid()}"
    log = tmp_path / "terminal.txt"
    with open(
        log, "w"
    ) as terminal:  # Ctrl-C reaches the terminal's foreground group: the demo, not its kernels
        demo = subprocess.Popen(
            [sys.executable, "-m", "tools.demo", "--run-name", run, "--data-dir", str(tiny_data)],
            cwd=ROOT,
            stdout=terminal,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while ": epoch 1/" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)  # until Phase 0 trains: a cell runs for seconds
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=120) == 130
    finally:
        for folder in (ROOT / "runs" / run, ROOT / "runs" / f"{run}_phase0"):
            shutil.rmtree(folder, ignore_errors=True)
    terminal = log.read_text()
    assert "make demo: stopped (Ctrl-C)" in terminal and "Traceback" not in terminal, terminal[-3000:]


def test_curves_after_one_or_two_epochs_tick_whole_epochs():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from geoloc_lib.viz.plots import error_curves, live_curves

    for epochs in (1, 2):
        rows = [
            {
                "epoch": e,
                "split": s,
                "loss_total": 1.0 / e,
                "median_error_km": 100.0 / e,
                "oracle_median_error_km": 50.0,
            }
            for e in range(1, epochs + 1)
            for s in ("train", "val")
        ]
        for fig in (live_curves(pd.DataFrame(rows)), error_curves(pd.DataFrame(rows))):
            fig.canvas.draw()
            ticks = [
                t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]
            ]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_long_loop_tells_the_terminal_how_far_it_is_once_a_minute(monkeypatch):
    from geoloc_lib.base.progress import EVERY_ENV, TerminalTicker

    monkeypatch.delenv(EVERY_ENV, raising=False)
    now = [0.0]
    ticker = TerminalTicker("r: epoch 1/2, batch", 100, clock=lambda: now[0])
    seen = []
    for t, done in [(30, 10), (61, 20), (100, 30), (125, 50), (200, 100)]:
        now[0] = t
        seen.append(ticker.update(done))
    assert seen == [
        None,  # under a minute since the start
        "r: epoch 1/2, batch 20/100 (20 %), 61 s in, about 4 min left",  # 61 s / 20 x 80 = 244 s
        None,  # 39 s since the last line
        "r: epoch 1/2, batch 50/100 (50 %), 2 min in, about 2 min left",  # 125 s in, 125 s left
        None,  # the loop's end: the epoch's own line follows
    ]
    # a loop resumed at 40 of 100 counts its pace from what this session did: 70 s for 20, so 140 s for 40
    resumed = TerminalTicker("clean features: image", 100, initial=40, clock=lambda: now[0])
    now[0] += 70
    assert resumed.update(60) == "clean features: image 60/100 (60 %), 70 s in, about 2 min left"
    monkeypatch.setenv(EVERY_ENV, "600")  # a user who logs to a file asks for a line every ten minutes
    assert TerminalTicker("r", 100, clock=lambda: now[0]).every == 600


def test_a_mistyped_progress_interval_is_refused_before_the_run_starts(tiny_config, monkeypatch):
    from geoloc_lib.base.progress import EVERY_ENV

    monkeypatch.setenv(EVERY_ENV, "1m")
    cfg = tiny_config(epochs=1, batches_per_epoch=2)
    with pytest.raises(ValueError, match="GEOLOC_PROGRESS_EVERY_S is a number of seconds .* not '1m'"):
        build_training(cfg, progress=False)
    assert not cfg.run_dir.exists()
