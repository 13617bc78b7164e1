"""Where a map's labels go, so that none prints over another at the view the map opens with.

A map opens fitted to its bounds (Leaflet's `fitBounds`), so its zoom, and the pixel box each label covers,
follow from the bounds and the size of the map's box. The layout is made for the smallest box a map is shown
in, a notebook's (`maps.notebook_html`: 480 px high); a page's bigger map only spreads the labels further.
Labels are placed in priority order at the first of their candidate spots that overlaps nothing placed
before (the title, the corner controls, earlier labels) and lies inside the box; a label with no free spot
is left out (a town), or takes the spot that covers least (a province's label must show).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DESIGN_VIEW_PX = (960, 480)  # width, height of a notebook's map box in a JupyterLab column
ZOOM_SNAP = 0.25  # maps.base_map's zoom_snap: Leaflet rounds the fitted zoom down to a multiple of it
CHAR_WIDTH = 0.58  # a sans-serif character is about this share of the font size wide (bold: +10 %)
LEGEND_ROW_PX, LEGEND_PAD_PX, CONTROL_MARGIN_PX = 15, 14, 10  # map_controls.Legend at 12 px, Leaflet's margin


@dataclass(frozen=True)
class Box:
    """A rectangle in the map box's pixels (y down)."""

    left: float
    top: float
    right: float
    bottom: float

    def overlaps(self, other: Box) -> bool:
        return not (
            self.right <= other.left
            or other.right <= self.left
            or self.bottom <= other.top
            or other.bottom <= self.top
        )

    def overlap_area(self, other: Box) -> float:
        dx = min(self.right, other.right) - max(self.left, other.left)
        dy = min(self.bottom, other.bottom) - max(self.top, other.top)
        return max(dx, 0) * max(dy, 0)

    def inside(self, width: float, height: float) -> bool:
        return self.left >= 0 and self.top >= 0 and self.right <= width and self.bottom <= height

    def moved(self, dx: float, dy: float) -> Box:
        return Box(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2


def text_width(text: str, font_px: float, bold: bool = False) -> float:
    return len(text) * font_px * CHAR_WIDTH * (1.1 if bold else 1.0)


def _world_px(lat: float, lon: float, zoom: float) -> tuple[float, float]:
    """Web Mercator pixels at `zoom` (Leaflet's EPSG:3857, 256-pixel tiles)."""
    scale = 256 * 2**zoom
    y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))
    return scale * (lon / 360 + 0.5), scale * (0.5 - y / (2 * math.pi))


class View:
    """The map box as Leaflet opens it fitted to `bounds` ((south, west), (north, east))."""

    def __init__(self, bounds, size: tuple[int, int] = DESIGN_VIEW_PX):
        (south, west), (north, east) = bounds
        self.width, self.height = size
        x0, y0 = _world_px(north, west, 0)
        x1, y1 = _world_px(south, east, 0)
        zoom = math.log2(min(self.width / max(x1 - x0, 1e-9), self.height / max(y1 - y0, 1e-9)))
        self.zoom = math.floor(round(zoom / (ZOOM_SNAP / 100)) * (ZOOM_SNAP / 100) / ZOOM_SNAP) * ZOOM_SNAP
        cx = (_world_px(north, west, self.zoom)[0] + _world_px(south, east, self.zoom)[0]) / 2
        cy = (_world_px(north, west, self.zoom)[1] + _world_px(south, east, self.zoom)[1]) / 2
        self._origin = (cx - self.width / 2, cy - self.height / 2)

    def pixel(self, lat: float, lon: float) -> tuple[float, float]:
        x, y = _world_px(lat, lon, self.zoom)
        return x - self._origin[0], y - self._origin[1]

    def location(self, x: float, y: float) -> tuple[float, float]:
        """(lat, lon) of the pixel (x, y)."""
        scale = 256 * 2**self.zoom
        wx, wy = (x + self._origin[0]) / scale, (y + self._origin[1]) / scale
        lat = math.degrees(2 * math.atan(math.exp((0.5 - wy) * 2 * math.pi)) - math.pi / 2)
        return lat, (wx - 0.5) * 360


class Layout:
    """The boxes taken so far on one view."""

    def __init__(self, view: View):
        self.view = view
        self.taken: list[Box] = []

    def reserve(self, box: Box) -> None:
        self.taken.append(box)

    def reserve_controls(self, title: str | None, legends: list[tuple[str, list[str]]]) -> None:
        """The title (top centre, bold 14 px), the zoom buttons and layer list (top corners), the scale bar
        (bottom left) and the legends stacked in the bottom-right corner ([(title, entry labels)])."""
        w, h = self.view.width, self.view.height
        if title:
            half = text_width(title, 14, bold=True) / 2 + 12
            self.reserve(Box(w / 2 - half, 8, w / 2 + half, 36))
        self.reserve(Box(0, 0, 46, 84))  # zoom buttons
        self.reserve(Box(w - 58, 0, w, 58))  # layer list, folded
        self.reserve(Box(0, h - 50, 110, h))  # scale bar
        bottom = h - 18  # the attribution line
        for heading, entries in legends:
            rows = 1 + len(entries)
            width = max(text_width(t, 12) + 30 for t in (heading, *entries)) + LEGEND_PAD_PX
            top = bottom - CONTROL_MARGIN_PX - rows * LEGEND_ROW_PX - LEGEND_PAD_PX
            self.reserve(Box(w - CONTROL_MARGIN_PX - width, top, w, bottom))
            bottom = top

    def place(self, candidates: list[Box]) -> Box | None:
        """The first candidate that is free and inside the view, now taken; None when none is."""
        for box in candidates:
            if box.inside(self.view.width, self.view.height) and not any(box.overlaps(t) for t in self.taken):
                self.reserve(box)
                return box
        return None

    def least_covered(self, candidates: list[Box]) -> Box:
        """The candidate inside the view (any, if none is) that overlaps the least area taken, now taken."""
        inside = [b for b in candidates if b.inside(self.view.width, self.view.height)] or candidates
        box = min(inside, key=lambda b: sum(b.overlap_area(t) for t in self.taken))
        self.reserve(box)
        return box
