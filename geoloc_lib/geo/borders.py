"""The bundled province borders and point-in-polygon on them.

`resources/boundaries/pakistan_adm1.geojson` is built by `data/build_boundaries.py` from Natural Earth's admin-1
layer as Debian's `qgis-common` package ships it (public domain; see data/README.md). Every map draws it, and
`province_at` places points in it (a user's own GeoJSON may replace it in the maps).
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
from matplotlib.path import Path as PolygonPath

from geoloc_lib.base.resources import RESOURCES
from geoloc_lib.geo import provinces as prov

BOUNDARIES_GEOJSON = RESOURCES / "boundaries" / "pakistan_adm1.geojson"


@cache
def province_borders() -> dict:
    """The bundled GeoJSON, with each feature's `province` set to the canonical name."""
    shapes = json.loads(BOUNDARIES_GEOJSON.read_text(encoding="utf-8"))
    for feature in shapes["features"]:
        feature["properties"]["province"] = prov.lookup(feature["properties"]["shapeName"]).name
    return shapes


def _outer_rings(geometry: dict) -> list[np.ndarray]:
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [np.asarray(polygon[0], float) for polygon in polygons]  # [V, 2] (lon, lat) each


@cache
def _province_paths() -> tuple[tuple[int, tuple[PolygonPath, ...]], ...]:
    return tuple(
        (
            prov.lookup(f["properties"]["province"]).id,
            tuple(PolygonPath(r) for r in _outer_rings(f["geometry"])),
        )
        for f in province_borders()["features"]
    )


def province_at(lat, lon) -> np.ndarray:
    """[N] the id of the province each point (degrees) lies in, or -1 outside every border."""
    points = np.column_stack([np.asarray(lon, float).ravel(), np.asarray(lat, float).ravel()])  # [N, 2]
    found = np.full(len(points), -1)
    for province_id, paths in _province_paths():
        inside = np.zeros(len(points), bool)
        for path in paths:
            inside |= path.contains_points(points)
        found[inside & (found < 0)] = province_id
    return found
