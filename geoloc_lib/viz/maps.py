"""folium maps that render without internet, in saved HTML files and inside notebooks.

Every map has an offline base: the borders of Pakistan's seven first-level divisions (Natural Earth
admin-1, public domain, built from Debian's qgis-common by data/build_boundaries.py, see data/README.md) and the names of the larger towns
(`resources/places_pk.csv`). OpenStreetMap tiles are an optional layer, off by default. Leaflet's
JavaScript and CSS are inlined from `resources/leaflet/` (Leaflet 1.9.4, BSD-2-Clause), the layer
control's icon is an inline SVG, and folium's other CDN assets are dropped (these maps use none of them).
Maps fit their bounds to the data; legends are Leaflet controls, so they stack with the other controls
instead of covering them.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import folium
import numpy as np
import pandas as pd
import shapely

from geoloc_lib.base.atomic_files import atomic_write_text
from geoloc_lib.base.resources import RESOURCES
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_borders
from geoloc_lib.geo.cell_regions import cell_regions
from geoloc_lib.geo.sphere import KM_PER_DEG_LAT
from geoloc_lib.viz.label_layout import DESIGN_VIEW_PX
from geoloc_lib.viz.map_controls import Legend, Title
from geoloc_lib.viz.map_labels import MapLabel, add_labels
from geoloc_lib.viz.static_maps import static_png

LEAFLET_DIR = RESOURCES / "leaflet"
STILL_ALT = "the map as a still picture: the live map shows once the notebook is trusted (jupyter trust)"
PROVINCE_COLORS = ("#e6550d", "#31a354", "#3182bd", "#756bb1", "#636363", "#bcbd22", "#d6616b")
ERROR_BINS_KM = (0, 25, 100, 250, 500, 1000, np.inf)
ERROR_COLORS = ("#1a9850", "#91cf60", "#d9ef8b", "#fee08b", "#fc8d59", "#d73027")
TRUTH_COLOR, PREDICTION_COLOR = "#000000", "#d7191c"
DOT_RIM = "#333333"
# folium's popups build their content with jQuery's $(html)[0]; this is all of jQuery they need
JQUERY_SHIM = (
    "window.$=window.$||function(h){var t=document.createElement('template');"
    "t.innerHTML=h.trim();return [t.content.firstChild];};"
)
# Leaflet's layers.png, drawn as an SVG (three stacked sheets) so that no image file is needed
LAYERS_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 26 26"><g fill="#555" stroke="#fff" stroke-width="1">'
    '<path d="M13 17 2 12l11-5 11 5z" opacity=".5" transform="translate(0 4)"/><path d="M13 17 2 12l11-5 11 5z"/>'
    "</g></svg>"
)


def _read_shapes(geojson: str | Path | None) -> dict:
    """A user's GeoJSON (properties `shapeName` or `name` naming provinces) if given, else the bundled one."""
    if geojson is None:
        return json.loads(json.dumps(province_borders()))  # a copy: callers add properties
    shapes = json.loads(Path(geojson).read_text(encoding="utf-8"))
    for feature in shapes["features"]:
        props = feature["properties"]
        found = prov.try_lookup(props.get("shapeName") or props.get("name") or "")
        props["province"] = found.name if found else str(props.get("shapeName") or props.get("name"))
    return shapes


def base_map(points: pd.DataFrame | None = None, title: str = "") -> folium.Map:
    """A map with the offline base (the province borders) fitted to `points` (latitude, longitude); `finish`
    names the towns."""
    m = folium.Map(tiles=None, control_scale=True, zoom_snap=0.25)
    folium.TileLayer(
        "OpenStreetMap", name="OpenStreetMap (needs internet)", overlay=False, show=False
    ).add_to(m)
    borders = folium.FeatureGroup(name="province borders (Natural Earth)", overlay=True, control=True)
    folium.GeoJson(
        province_borders(),
        style_function=lambda _: {"color": "#555", "weight": 1.2, "fillColor": "#f4f1ea", "fillOpacity": 0.6},
        tooltip=folium.GeoJsonTooltip(fields=["province"], labels=False),
    ).add_to(borders)
    borders.add_to(m)
    if points is not None and len(points):
        lat, lon = points["latitude"].to_numpy(float), points["longitude"].to_numpy(float)
        _open_fitted(m, [[lat.min() - 0.3, lon.min() - 0.3], [lat.max() + 0.3, lon.max() + 0.3]])
    else:
        _open_fitted(m, [[23.6, 60.8], [37.1, 77.9]])  # Pakistan
    if title:
        m.add_child(Title(title))
    return m


