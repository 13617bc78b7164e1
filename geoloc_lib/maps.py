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
