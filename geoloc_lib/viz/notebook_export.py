"""Executed notebooks as self-contained HTML pages that read offline, widgets included.

nbconvert's own page loads require.js, MathJax and the ipywidgets renderer from CDNs, so offline its
saved widgets never appear. `export_html` uses the template in resources/notebook_html, which inlines
the ipywidgets HTML renderer vendored in resources/widgets; the saved state of every widget (the
explorer in 04) is then drawn as it was when the notebook ran. Without a kernel the widgets show that
state but cannot compute new views.
"""

from __future__ import annotations

import base64
from pathlib import Path

from nbconvert import HTMLExporter
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from geoloc_lib.base.atomic_files import atomic_write_text
from geoloc_lib.base.resources import RESOURCES

WIDGET_RENDERER = RESOURCES / "widgets" / "html-manager-embed.js"


class TerminalStreams(CoalesceStreamsPreprocessor):
    """One text per stream, reduced to what a terminal would leave of its carriage returns: a progress
    bar's final state instead of each of its frames; streams left blank (closed bars) are dropped."""

    def preprocess_cell(self, cell, resources, cell_index):
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        cell.outputs = [o for o in cell.get("outputs", []) if o.output_type != "stream" or o.text.strip()]
        return cell, resources


def export_html(notebook: str | Path, page: str | Path | None = None) -> Path:
    """Write `notebook` (an executed .ipynb) as one HTML page, by default beside it; returns its path."""
    notebook = Path(notebook)
    page = Path(page) if page else notebook.with_suffix(".html")
    exporter = HTMLExporter(template_name="notebook_html", extra_template_basedirs=[str(RESOURCES)])
    exporter.register_preprocessor(TerminalStreams, enabled=True)
    renderer = "data:text/javascript;base64," + base64.b64encode(WIDGET_RENDERER.read_bytes()).decode()
    body, _ = exporter.from_filename(str(notebook), resources={"widget_renderer_src": renderer})
    atomic_write_text(page, body)
    return page