def _open_fitted(m: folium.Map, bounds: list[list[float]]) -> None:
    """Open the map fitted to `bounds` ((south, west), (north, east)), at once: folium first shows the whole
    world at zoom 1, and Leaflet animates a fit of under 4 zoom levels from there (a 720x320 box of Pakistan
    is 3.75), so a picture taken or a layout measured in those 250 ms finds every label pulled to the centre."""
    fit = folium.FitBounds(bounds)
    fit.options["animate"] = False
    m.add_child(fit)


def finish(
    m: folium.Map, labels: dict[str, list[MapLabel]] | None = None, view_px: tuple[int, int] = DESIGN_VIEW_PX
) -> folium.Map:
    """The map's own `labels` ({layer name: labels}) and the town names, laid out so that none covers another
    in a map box of `view_px` (map_labels.py), and the layer list."""
    add_labels(m, labels or {}, view_px)
    folium.LayerControl(collapsed=True, position="topright").add_to(m)
    return m


def _inline_assets(page: str) -> str:
    """Leaflet inlined, the layer icon inlined, every other CDN reference dropped."""
    js = (LEAFLET_DIR / "leaflet.js").read_text(encoding="utf-8")
    icon = base64.b64encode(LAYERS_ICON.encode()).decode()
    css = (LEAFLET_DIR / "leaflet.css").read_text(encoding="utf-8") + (
        f".leaflet-control-layers-toggle{{background-image:url(data:image/svg+xml;base64,{icon})}}"
    )
    page = re.sub(
        r'<script src="[^"]*leaflet(?:@[\d.]+)?/dist/leaflet\.js"></script>',
        lambda _: f"<script>{js}</script><script>{JQUERY_SHIM}</script>",
        page,
    )
    page = re.sub(
        r'<link rel="stylesheet" href="[^"]*leaflet(?:@[\d.]+)?/dist/leaflet\.css"\s*/?>',
        lambda _: f"<style>{css}</style>",
        page,
    )
    page = re.sub(r'<script src="https?://[^"]*"></script>', "", page)
    return re.sub(r'<link rel="stylesheet" href="https?://[^"]*"\s*/?>', "", page)


def offline_html(m: folium.Map) -> str:
    """The map as a standalone HTML page that needs no network."""
    return _inline_assets(m.get_root().render())


def notebook_html(m: folium.Map, height_px: int = 480) -> str:
    """The map as an HTML fragment for a notebook output: no iframe and no network. Page-wide styles of the
    standalone page are left out.

    JupyterLab runs no script of a notebook it does not trust (every notebook papermill writes, until `jupyter
    trust`): it shows the fragment with its scripts removed. So the fragment opens with the map's still
    picture (`static_maps.static_png`), and the map's own scripts, where they run (a trusted notebook, an
    exported page), remove the picture as they draw the live map."""
    page = offline_html(m)
    head = page[page.index("<head>") + 6 : page.index("</head>")]
    kept = [
        b for b in re.findall(r"<style>.*?</style>|<script>.*?</script>", head, re.S) if "html, body" not in b
    ]
    kept = [b for b in kept if not re.search(r"#map\s*{", b)]
    body = page[page.index("<body>") + 6 : page.index("</body>")]
    scripts = "".join(re.findall(r"<script>.*?</script>", page[page.index("</body>") :], re.S))
    name = m.get_name()
    picture = base64.b64encode(static_png(m)).decode("ascii")
    still = (
        f'<img id="still_{name}" class="geoloc-still-map" alt="{STILL_ALT}" src="data:image/png;base64,{picture}" '
        f'style="max-width:100%;max-height:{height_px}px">'
    )
    # where scripts run, the picture goes and the live map's box takes its height, before Leaflet sizes the map
    live = (
        f'<script>document.getElementById("still_{name}").remove();'
        f'document.getElementById("live_{name}").style.height="{height_px}px";</script>'
    )
    return f'{still}<div id="live_{name}" style="position:relative;width:100%">{live}{"".join(kept)}{body}{scripts}</div>'


