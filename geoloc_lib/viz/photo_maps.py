"""The map of one photo, offline like every map: its probability over every cell, the prediction with its
credible radii, the top hypotheses and the truth when known (the explorer's small map, `geoloc-predict --map`
and the answer cards of `geoloc-serve` and notebook 06)."""

from __future__ import annotations

import folium
import numpy as np
import pandas as pd

from geoloc_lib.viz.label_layout import DESIGN_VIEW_PX
from geoloc_lib.viz.map_controls import Legend
from geoloc_lib.viz.map_labels import MapLabel
from geoloc_lib.viz.maps import (
    DOT_RIM,
    PREDICTION_COLOR,
    TRUTH_COLOR,
    base_map,
    cell_bounds,
    cells_layer,
    finish,
    safe_text,
)

# one photo's map box: labels are laid out for it (a narrow Lab column is about this wide)
MAP_PX = (720, 320)
HYPOTHESIS_COLOR = "#fdae61"  # the top hypotheses' dots: not the prediction's red or the truth's black
MIN_HALF_SPAN_DEG = 1.5  # an answer's map shows at least this much around its prediction (330 km across)


def _around(prediction: tuple[float, float], radii: dict[float, float] | None, hypotheses: list[dict]):
    """The corners (latitude, longitude) of the box an answer's map opens on: the prediction, its widest
    credible circle and its hypotheses, and at least MIN_HALF_SPAN_DEG around the prediction."""
    lat, lon = prediction
    reach = max([MIN_HALF_SPAN_DEG, *(km / 111.0 for km in (radii or {}).values() if np.isfinite(km))])
    wide = reach / np.cos(np.radians(lat))  # degrees of longitude are shorter away from the equator
    lats = [lat - reach, lat + reach, *(h["lat"] for h in hypotheses)]
    lons = [lon - wide, lon + wide, *(h["lon"] for h in hypotheses)]
    return pd.DataFrame({"latitude": [min(lats), max(lats)], "longitude": [min(lons), max(lons)]})


def probability_map(
    cells: pd.DataFrame,
    prediction: tuple[float, float],
    radii: dict[float, float] | None = None,
    truth: tuple[float, float] | None = None,
    view_px: tuple[int, int] = DESIGN_VIEW_PX,
    hypotheses: list[dict] | None = None,
) -> folium.Map:
    """One photo's probability over every cell (cell_metadata rows with a `prob` column, as
    `Predictor.cell_table` gives them), the prediction with its credible radii ({level: km}), the truth when
    known, and the top `hypotheses` (`Predictor.predict`'s, numbered by rank); its labels are laid out for a
    map box of `view_px`."""
    probs = cells["prob"].to_numpy(float)
    top = float(np.max(probs)) or 1.0
    tips = [
        f"cell {row.cell_id} ({safe_text(row.province)}): p = {float(p):.3f}"
        for row, p in zip(cells.itertuples(), probs, strict=True)
    ]
    opacity = list(0.05 + 0.75 * probs / top)
    layer = cells_layer(cells, [PREDICTION_COLOR] * len(cells), opacity, tips, "probability per cell")
    focus = _around(prediction, radii, hypotheses) if hypotheses else cell_bounds(layer)
    m = base_map(focus, "Where this photo may be: every cell's probability")
    m.get_root().html.add_child(
        folium.Element("<title>Where this photo was taken: probability per cell</title>")
    )
    layer.add_to(m)
    marks = [("prediction", PREDICTION_COLOR)]
    for level, km in sorted((radii or {}).items()):
        if not np.isfinite(km):
            continue
        percent = round(100 * level)
        dashed = level == max(radii)  # the widest circle dashed, the others solid
        folium.Circle(prediction, radius=1000 * km, color=PREDICTION_COLOR, weight=2 if dashed else 1.5,
                      dash_array="6 4" if dashed else None, fill=False, class_name=f"geoloc-radius-{percent}",
                      tooltip=f"{percent} % credible radius: {km:.0f} km").add_to(m)  # fmt: skip
        marks.append((f"{percent} % credible radius{' (dashed)' if dashed else ''}", PREDICTION_COLOR))
    labels = {}
    if hypotheses:
        group = folium.FeatureGroup(name="top hypotheses").add_to(m)
        for rank, h in enumerate(hypotheses, 1):
            folium.CircleMarker((h["lat"], h["lon"]), radius=4, color=DOT_RIM, weight=1, fill=True,
                                fill_color=HYPOTHESIS_COLOR, fill_opacity=1, class_name="geoloc-hypothesis",
                                tooltip=f"#{rank} {safe_text(h['province'])}: p = {h['prob']:.3f}").add_to(group)  # fmt: skip
        labels["top hypotheses"] = [
            MapLabel(h["lat"], h["lon"], (f"#{rank} {100 * h['prob']:.0f} %",), font_px=10, must_show=False)
            for rank, h in enumerate(hypotheses, 1)
        ]
        marks.append(("top hypotheses (#rank, probability)", HYPOTHESIS_COLOR))
    folium.CircleMarker(prediction, radius=6, color=PREDICTION_COLOR, fill=True, fill_opacity=1,
                        class_name="geoloc-prediction", tooltip="prediction").add_to(m)  # fmt: skip
    if truth is not None:
        folium.CircleMarker(
            truth, radius=6, color=TRUTH_COLOR, fill=True, fill_opacity=1, tooltip="truth"
        ).add_to(m)
        marks.append(("truth", TRUTH_COLOR))
    m.add_child(Legend("darker cells: more probable", marks, shape="circle"))
    return finish(m, labels, view_px=view_px)
