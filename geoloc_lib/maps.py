"""folium maps that render without internet.

Leaflet's JavaScript and CSS are inlined from the copy vendored in `resources/leaflet/` (Leaflet 1.9.4,
BSD-2-Clause); folium's other CDN assets (jQuery, Bootstrap, Font Awesome) are dropped because these
maps use none of them. Only the background tiles still come from the network; without it the data
layers draw on a blank background.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import folium
import numpy as np
import pandas as pd

from . import provinces as prov
from .geo import PAKISTAN_CENTER

LEAFLET_DIR = Path(__file__).resolve().parent / "resources" / "leaflet"
PROVINCE_COLORS = ("#e6550d", "#31a354", "#3182bd", "#756bb1", "#636363", "#bcbd22", "#d6616b")
ERROR_BINS_KM = (0, 25, 100, 250, 500, 1000, np.inf)
ERROR_COLORS = ("#1a9850", "#91cf60", "#d9ef8b", "#fee08b", "#fc8d59", "#d73027")


def base_map(zoom: int = 5) -> folium.Map:
    return folium.Map(location=PAKISTAN_CENTER, zoom_start=zoom, tiles="OpenStreetMap", control_scale=True)


def offline_html(m: folium.Map) -> str:
    """The map's HTML with Leaflet inlined and no other CDN dependency."""
    page = m.get_root().render()
    js = (LEAFLET_DIR / "leaflet.js").read_text(encoding="utf-8")
    css = (LEAFLET_DIR / "leaflet.css").read_text(encoding="utf-8")
    page = re.sub(
        r'<script src="[^"]*leaflet(?:@[\d.]+)?/dist/leaflet\.js"></script>',
        lambda _: f"<script>{js}</script>",
        page,
    )
    page = re.sub(
        r'<link rel="stylesheet" href="[^"]*leaflet(?:@[\d.]+)?/dist/leaflet\.css"\s*/?>',
        lambda _: f"<style>{css}</style>",
        page,
    )
    page = re.sub(r'<script src="https?://[^"]*"></script>', "", page)
    return re.sub(r'<link rel="stylesheet" href="https?://[^"]*"\s*/?>', "", page)