def show(m: folium.Map, height_px: int = 480):
    """Display a map in a notebook without any network access: live where the notebook is trusted, its still
    picture where not (see `notebook_html`)."""
    from IPython.display import HTML

    return HTML(notebook_html(m, height_px))


def save_map(m: folium.Map, path: str | Path, offline: bool = True) -> Path:
    """Write the map's page atomically (a kill leaves the old page or the new one, never half of one)."""
    path = Path(path)
    atomic_write_text(path, offline_html(m) if offline else m.get_root().render())
    return path


def safe_text(value) -> str:
    """A value from a user's CSV as text that is inert in every context folium puts it in: HTML text and
    attributes, and the JavaScript template literals (`...`) its tooltips and popups are written into."""
    text = html.escape(str(value), quote=True)
    return text.replace("\\", "&#92;").replace("`", "&#96;").replace("$", "&#36;")


def error_color(error_km: float) -> str:
    index = int(np.searchsorted(ERROR_BINS_KM, error_km, side="right")) - 1
    return ERROR_COLORS[min(max(index, 0), len(ERROR_COLORS) - 1)]


def error_legend_entries() -> list[tuple[str, str]]:
    edges = ERROR_BINS_KM
    return [
        (f"{edges[i]:g}-{edges[i + 1]:g} km" if np.isfinite(edges[i + 1]) else f"> {edges[i]:g} km", c)
        for i, c in enumerate(ERROR_COLORS)
    ]


def _province_legend() -> Legend:
    return Legend("Province", [(p.name, PROVINCE_COLORS[p.id]) for p in prov.PROVINCES], shape="circle")


def samples_map(split: pd.DataFrame, max_points: int = 5000, seed: int = 0) -> folium.Map:
    """Photos as dots coloured by province (a seeded subsample above `max_points`)."""
    m = base_map(split, f"Photos by province ({len(split)})")
    shown = split.sample(max_points, random_state=seed) if len(split) > max_points else split
    for p in prov.PROVINCES:
        layer = folium.FeatureGroup(name=f"{p.name} ({int((split['province_id'] == p.id).sum())} photos)")
        for lat, lon in shown.loc[shown["province_id"] == p.id, ["latitude", "longitude"]].to_numpy():
            folium.CircleMarker(
                (lat, lon), radius=2, color=PROVINCE_COLORS[p.id], fill=True, weight=1, fill_opacity=0.7
            ).add_to(layer)
        layer.add_to(m)
    m.add_child(_province_legend())
    return finish(m)


def cells_layer(cells: pd.DataFrame, fills: list[str], opacities: list[float], tips: list[str], name: str):
    """Cells (cell_metadata rows) as the regions they stand for (geo/cell_regions.py), one fill and tooltip each;
    a cell of a province without a border shape is drawn as the circle of its radius."""
    regions, features = cell_regions(cells), []
    for row, fill, opacity, tip in zip(cells.itertuples(), fills, opacities, tips, strict=True):
        shape = regions.get(row.cell_id)
        if shape is None:
            dlat = row.radius_km / KM_PER_DEG_LAT
            circle = shapely.Point(row.center_lon, row.center_lat).buffer(dlat)
            shape = shapely.affinity.scale(circle, xfact=1 / np.cos(np.radians(row.center_lat)), yfact=1)
        properties = {"fill": fill, "opacity": opacity, "tip": tip}
        features.append({"type": "Feature", "properties": properties, "geometry": shape.__geo_interface__})
    return folium.GeoJson(
        {"type": "FeatureCollection", "features": features},
        name=name,
        style_function=lambda f: {
            "fillColor": f["properties"]["fill"],
            "fillOpacity": f["properties"]["opacity"],
            "color": "#444",
            "weight": 0.8,
        },
        tooltip=folium.GeoJsonTooltip(fields=["tip"], labels=False),
    )


