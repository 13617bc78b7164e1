"""A still picture of a folium map, drawn with matplotlib from the map's own layers: what a notebook shows where
its scripts may not run.

JupyterLab runs no script of a notebook it does not trust, and the notebooks papermill writes open untrusted, so
a Leaflet map alone is empty space there. `maps.notebook_html` therefore puts this picture first, and the live
map's scripts remove it where they run (a trusted notebook, an exported page). The picture draws what the map
shows when it opens: the borders and fills of GeoJSON layers (with their style), circles (in km), dots, lines,
the labels (the text of DivIcons), the title and the legends. Layers that start hidden, and tiles, are left out.
"""

from __future__ import annotations

import html
import io
import math
import re

import folium
import shapely
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Polygon

from geoloc_lib.geo.sphere import KM_PER_DEG_LAT
from geoloc_lib.viz.map_controls import Legend, Title

PX_TO_PT = 0.75  # Leaflet sizes are CSS pixels; matplotlib's are points
FONT_PX = re.compile(r"(\d+)px")


def _shown(element):
    """Every element under `element` that the map shows when it opens."""
    for child in element._children.values():
        if isinstance(child, folium.TileLayer) or (isinstance(child, folium.FeatureGroup) and not child.show):
            continue
        yield child
        yield from _shown(child)


def _rgba(options: dict, fill: bool) -> tuple:
    if fill:
        return to_rgba(
            options.get("fillColor") or options["color"], options["fillOpacity"] if options["fill"] else 0
        )
    return to_rgba(options["color"], options["opacity"] if options["stroke"] and options["weight"] else 0)


def _polygons(geometry) -> list:
    shape = shapely.geometry.shape(geometry)
    return list(shape.geoms) if hasattr(shape, "geoms") else [shape]


def _draw_geojson(ax, layer: folium.GeoJson) -> None:
    for feature in layer.data["features"]:
        style = layer.style_function(feature)
        face = to_rgba(style.get("fillColor", "#3388ff"), style.get("fillOpacity", 0.2))
        edge = to_rgba(style.get("color", "#3388ff"), style.get("opacity", 1.0))
        for polygon in _polygons(feature["geometry"]):
            ax.add_patch(
                Polygon(
                    list(polygon.exterior.coords),
                    closed=True,
                    facecolor=face,
                    edgecolor=edge,
                    linewidth=style.get("weight", 1) * PX_TO_PT,
                    zorder=1,
                )
            )


def _draw_circle(ax, circle: folium.Circle) -> None:
    """A circle of `radius` metres, as an ellipse in degrees (a degree of longitude is shorter)."""
    lat, lon = circle.location
    dlat = circle.options["radius"] / 1000 / KM_PER_DEG_LAT
    options = circle.options
    ax.add_patch(
        Ellipse(
            (lon, lat),
            2 * dlat / math.cos(math.radians(lat)),
            2 * dlat,
            facecolor=_rgba(options, True),
            edgecolor=_rgba(options, False),
            linewidth=options["weight"] * PX_TO_PT,
            zorder=2,
        )
    )


def _draw_label(ax, marker: folium.Marker) -> None:
    icons = [c for c in marker._children.values() if isinstance(c, folium.DivIcon)]
    if not icons:
        return
    options = icons[0].options
    markup = options.get("html", "")
    text = html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<br\s*/?>", "\n", markup))).strip()
    text = text.replace("\u25cf", "\u2022")  # a town's dot: the bullet matplotlib's font draws at text size
    size = FONT_PX.search(markup)
    anchor, size_px = options.get("icon_anchor"), options.get("icon_size")
    # where the marker's point is in the text: its middle, its right end (a town named on the left), or its start
    align = "left"
    if anchor is not None and size_px is not None and anchor[0] * 2 >= size_px[0]:
        align = "center" if anchor[0] * 2 == size_px[0] else "right"
    ax.text(
        marker.location[1],
        marker.location[0],
        text,
        fontsize=(int(size.group(1)) if size else 11) * PX_TO_PT,
        fontweight="bold" if "bold" in markup else "normal",
        ha=align,
        va="center",
        zorder=5,
        clip_on=True,
    )


def _legend(ax, legends: list[Legend]) -> None:
    """Every legend of the map in one box beside it: each title, then its colours."""
    handles, labels = [], []
    for legend in legends:
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(legend.title)
        marker = "o" if legend.shape == "circle" else "s"
        for label, color in legend.entries:
            handles.append(Line2D([], [], linestyle="none", marker=marker, markersize=7, color=color))
            labels.append(f"  {label}")
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=True)


def static_png(m: folium.Map, width_in: float = 9.0, height_in: float = 6.0, dpi: int = 90) -> bytes:
    """The map as a PNG (see the module's docstring for what it draws)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    ax = fig.add_subplot()
    dots: list[tuple] = []  # (lon, lat, size, face, edge) of every CircleMarker, drawn in one scatter
    legends: list[Legend] = []
    labels: list[tuple[float, float]] = []  # (lat, lon) of every label: one moved off the bounds still shows
    for element in _shown(m):
        if isinstance(element, folium.GeoJson):
            _draw_geojson(ax, element)
        elif isinstance(element, folium.Circle):
            _draw_circle(ax, element)
        elif isinstance(element, folium.CircleMarker):
            o = element.options
            dots.append(
                (
                    element.location[1],
                    element.location[0],
                    (2 * o["radius"] * PX_TO_PT) ** 2,
                    _rgba(o, True),
                    _rgba(o, False),
                )
            )
        elif isinstance(element, folium.PolyLine):
            lat, lon = zip(*element.locations, strict=True)
            o = element.options
            ax.plot(
                lon,
                lat,
                color=o["color"],
                linewidth=o["weight"] * PX_TO_PT,
                linestyle="--" if o["dashArray"] else "-",
                zorder=3,
            )
        elif isinstance(element, folium.Marker):
            _draw_label(ax, element)
            labels.append(element.location)
        elif isinstance(element, Legend):
            legends.append(element)
        elif isinstance(element, Title):
            ax.set_title(html.unescape(element.text), fontsize=11, fontweight="bold")
    if dots:
        lon, lat, size, face, edge = zip(*dots, strict=True)
        ax.scatter(lon, lat, s=size, c=list(face), edgecolors=list(edge), linewidths=0.5, zorder=4)
    bounds = next((c.bounds for c in m._children.values() if type(c).__name__ == "FitBounds"), None)
    if bounds is not None:
        (south, west), (north, east) = bounds
        if labels:
            lat, lon = zip(*labels, strict=True)
            south, north = min(south, min(lat) - 0.3), max(north, max(lat) + 0.3)
            west, east = min(west, min(lon) - 0.3), max(east, max(lon) + 1.5)  # text runs east of its point
        ax.set_xlim(west, east)
        ax.set_ylim(south, north)
        ax.set_aspect(1 / math.cos(math.radians((south + north) / 2)))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.tick_params(labelsize=8)
    _legend(ax, legends)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # the legends sit beside the map
    return buffer.getvalue()
