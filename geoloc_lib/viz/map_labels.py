"""The text on the maps, laid out by `label_layout` so that nothing prints over anything else when a map opens:
the map's own labels first (a province's name and median, a cell's id), then as many town names as fit.

A label that cannot stay on its point (ICT's beside Islamabad's, Gilgit-Baltistan's under the title) moves to a
free spot nearby, with a thin leader line back to a dot on the point.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import folium

from geoloc_lib.geo.places import map_labels
from geoloc_lib.viz.label_layout import DESIGN_VIEW_PX, Box, Layout, View, text_width
from geoloc_lib.viz.map_controls import Legend, Title

TOWN_CANDIDATES, TOWN_GAP_KM = 40, 15  # the largest towns are offered, most populous first; twins left out
TOWN_FONT_PX = 10
LEADER_COLOR = "#111111"
# where a label that cannot stay on its point tries next, in steps of its own half size plus a gap
STEPS = (
    *((0, 0), (0, -1), (0, 1), (1, 0), (-1, 0), (1, -1), (-1, -1), (1, 1), (-1, 1)),
    *((0, -2), (0, 2), (2, 0), (-2, 0), (1, 2), (-1, 2), (1, -2), (-1, -2), (0, 3), (0, -3)),
)


@dataclass(frozen=True)
class MapLabel:
    """Text a map writes at (lat, lon), centred on it."""

    lat: float
    lon: float
    lines: tuple[str, ...]
    font_px: int = 11
    must_show: bool = True  # a province's name keeps a spot even when none is free; a cell's id is left out


def _layout(m: folium.Map, view_px: tuple[int, int]) -> Layout:
    bounds = next(c.bounds for c in m._children.values() if type(c).__name__ == "FitBounds")
    layout = Layout(View(bounds, view_px))
    children = list(m._children.values())
    title = next((html.unescape(c.text) for c in children if isinstance(c, Title)), None)
    legends = [(c.title, [label for label, _ in c.entries]) for c in children if isinstance(c, Legend)]
    layout.reserve_controls(title, legends)
    return layout


def _size(label: MapLabel) -> tuple[int, int]:
    """(width, height) in pixels, even so that the icon's centre is a whole pixel."""
    width = max(text_width(line, label.font_px, bold=True) for line in label.lines) + 8
    height = (label.font_px + 3) * len(label.lines) + 2
    return 2 * math.ceil(width / 2), 2 * math.ceil(height / 2)


def _draw(label: MapLabel, layout: Layout, group: folium.FeatureGroup) -> None:
    x, y = layout.view.pixel(label.lat, label.lon)
    width, height = _size(label)
    home = Box(x - width / 2, y - height / 2, x + width / 2, y + height / 2)
    step_x, step_y = width / 2 + 8, height / 2 + 8
    candidates = [home.moved(dx * step_x, dy * step_y) for dx, dy in STEPS]
    box = layout.place(candidates)
    if box is None:
        if not label.must_show:
            return
        box = layout.least_covered(candidates)
    cx, cy = box.centre
    text = "<br>".join(html.escape(line) for line in label.lines)
    markup = (
        f'<div style="font:bold {label.font_px}px sans-serif;color:#111;text-align:center;white-space:nowrap;'
        f'text-shadow:0 0 3px #fff,0 0 3px #fff">{text}</div>'
    )
    folium.Marker(
        layout.view.location(cx, cy),
        icon=folium.DivIcon(html=markup, icon_size=(width, height), icon_anchor=(width // 2, height // 2)),
    ).add_to(group)
    if box != home:  # a leader from the box's nearest edge back to the point
        edge = (min(max(x, box.left), box.right), min(max(y, box.top), box.bottom))
        folium.PolyLine(
            [(label.lat, label.lon), layout.view.location(*edge)], color=LEADER_COLOR, weight=1
        ).add_to(group)
        folium.CircleMarker(
            (label.lat, label.lon), radius=2, color=LEADER_COLOR, fill=True, fill_opacity=1, weight=1
        ).add_to(group)


def _towns(layout: Layout) -> folium.FeatureGroup:
    towns = folium.FeatureGroup(name="towns", overlay=True)
    for town in map_labels(TOWN_CANDIDATES, TOWN_GAP_KM).itertuples():
        x, y = layout.view.pixel(town.latitude, town.longitude)
        name = html.escape(town.name)
        width = math.ceil(text_width(f"\u25cf {town.name}", TOWN_FONT_PX)) + 4
        # the dot, 3 px in from the text's edge, sits on the town: the name on its right, else on its left
        right, left = Box(x - 3, y - 6, x - 3 + width, y + 6), Box(x + 3 - width, y - 6, x + 3, y + 6)
        box = layout.place([right, left])
        if box is None:
            continue
        text, align, anchor = (
            (f"&#9679; {name}", "left", (3, 6))
            if box == right
            else (f"{name} &#9679;", "right", (width - 3, 6))
        )
        markup = (
            f'<div style="font:{TOWN_FONT_PX}px sans-serif;color:#333;white-space:nowrap;text-align:{align}">'
            f"{text}</div>"
        )
        folium.Marker(
            (town.latitude, town.longitude),
            icon=folium.DivIcon(html=markup, icon_size=(width, 12), icon_anchor=anchor),
        ).add_to(towns)
    return towns


def add_labels(
    m: folium.Map,
    groups: dict[str, list[MapLabel]],
    view_px: tuple[int, int] = DESIGN_VIEW_PX,
) -> None:
    """Write `groups` ({layer name: labels}, in priority order) and then the towns that still fit on `m`, laid
    out for a map box of `view_px` (width, height). Call when the title and legends are on the map."""
    layout = _layout(m, view_px)
    for name, labels in groups.items():
        group = folium.FeatureGroup(name=name)
        for label in labels:
            _draw(label, layout, group)
        group.add_to(m)
    _towns(layout).add_to(m)