def cell_bounds(layer: folium.GeoJson) -> pd.DataFrame:
    """The corners of every cell's shape in `layer` (latitude, longitude): a map fitted to them shows whole
    cells, not only their centres."""
    shapes = [shapely.geometry.shape(f["geometry"]) for f in layer.data["features"]]
    west, south, east, north = shapely.total_bounds(shapes)
    return pd.DataFrame({"latitude": [south, north], "longitude": [west, east]})


def cell_labels(cells: pd.DataFrame) -> list[MapLabel]:
    """Each cell's id at its centre, the largest cells first (their ids fit; crowded small ones give way)."""
    ordered = cells.sort_values("radius_km", ascending=False)
    return [
        MapLabel(row.center_lat, row.center_lon, (str(row.cell_id),), font_px=9, must_show=False)
        for row in ordered.itertuples()
    ]


def geocell_map(cells: pd.DataFrame, value: pd.Series | None = None, value_label: str = "") -> folium.Map:
    """Cells as the regions they stand for, coloured by province or by `value` (an error in km, indexed by
    cell_id), each labelled with its id where it fits."""
    title = f"Geocells ({len(cells)})" + (f" by {value_label}" if value is not None else "")
    fills, tips = [], []
    for row in cells.itertuples():
        v = None if value is None else value.get(row.cell_id, np.nan)
        fills.append(PROVINCE_COLORS[row.province_id] if v is None or np.isnan(v) else error_color(v))
        photos = "" if pd.isna(row.n_samples) else f", {int(row.n_samples)} photos"
        tip = f"cell {row.cell_id} ({safe_text(row.province)}){photos}, radius {row.radius_km:.0f} km"
        tips.append(tip + (f", {value_label} {v:.1f}" if v is not None and not np.isnan(v) else ""))
    layer = cells_layer(cells, fills, [0.45] * len(cells), tips, "geocells")
    m = base_map(cell_bounds(layer), title)
    layer.add_to(m)
    m.add_child(_province_legend() if value is None else Legend(value_label, error_legend_entries()))
    return finish(m, {"cell ids": cell_labels(cells)})


def province_error_stats(pred: pd.DataFrame) -> dict[str, dict]:
    """Per province (canonical name): photos, median error and province accuracy of a predictions table."""
    return {
        prov.by_id(pid).name: {
            "photos": len(part),
            "median_error_km": round(float(part["error_km"].median()), 1),
            "province_acc": round(100 * float((part["pred_province_id"] == pid).mean()), 1),
        }
        for pid, part in pred.groupby("province_id")
    }


def _choropleth(m: folium.Map, shapes: dict, stats: dict[str, dict]) -> None:
    for feature in shapes["features"]:
        props = feature["properties"]
        s = stats.get(props["province"])
        props.update(s or {"photos": 0, "median_error_km": "n/a", "province_acc": "n/a"})
        props["fill"] = error_color(s["median_error_km"]) if s else "#cccccc"
    folium.GeoJson(
        shapes,
        name="median error by province",
        style_function=lambda f: {
            "fillColor": f["properties"]["fill"],
            "color": "#333",
            "weight": 1,
            "fillOpacity": 0.55,
        },
        tooltip=folium.GeoJsonTooltip(
            fields=["province", "photos", "median_error_km", "province_acc"],
            aliases=["province", "photos", "median error (km)", "province accuracy (%)"],
        ),
    ).add_to(m)


