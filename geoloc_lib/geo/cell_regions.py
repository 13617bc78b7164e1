"""The area each geocell stands for: the part of its province nearer its centre than any other centre of that
province, which is how `geocell_builder.assign_cells` gives a photo its cell.

Maps draw these regions rather than a circle of each cell's radius: on small data one cell can hold a whole
province (a 541 km circle over most of the country), and circles overlap their neighbours, while the regions
tile each province. Distances are taken in a local equirectangular projection around each province, which is
within about 2 % of the great-circle ones across a province.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_borders
from geoloc_lib.geo.sphere import project_local_km, unproject_local_km


def _province_shapes() -> dict[int, shapely.Geometry]:
    """{province id: its shape in (lon, lat) degrees}."""
    return {
        prov.lookup(f["properties"]["province"]).id: shapely.geometry.shape(f["geometry"])
        for f in province_borders()["features"]
    }


def cell_regions(cells: pd.DataFrame) -> dict[int, shapely.Geometry]:
    """{cell_id: its region in (lon, lat) degrees} for cell_metadata rows; a province without a border shape
    (a user's own region) gets no regions."""
    shapes, regions = _province_shapes(), {}
    for province_id, group in cells.groupby("province_id"):
        if province_id not in shapes:
            continue
        lat0, lon0 = group["center_lat"].mean(), group["center_lon"].mean()

        def to_km(lonlat: np.ndarray, lat0=lat0, lon0=lon0) -> np.ndarray:  # [N, 2] (lon, lat) -> km
            return project_local_km(lonlat[:, 1], lonlat[:, 0], lat0, lon0)

        def to_degrees(xy: np.ndarray, lat0=lat0, lon0=lon0) -> np.ndarray:
            lat, lon = unproject_local_km(xy, lat0, lon0)
            return np.column_stack([lon, lat])

        province = shapely.transform(shapes[province_id], to_km)
        centres = project_local_km(group["center_lat"], group["center_lon"], lat0, lon0)  # [C, 2]
        if len(group) == 1:
            parts = [province]
        else:
            tiles = shapely.voronoi_polygons(
                shapely.MultiPoint(centres), extend_to=province.envelope.buffer(100), ordered=True
            )
            parts = [tile.intersection(province) for tile in tiles.geoms]
        for cell_id, part in zip(group["cell_id"], parts, strict=True):
            regions[int(cell_id)] = shapely.transform(part, to_degrees)
    return regions
