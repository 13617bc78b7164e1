"""`make demo`: from nothing to a trained model and error maps on the embedded demo data.

1. generate data/demo (if missing)  2. audit it (00)  3. sampler check (01)  4. Phase 0 (02b)
5. model build (02)  6. Phase 1 (03)  7. evaluation on the test split and error maps (04)
8. with --phase2 (make demo-phase2): Phase 2 from the Phase 1 run (03b) into runs/<run_name>_phase2, and its
   evaluation (04)

Every notebook is executed by papermill into runs/<run_name>/, next to the run's outputs, and saved
beside it as a self-contained HTML page that reads offline (viz/notebook_export.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import ClassVar

import papermill as pm
from jupyter_client.manager import AsyncKernelManager
from traitlets import CaselessStrEnum

from geoloc_lib.base.progress import TEXT_PROGRESS_ENV
from geoloc_lib.data.demo_data import DEMO_PRESETS, generate_demo_dataset
from geoloc_lib.inference.run_evaluation import read_evaluation
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.viz.notebook import project_root
from geoloc_lib.viz.notebook_export import export_html

KERNEL = "geoloc"
# The demo's training length; every other setting is the TrainConfig default (bench_accuracy uses these too).
DEMO_PHASE0 = {"epochs": 3, "batches_per_epoch": 150}
DEMO_PHASE1 = {"epochs": 6, "batches_per_epoch": 300}
# Phase 2 of the demo: short, and the tiny CLIP tower has 2 blocks, so its last one trains
DEMO_PHASE2 = {"epochs": 3, "batches_per_epoch": 300, "unfreeze_clip_blocks": 1, "lr": 5e-4}


class LocalKernelManager(AsyncKernelManager):
    """The kernel talks to papermill over local sockets (IPC), not TCP ports: nothing listens on the network, and
    the kernel does not warn, once per notebook, that its TCP traffic is unencrypted. The kernels started are
    kept, so that Ctrl-C can end them (`_stop_kernels`)."""

    transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)
    started: ClassVar[list[AsyncKernelManager]] = []

    async def start_kernel(self, **kwargs) -> None:
        await super().start_kernel(**kwargs)
        LocalKernelManager.started.append(self)


def _stop_kernels(signum, frame) -> None:
    """Ctrl-C: end every kernel still running, then stop as Python does. A kernel runs in a session of its own,
    so Ctrl-C reaches papermill but not the kernel, which would print a traceback as papermill's clean-up
    closes its sockets under the cell it is running. Papermill's clean-up then finds the kernel dead and logs
    it, with the traceback of the cell it was waiting on: after Ctrl-C that is noise, so logging stops first."""
    logging.disable(logging.CRITICAL)
    for manager in LocalKernelManager.started:
        process = getattr(manager.provisioner, "process", None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    raise KeyboardInterrupt


def run_notebook(name: str, out_dir: Path, **parameters) -> Path:
    os.environ[TEXT_PROGRESS_ENV] = "1"  # the kernel inherits it: saved outputs end on each bar's final state
    out = out_dir / f"{name}.ipynb"
    print(f"--- {name} -> {out}", flush=True)
    started = time.perf_counter()
    pm.execute_notebook(
        f"notebooks/{name}.ipynb",
        str(out),
        parameters=parameters,
        kernel_name=KERNEL,
        kernel_manager_class=LocalKernelManager,
        progress_bar=False,
        log_output=True,
        cwd=".",
    )
    export_html(out)
    print(f"    {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def print_ladder(run_dir: Path) -> None:
    ladder = read_evaluation(RunFolder(run_dir).evaluation, "ladder")
    print(
        f"\nTest split of {run_dir.name}, the model against the baseline ladder (same photos, same features):"
    )
    print(ladder[["median_error_km", "p90_error_km", "acc_25km", "geoscore"]].round(1).to_string())


def run_demo(
    run_name: str = "demo",
    data_dir: str = "data/demo",
    size: str = "default",
    encoder: str = "tiny-random",
    phase2: bool = False,
) -> Path:
    os.chdir(project_root(Path(__file__).parent))
    started = time.perf_counter()
    if not (Path(data_dir) / "train.csv").exists():
        generate_demo_dataset(data_dir, DEMO_PRESETS[size])
    out_dir = Path("runs") / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    run_notebook(
        "00_data_audit", out_dir, data_dir=data_dir, output_dir=str(out_dir / "audit"), generate_demo=""
    )
    run_notebook("01_sampler_check", out_dir, data_dir=data_dir)
    phase0 = RunFolder(Path("runs") / f"{run_name}_phase0")
    run_notebook(
        "02b_train_phase0",
        out_dir,
        data_dir=data_dir,
        run_name=phase0.root.name,
        resume=True,
        encoder=encoder,
        **DEMO_PHASE0,
    )
    run_notebook(
        "02_model_build",
        out_dir,
        data_dir=data_dir,
        encoder=encoder,
        phase0_checkpoint=str(phase0.best_checkpoint(0)),
    )
    run_notebook(
        "03_train_phase1",
        out_dir,
        data_dir=data_dir,
        run_name=run_name,
        resume=True,
        phase0_checkpoint=str(phase0.best_checkpoint(0)),
        encoder=encoder,
        **DEMO_PHASE1,
    )
    run_notebook("04_error_maps", out_dir, run_dir=str(out_dir))
    print_ladder(out_dir)
    print(
        "In a new shell, run `. .venv/bin/activate` first: papermill, geoloc-ingest, geoloc-predict, geoloc-serve "
        "and jupyter live in .venv/bin. Ask the model about a photo: geoloc-serve runs/demo (a page to drop "
        "photos on)."
    )
    if phase2:
        tuned = Path("runs") / f"{run_name}_phase2"
        tuned.mkdir(exist_ok=True)
        run_notebook(
            "03b_train_phase2",
            tuned,
            phase1_checkpoint=str(out_dir),
            run_name=tuned.name,
            resume=True,
            **DEMO_PHASE2,
        )
        run_notebook("04_error_maps", tuned, run_dir=str(tuned))
        print_ladder(tuned)
    print(
        f"\ndemo finished in {time.perf_counter() - started:.0f}s: see {out_dir}/ (notebooks, each also as an "
        "offline .html page, maps/, figures/)"
    )
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-name", default="demo")
    parser.add_argument("--data-dir", default="data/demo")
    parser.add_argument("--size", choices=sorted(DEMO_PRESETS), default="default")
    parser.add_argument(
        "--encoder", default="tiny-random", help="encoder preset (geoloc_lib/model/encoders.py)"
    )
    parser.add_argument(
        "--phase2", action="store_true", help="then Phase 2 from the Phase 1 run (03b) and its 04"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _stop_kernels)
    try:
        run_demo(args.run_name, args.data_dir, args.size, args.encoder, args.phase2)
    except KeyboardInterrupt:
        print(
            "\nmake demo: stopped (Ctrl-C). Every finished epoch is kept: make demo again goes on from there.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
