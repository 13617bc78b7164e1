"""An ipywidgets explorer of a run's worst predictions, for notebook 04.

Pick a province and a rank among its worst errors; the explorer shows the photo, the truth, the
prediction and its distance, the model's top hypotheses with their probabilities, and all of them on a
small map that needs no network: every cell's probability, the prediction with its 90 % credible radius
and the truth (photo_maps.probability_map in an iframe).
"""

from __future__ import annotations

import base64
import html

import ipywidgets as widgets
import pandas as pd

from geoloc_lib.inference.predictor import Predictor, map_inputs
from geoloc_lib.viz import maps, photo_maps
from geoloc_lib.viz.answer_card import THUMBNAIL_PX, hypotheses_table, jpeg_thumbnail
from geoloc_lib.viz.photo_maps import MAP_PX

HYPOTHESES_SHOWN = 5


class WorstPhotoExplorer:
    """`display(explorer)`; `province` and `rank` are the two controls."""

    def __init__(self, predictions: pd.DataFrame, split: pd.DataFrame, predictor: Predictor):
        self.predictions = predictions.merge(split[["id", "image_path"]], on="id", how="left")
        names = list(self.predictions.sort_values("province_id")["province"].unique())
        self.predictor = predictor
        self.province = widgets.Dropdown(options=names, description="province")
        self.rank = widgets.BoundedIntText(value=1, min=1, max=1, description="worst #")
        self.photo = widgets.Image(format="jpeg", width=THUMBNAIL_PX)
        self.info = widgets.HTML()
        self.map = widgets.HTML()
        self.widget = widgets.VBox(
            [widgets.HBox([self.province, self.rank]), widgets.HBox([self.photo, self.info]), self.map]
        )
        self.province.observe(self._province_changed, names="value")
        self.rank.observe(self.update, names="value")
        self._province_changed()

    def worst(self, province: str) -> pd.DataFrame:
        """The province's photos, worst first."""
        return self.predictions[self.predictions["province"] == province].sort_values(
            "error_km", ascending=False
        )

    @property
    def current(self) -> pd.Series:
        return self.worst(self.province.value).iloc[self.rank.value - 1]

    def _province_changed(self, *_) -> None:
        self.rank.max = len(self.worst(self.province.value))
        if self.rank.value == 1:
            self.update()
        else:
            self.rank.value = 1  # observed: updates

    def update(self, *_) -> None:
        row = self.current
        answer = self.predictor.predict([row["image_path"]], cell_probs=True).iloc[0]  # one forward pass
        self.photo.value = jpeg_thumbnail(row["image_path"])
        self.info.value = _describe(row, answer["hypotheses"][:HYPOTHESES_SHOWN])
        cells, prediction, radii = map_inputs(self.predictor, answer)
        chart = photo_maps.probability_map(
            cells, prediction, radii, truth=(row["latitude"], row["longitude"]), view_px=MAP_PX
        )
        page = maps.offline_html(chart)
        # the frame is the box the labels were laid out for (MAP_PX), narrower only where the page is
        self.map.value = (
            f'<iframe srcdoc="{html.escape(page, quote=True)}" '
            f'style="width:{MAP_PX[0]}px;max-width:100%;height:{MAP_PX[1]}px;border:0"></iframe>'
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """One output in two renderings: the live widget where a kernel runs it, and its current view as plain
        HTML where none does (a notebook reopened after papermill: JupyterLab falls back to the HTML when the
        widget's model is gone). An exported page draws the widget from its saved state."""
        return {
            **self.widget._repr_mimebundle_(include=include, exclude=exclude),
            "text/html": self.snapshot_html(),
        }

    def snapshot_html(self) -> str:
        """The current view as plain HTML, for places without the widget runtime (an exported notebook)."""
        photo = base64.b64encode(self.photo.value).decode()
        return (
            f"<div class='geoloc-explorer'><div style='display:flex'><img src='data:image/jpeg;base64,{photo}' "
            f"width='{THUMBNAIL_PX}'/>{self.info.value}</div>{self.map.value}</div>"
        )


def _trust(row: pd.Series) -> str:
    """The credible radii, and a warning when the photo is unlike every training photo (runs that have them)."""
    parts = []
    if "radius_90_km" in row:
        held = "holds" if row["error_km"] <= row["radius_90_km"] else "<b>missed</b>"
        parts.append(
            f"credible radius: 50 % {row['radius_50_km']:.0f} km, 90 % {row['radius_90_km']:.0f} km ({held})"
        )
    if row.get("out_of_domain", False):
        parts.append("<b style='color:#d7191c'>out of domain: unlike every training photo</b>")
    return "<br>".join(parts) + ("<br>" if parts else "")


def _describe(row: pd.Series, hypotheses: list[dict]) -> str:
    return (
        f"<div style='font:13px sans-serif;padding-left:12px'><b>photo {html.escape(str(row['id']))}</b><br>"
        f"truth: {html.escape(row['province'])} ({row['latitude']:.3f}, {row['longitude']:.3f})<br>"
        f"prediction: {html.escape(row['pred_province'])} ({row['pred_lat']:.3f}, {row['pred_lon']:.3f})<br>"
        f"<b>distance: {row['error_km']:.1f} km</b><br>{_trust(row)}<br>top hypotheses:"
        f"{hypotheses_table(hypotheses, (row['latitude'], row['longitude']))}</div>"
    )
