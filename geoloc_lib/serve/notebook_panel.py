"""The server's answers inside JupyterLab (notebook 06): an upload widget that shows each photo's answer card,
the same card the page shows, and the answers as a table."""

from __future__ import annotations

import html

import ipywidgets as widgets
import pandas as pd

from geoloc_lib.serve.asker import Asker, Sent

TABLE_COLUMNS = [
    "file", "status", "province", "lat", "lon", "nearest_town", "town_km", "confidence",
    "radius_50_km", "radius_90_km", "out_of_domain", "error",
]  # fmt: skip


def cards_html(answers: list[dict]) -> str:
    """Every answered photo's card, and a line with the reason for each refused one."""
    return "".join(
        a["card"]
        if a["status"] == 200
        else f"<p class='geoloc-refused' style='color:#b00;font-weight:bold'>{html.escape(a['error'])}</p>"
        for a in answers
    )


def answers_table(answers: list[dict]) -> pd.DataFrame:
    """One row per photo: where it was placed and how sure the model is, or why it was refused."""
    return pd.DataFrame(answers).reindex(columns=TABLE_COLUMNS)


def answers_conclusion(answers: list[dict]) -> str:
    """What the answers say, as Markdown bullets: how many photos were placed or refused and why, where, how
    sure the model is, and which photos are out of domain."""
    if not answers:
        return "- No photos named: set `photos` (comma-separated paths), or use the upload widget above."
    placed = [a for a in answers if a["status"] == 200]
    lines = [f"- {len(answers)} photos: {len(placed)} placed, {len(answers) - len(placed)} refused."]
    lines += [f"- Refused: {a['error']}" for a in answers if a["status"] != 200]
    if placed:
        provinces = pd.Series([a["province"] for a in placed]).value_counts()
        lines.append("- Placed in " + ", ".join(f"{name} ({n})" for name, n in provinces.items()) + ".")
        radii = [a["radius_90_km"] for a in placed if a.get("radius_90_km") is not None]
        if radii:
            lines.append(
                f"- 90 % credible radius: median {pd.Series(radii).median():.0f} km (for nine photos in ten the "
                "true place lies within it, as calibrated on this run's validation photos)."
            )
        strange = [a["file"] for a in placed if a.get("out_of_domain")]
        lines.append(
            f"- Out of domain, not to be trusted: {', '.join(strange)}."
            if strange
            else "- None is out of domain: each looks like the training photos."
        )
    return "\n".join(lines)


class UploadPanel:
    """`display(UploadPanel(asker))`: pick photos; their cards appear below, newest first."""

    def __init__(self, asker: Asker):
        self.asker = asker
        limits = asker.limits
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="photos")
        self.note = widgets.HTML(
            f"at most {limits.max_photos} photos at a time, {limits.max_upload_mb:g} MB each"
        )
        self.answers = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.upload, self.note]), self.answers])
        self.upload.observe(self._uploaded, names="value")

    def _uploaded(self, change) -> None:
        files = list(change["new"])[: self.asker.limits.max_photos]
        if not files:
            return
        limit = self.asker.limits.max_upload_bytes
        sent = [Sent(f["name"], bytes(f["content"]) if f["size"] <= limit else None) for f in files]
        self.answers.value = cards_html(self.asker.answer(sent, cards=True)) + self.answers.value

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget where a kernel runs it; a line saying so where none does (a notebook reopened after
        papermill, an exported page: the widget's model is gone)."""
        return {
            **self.widget._repr_mimebundle_(include=include, exclude=exclude),
            "text/html": "<p class='geoloc-upload-note'>The upload widget needs a running kernel: run this notebook "
            "in JupyterLab to choose photos.</p>",
        }
