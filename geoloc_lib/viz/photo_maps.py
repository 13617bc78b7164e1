"""The map of one photo, offline like every map: its probability over every cell, the prediction with its
credible radius, and the truth when known (the explorer's small map and `geoloc-predict --map`)."""

from __future__ import annotations

import folium
import numpy as np
import pandas as pd

from geoloc_lib.viz.label_layout import DESIGN_VIEW_PX
from geoloc_lib.viz.map_controls import Legend
from geoloc_lib.viz.maps import (
    PREDICTION_COLOR,
    TRUTH_COLOR,
    base_map,
    cell_bounds,
    cells_layer,
    finish,
    safe_text,
)


def probability_map(
    cells: pd.DataFrame,
    prediction: tuple[float, float],
    radius_km: float | None = None,
    truth: tuple[float, float] | None = None,
    view_px: tuple[int, int] = DESIGN_VIEW_PX,
) -> folium.Map:
    """One photo's probability over every cell (cell_metadata rows with a `prob` column, as
    `inference.predictor.cell_probabilities` gives them), the prediction with its credible radius, and the truth; its labels
    are laid out for a map box of `view_px`."""
    probs = cells["prob"].to_numpy(float)
    top = float(np.max(probs)) or 1.0
    tips = [
        f"cell {row.cell_id} ({safe_text(row.province)}): p = {float(p):.3f}"
        for row, p in zip(cells.itertuples(), probs, strict=True)
    ]
    opacity = list(0.05 + 0.75 * probs / top)
    layer = cells_layer(cells, [PREDICTION_COLOR] * len(cells), opacity, tips, "probability per cell")
    m = base_map(cell_bounds(layer), "Where this photo may be: every cell's probability")
    m.get_root().html.add_child(
        folium.Element("<title>Where this photo was taken: probability per cell</title>")
    )
    layer.add_to(m)
    marks = [("prediction", PREDICTION_COLOR)]
    if radius_km is not None and np.isfinite(radius_km):
        folium.Circle(prediction, radius=1000 * radius_km, color=PREDICTION_COLOR, weight=2, dash_array="6 4",
                      fill=False, tooltip=f"90 % credible radius: {radius_km:.0f} km").add_to(m)  # fmt: skip
        marks.append(("90 % credible radius (dashed)", PREDICTION_COLOR))
    folium.CircleMarker(prediction, radius=6, color=PREDICTION_COLOR, fill=True, fill_opacity=1,
                        tooltip="prediction").add_to(m)  # fmt: skip
    if truth is not None:
        folium.CircleMarker(
            truth, radius=6, color=TRUTH_COLOR, fill=True, fill_opacity=1, tooltip="truth"
        ).add_to(m)
        marks.append(("truth", TRUTH_COLOR))
    m.add_child(Legend("darker cells: more probable", marks, shape="circle"))
    return finish(m, view_px=view_px)
