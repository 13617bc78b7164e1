"""The bundled places table (GeoNames, see data/README.md): the nearest town of a coordinate, and which towns a
map can name without their labels colliding."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from geoloc_lib.base.resources import RESOURCES
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import EARTH_RADIUS_KM, haversine_km

PLACES_CSV = RESOURCES / "places_pk.csv"


@cache
def _places() -> pd.DataFrame:
    places = pd.read_csv(PLACES_CSV)
    places["province_id"] = places["province"].map(lambda s: prov.lookup(s).id)
    return places


def load_places() -> pd.DataFrame:
    """name, province, province_id, latitude, longitude, population of every bundled place (a copy)."""
    return _places().copy()


NEAREST_CHUNK = 4096  # coordinates per block of the distance table (x 566 places, about 19 MB)


def nearest_places(lat, lon) -> pd.DataFrame:
    """[N] rows: the nearest bundled place of each coordinate (`nearest_town`) and its distance (`town_km`).

    Every distance to the 566 places, in blocks: a search tree would cost more to import (scikit-learn takes
    about a second to load, most of a short prediction's start-up) than the search costs without one.
    """
    lat, lon = np.asarray(lat, float).ravel(), np.asarray(lon, float).ravel()
    places = _places()
    place_lat, place_lon = places["latitude"].to_numpy()[None], places["longitude"].to_numpy()[None]  # [1, P]
    index, distance = np.zeros(len(lat), dtype=int), np.zeros(len(lat))
    for start in range(0, len(lat), NEAREST_CHUNK):
        part = slice(start, start + NEAREST_CHUNK)
        km = haversine_km(lat[part, None], lon[part, None], place_lat, place_lon)  # [n, P]
        index[part] = km.argmin(axis=1)
        distance[part] = km[np.arange(len(km)), index[part]]
    return pd.DataFrame({"nearest_town": places["name"].to_numpy()[index], "town_km": distance})


def map_labels(count: int, min_gap_km: float) -> pd.DataFrame:
    """The `count` places whose labels can share a country-scale map: each province's largest place first
    (Islamabad for its territory, Gilgit for Gilgit-Baltistan), then by population; one place per name (the
    larger of two Sahiwals), and none within `min_gap_km` of one already labelled (Rawalpindi beside
    Islamabad would print over it)."""
    places = _places().sort_values("population", ascending=False).drop_duplicates("name")
    first = ~places.duplicated("province_id")  # the largest of its province
    places = pd.concat([places[first], places[~first]])
    from sklearn.neighbors import BallTree  # here: the prediction path never needs scikit-learn

    chosen: list[int] = []
    coords = np.deg2rad(places[["latitude", "longitude"]].to_numpy())
    for i in range(len(places)):
        if chosen:
            taken = BallTree(coords[chosen], metric="haversine")
            if taken.query(coords[i : i + 1], k=1)[0][0, 0] * EARTH_RADIUS_KM < min_gap_km:
                continue
        chosen.append(i)
        if len(chosen) == count:
            break
    return places.iloc[chosen].reset_index(drop=True)
