"""Small helpers the notebooks share: project-root working directory, latest run, figure saving, thumbnails."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import matplotlib
import pandas as pd
from PIL import Image

from geoloc_lib.base.atomic_files import atomic_write_bytes
from geoloc_lib.base.command_line import TRACEBACK_VARIABLE, one_line

LIBRARY = Path(__file__).resolve().parents[1]  # geoloc_lib/

# the notebook parameters that name files or folders (run_dirs: several, separated by commas)
PATH_PARAMETERS = (
    *("data_dir", "images_root", "ingest_from", "output_dir", "runs_dir", "cache_dir", "run_dir", "run_dirs"),
    *("phase0_checkpoint", "phase1_checkpoint", "boundaries_geojson"),
)


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds pyproject.toml, else the checkout this
    library was installed from (`pip install -e .`), else `start`."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (folder / "pyproject.toml").is_file() and (folder / "geoloc_lib").is_dir():
            return folder
    return here


def typed_path(value: str, started: Path, root: Path) -> str:
    """A path parameter as the user meant it. Relative paths in the notebooks' defaults are read from the
    project root; a relative path typed where papermill was started (`-p data_dir ../data/mine` from
    notebooks/) is read from there: when it exists there, or starts with `.`. Returned absolute in that case."""
    if not value or Path(value).is_absolute() or started == root:
        return value
    if (started / value).exists() or value.startswith("."):
        return str((started / value).resolve())
    return value


def setup(parameters: dict | None = None) -> Path:
    """Run from the project root, whether the notebook was opened from notebooks/ or run by papermill from
    anywhere; the path parameters in `parameters` (the notebook's globals()) are first read from where the
    notebook started (`typed_path`)."""
    started, root = Path.cwd().resolve(), project_root()
    for name in PATH_PARAMETERS:
        if parameters is not None and isinstance(parameters.get(name), str):
            items = parameters[name].split(",") if name == "run_dirs" else [parameters[name]]
            parameters[name] = ",".join(typed_path(item.strip(), started, root) for item in items)
    os.chdir(root)
    matplotlib.rcParams["figure.dpi"] = 90
    _refusals_in_one_line()
    return root


def _refusals_in_one_line() -> None:
    """In a notebook kernel, a refusal the library raises (a ValueError, OSError or RuntimeError whose message is
    written for the user: a missing data folder, an existing run) shows as its one line, as on the command line;
    any other error keeps its whole traceback, and GEOLOC_TRACEBACK=1 keeps every one."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or os.environ.get(TRACEBACK_VARIABLE):
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        last = tb
        while last is not None and last.tb_next is not None:
            last = last.tb_next
        if last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(LIBRARY):
            stb = [f"{etype.__name__}: {one_line(value)}", f"(set {TRACEBACK_VARIABLE}=1 for the traceback)"]
        else:
            stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((ValueError, OSError, RuntimeError), handler)


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure atomically, in the format its suffix names."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def thumbnail_html(image_path: str, size: int = 96) -> str:
    with Image.open(image_path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/jpeg;base64,{data}" width="{size}"/>'


def worst_predictions_html(pred: pd.DataFrame, split: pd.DataFrame, n: int = 10) -> str:
    """An HTML table of the `n` worst predictions with thumbnails."""
    worst = pred.nlargest(n, "error_km").merge(split[["id", "image_path"]], on="id", how="left")
    rows = "".join(
        f"<tr><td>{thumbnail_html(r.image_path)}</td><td>{html.escape(str(r.id))}</td><td>{r.province}</td>"
        f"<td>{r.pred_province}</td><td>{r.error_km:.0f}</td><td>({r.latitude:.2f}, {r.longitude:.2f})</td>"
        f"<td>({r.pred_lat:.2f}, {r.pred_lon:.2f})</td></tr>"
        for r in worst.itertuples()
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("photo", "id", "true province", "predicted", "error km", "truth", "prediction")
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


class LiveCurves:
    """Training curves that redraw in place after every epoch: `fit(config, on_epoch=LiveCurves().update)`.

    One notebook output is replaced each time (an IPython display handle), so a saved notebook keeps the last
    drawing and no trail of figures."""

    def __init__(self):
        from IPython.display import HTML, display

        self.handle = display(HTML("<i>the curves appear here after the first epoch</i>"), display_id=True)

    def update(self, folder) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import Image as DisplayImage

        from geoloc_lib.viz.plots import live_curves

        fig = live_curves(folder.read_losses())
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=90, format="png")  # a PNG of its own: the same under any matplotlib backend
        plt.close(fig)  # or the notebook would draw it a second time at the end of the cell
        atomic_write_bytes(folder.figures / "training_curves.png", buffer.getvalue())  # saved with the run
        self.handle.update(DisplayImage(data=buffer.getvalue(), format="png"))
