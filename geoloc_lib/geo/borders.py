"""The bundled province borders and point-in-polygon on them.

`resources/boundaries/pakistan_adm1.geojson` is built by `data/build_boundaries.py` from Natural Earth's admin-1
layer as Debian's `qgis-common` package ships it (public domain; see data/README.md). Every map draws it, and
`province_at` places points in it with shapely's spatial index (a user's own GeoJSON may replace it in the maps).
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import shapely

from geoloc_lib.base.resources import RESOURCES
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import KM_PER_DEG_LAT

BOUNDARIES_GEOJSON = RESOURCES / "boundaries" / "pakistan_adm1.geojson"


@cache
def province_borders() -> dict:
    """The bundled GeoJSON, with each feature's `province` set to the canonical name."""
    shapes = json.loads(BOUNDARIES_GEOJSON.read_text(encoding="utf-8"))
    for feature in shapes["features"]:
        feature["properties"]["province"] = prov.lookup(feature["properties"]["shapeName"]).name
    return shapes


@cache
def _province_index() -> tuple[np.ndarray, shapely.STRtree]:
    """(province id [P], the spatial index over the P province shapes in (lon, lat) degrees)."""
    features = province_borders()["features"]
    ids = np.array([prov.lookup(f["properties"]["province"]).id for f in features])
    return ids, shapely.STRtree([shapely.geometry.shape(f["geometry"]) for f in features])


def province_at(lat, lon, tolerance_km: float = 0.0) -> np.ndarray:
    """[N] the id of the province each point (degrees) lies in, or -1 outside every border.

    A point outside every border but within `tolerance_km` of one (a beach beyond the generalised coastline,
    a village on a simplified border) takes the nearest province. The distance is measured in degrees of
    latitude (111 km each), so east-west it is up to 15 % shorter across Pakistan's latitudes.
    """
    points = shapely.points(np.asarray(lon, float).ravel(), np.asarray(lat, float).ravel())  # [N]
    ids, index = _province_index()
    found = np.full(len(points), -1)
    point_at, shape_at = index.query(points, predicate="intersects")  # [M] each: the (point, shape) pairs
    found[point_at] = ids[shape_at]
    outside = np.flatnonzero(found < 0)
    if tolerance_km > 0 and len(outside):
        near_point, near_shape = index.query_nearest(
            points[outside], max_distance=tolerance_km / KM_PER_DEG_LAT, all_matches=False
        )
        found[outside[near_point]] = ids[near_shape]
    return found