def save_map(m: folium.Map, path: str | Path, offline: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if offline:
        path.write_text(offline_html(m), encoding="utf-8")
    else:
        m.save(str(path))
    return path


def legend(m: folium.Map, title: str, entries: list[tuple[str, str]]) -> None:
    """A fixed legend box drawn with plain HTML (branca's colormap legend needs d3 from a CDN)."""
    rows = "".join(
        f'<div><span style="display:inline-block;width:12px;height:12px;background:{color};'
        f'margin-right:6px"></span>{html.escape(label)}</div>'
        for label, color in entries
    )
    box = (
        f'<div class="geoloc-legend" style="position:fixed;bottom:24px;left:24px;z-index:9999;'
        f'background:white;padding:8px;border:1px solid #999;font:12px sans-serif">'
        f"<b>{html.escape(title)}</b>{rows}</div>"
    )
    m.get_root().html.add_child(folium.Element(box))


def error_color(error_km: float) -> str:
    index = int(np.searchsorted(ERROR_BINS_KM, error_km, side="right")) - 1
    return ERROR_COLORS[min(max(index, 0), len(ERROR_COLORS) - 1)]


def error_legend_entries() -> list[tuple[str, str]]:
    edges = ERROR_BINS_KM
    return [
        (f"{edges[i]:g}-{edges[i + 1]:g} km" if np.isfinite(edges[i + 1]) else f"> {edges[i]:g} km", c)
        for i, c in enumerate(ERROR_COLORS)
    ]


def samples_map(split: pd.DataFrame, max_points: int = 5000, seed: int = 0) -> folium.Map:
    """Photos as dots coloured by province (a seeded subsample above `max_points`)."""
    m = base_map()
    shown = split.sample(max_points, random_state=seed) if len(split) > max_points else split
    for p in prov.PROVINCES:
        layer = folium.FeatureGroup(name=f"{p.name} ({int((split['province_id'] == p.id).sum())})")
        for lat, lon in shown.loc[shown["province_id"] == p.id, ["latitude", "longitude"]].to_numpy():
            folium.CircleMarker(
                (lat, lon), radius=2, color=PROVINCE_COLORS[p.id], fill=True, weight=1, fill_opacity=0.7
            ).add_to(layer)
        layer.add_to(m)
    legend(m, "Province", [(p.name, PROVINCE_COLORS[p.id]) for p in prov.PROVINCES])
    folium.LayerControl(collapsed=False).add_to(m)
    return m


def geocell_map(cells: pd.DataFrame, value: pd.Series | None = None, value_label: str = "") -> folium.Map:
    """Cells as circles of their radius, coloured by province or by `value` (an error in km, indexed by cell_id)."""
    m = base_map()
    layer = folium.FeatureGroup(name="geocells")
    for row in cells.itertuples():
        v = None if value is None else value.get(row.cell_id, np.nan)
        color = PROVINCE_COLORS[row.province_id] if value is None or np.isnan(v) else error_color(v)
        tip = f"cell {row.cell_id} ({row.province}), radius {row.radius_km:.0f} km"
        if v is not None and not np.isnan(v):
            tip += f", {value_label} {v:.1f}"
        folium.Circle(
            (row.center_lat, row.center_lon),
            radius=1000 * row.radius_km,
            color=color,
            weight=1,
            fill=True,
            fill_opacity=0.35,
            tooltip=tip,
        ).add_to(layer)
    layer.add_to(m)
    if value is None:
        legend(m, "Province", [(p.name, PROVINCE_COLORS[p.id]) for p in prov.PROVINCES])
    else:
        legend(m, value_label, error_legend_entries())
    folium.LayerControl().add_to(m)
    return m


def _province_polygons_fallback(pred: pd.DataFrame) -> dict:
    """Convex hull of each province's validation points, as GeoJSON (when no boundary file is given)."""
    from scipy.spatial import ConvexHull, QhullError

    features = []
    for p in prov.PROVINCES:
        pts = pred.loc[pred["province_id"] == p.id, ["longitude", "latitude"]].drop_duplicates().to_numpy()
        if len(pts) < 3:
            continue
        try:
            hull = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear points
            continue
        ring = [[float(x), float(y)] for x, y in hull] + [[float(hull[0][0]), float(hull[0][1])]]
        features.append(
            {
                "type": "Feature",
                "properties": {"shapeName": p.name},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def error_map(
    pred: pd.DataFrame,
    boundaries_geojson: str | Path | None = None,
    worst_n: int = 30,
    max_points: int = 5000,
) -> folium.Map:
    """Per-province median error (choropleth, or convex hulls without boundaries), test points coloured by
    error, and truth -> prediction lines for the worst `worst_n`, with a layer control."""
    import json

    m = base_map()
    by_province = pred.groupby("province_id")
    stats = {
        prov.by_id(pid).name: {
            "photos": len(part),
            "median_error_km": float(part["error_km"].median()),
            "province_acc": 100 * float((part["pred_province_id"] == pid).mean()),
        }
        for pid, part in by_province
    }
    if boundaries_geojson:
        shapes = json.loads(Path(boundaries_geojson).read_text(encoding="utf-8"))
        layer_name = "median error by province (boundaries)"
    else:
        shapes = _province_polygons_fallback(pred)
        layer_name = "median error by province (convex hull of test points)"
    for feature in shapes["features"]:
        props = feature["properties"]
        p = prov.try_lookup(props.get("shapeName") or props.get("name") or "")
        s = stats.get(p.name if p else "", {})
        props["province"] = p.name if p else str(props.get("shapeName"))
        props["photos"] = s.get("photos", 0)
        props["median_error_km"] = round(s.get("median_error_km", float("nan")), 1) if s else "n/a"
        props["province_acc"] = round(s.get("province_acc", float("nan")), 1) if s else "n/a"
        props["fill"] = error_color(s["median_error_km"]) if s else "#cccccc"
    folium.GeoJson(
        shapes,
        name=layer_name,
        style_function=lambda f: {
            "fillColor": f["properties"]["fill"],
            "color": "#333",
            "weight": 1,
            "fillOpacity": 0.5,
        },
        tooltip=folium.GeoJsonTooltip(
            fields=["province", "photos", "median_error_km", "province_acc"],
            aliases=["province", "test photos", "median error (km)", "province accuracy (%)"],
        ),
    ).add_to(m)
    points = folium.FeatureGroup(name="test photos by error")
    shown = pred.sample(max_points, random_state=0) if len(pred) > max_points else pred
    for row in shown.itertuples():
        folium.CircleMarker(
            (row.latitude, row.longitude),
            radius=3,
            color=error_color(row.error_km),
            fill=True,
            fill_opacity=0.8,
            weight=0,
            tooltip=f"{row.id}: {row.error_km:.1f} km ({row.province} -> {row.pred_province})",
        ).add_to(points)
    points.add_to(m)
    worst = folium.FeatureGroup(name=f"worst {worst_n}: truth -> prediction")
    for row in pred.nlargest(worst_n, "error_km").itertuples():
        folium.PolyLine(
            [(row.latitude, row.longitude), (row.pred_lat, row.pred_lon)],
            color="#d73027",
            weight=2,
            tooltip=f"{row.id}: {row.error_km:.0f} km",
        ).add_to(worst)
        folium.CircleMarker((row.latitude, row.longitude), radius=4, color="#000", fill=True).add_to(worst)
    worst.add_to(m)
    legend(m, "error", error_legend_entries())
    folium.LayerControl(collapsed=False).add_to(m)
    return m