def province_labels(shapes: dict, stats: dict[str, dict]) -> list[MapLabel]:
    """Each province with photos: its name and median error at a point shapely guarantees is inside it, the
    smallest provinces first (they have the least room to move their label)."""
    found = []
    for feature in shapes["features"]:
        name = feature["properties"]["province"]
        if name in stats:
            shape = shapely.geometry.shape(feature["geometry"])
            point = shape.point_on_surface()
            label = MapLabel(point.y, point.x, (name, f"{stats[name]['median_error_km']:g} km"))
            found.append((shape.area, label))
    return [label for _, label in sorted(found, key=lambda pair: pair[0])]


def _worst_lines(pred: pd.DataFrame, worst_n: int) -> folium.FeatureGroup:
    """The worst predictions: a black dot at the truth, a red dot at the prediction, a dashed line between."""
    # off until chosen in the layer list: thirty dashed lines over one province hide it
    worst = folium.FeatureGroup(name=f"worst {worst_n}: truth (black) -> prediction (red)", show=False)
    for row in pred.nlargest(worst_n, "error_km").itertuples():
        text = (
            f"<b>photo {safe_text(row.id)}</b><br>truth: {safe_text(row.province)} ({row.latitude:.3f}, "
            f"{row.longitude:.3f})<br>prediction: {safe_text(row.pred_province)} ({row.pred_lat:.3f}, "
            f"{row.pred_lon:.3f})"
            f"<br>error: {row.error_km:.0f} km"
        )
        folium.PolyLine(
            [(row.latitude, row.longitude), (row.pred_lat, row.pred_lon)],
            color=PREDICTION_COLOR,
            weight=2,
            dash_array="6 4",
            popup=folium.Popup(text, max_width=300),
        ).add_to(worst)
        for (lat, lon), color in (
            ((row.latitude, row.longitude), TRUTH_COLOR),
            ((row.pred_lat, row.pred_lon), PREDICTION_COLOR),
        ):
            folium.CircleMarker(
                (lat, lon),
                radius=4,
                color=color,
                fill=True,
                fill_opacity=1,
                popup=folium.Popup(text, max_width=300),
            ).add_to(worst)
    return worst


def error_map(
    pred: pd.DataFrame,
    boundaries_geojson: str | Path | None = None,
    worst_n: int = 30,
    max_points: int = 5000,
) -> folium.Map:
    """The per-province median error as a choropleth of the real borders (or of `boundaries_geojson`), written
    on each province, the photos coloured by error, and the worst predictions from truth to prediction (a layer
    that is off until chosen)."""
    stats, shapes = province_error_stats(pred), _read_shapes(boundaries_geojson)
    m = base_map(
        pd.concat(
            [
                pred[["latitude", "longitude"]],
                pred[["pred_lat", "pred_lon"]].set_axis(["latitude", "longitude"], axis=1),
            ]
        ),
        f"Error by province: median of {len(pred)} photos",
    )
    _choropleth(m, shapes, stats)
    points = folium.FeatureGroup(name="photos by error")
    shown = pred.sample(max_points, random_state=0) if len(pred) > max_points else pred
    for row in shown.itertuples():
        folium.CircleMarker(  # a dark rim sets each dot apart from a fill of the same colour
            (row.latitude, row.longitude),
            radius=3.5,
            color=DOT_RIM,
            fill_color=error_color(row.error_km),
            fill=True,
            fill_opacity=0.9,
            weight=1,
            tooltip=f"{safe_text(row.id)}: {row.error_km:.1f} km ({safe_text(row.province)} -> "
            f"{safe_text(row.pred_province)})",
        ).add_to(points)
    points.add_to(m)
    _worst_lines(pred, worst_n).add_to(m)
    m.add_child(Legend("province fill: median error", error_legend_entries()))
    m.add_child(Legend("photo dots: that photo's error", error_legend_entries(), shape="circle"))
    m.add_child(
        Legend(
            "worst predictions (layer list)",
            [("truth", TRUTH_COLOR), ("prediction", PREDICTION_COLOR)],
            shape="circle",
        )
    )
    return finish(m, {"province medians (labels)": province_labels(shapes, stats)})
