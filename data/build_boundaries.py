"""Maintainer script: rebuild geoloc_lib/resources/boundaries/pakistan_adm1.geojson from Natural Earth.

The source is the `states_provinces` layer of `world_map.gpkg` in Debian's `qgis-common` package (Natural Earth
1:10m Admin 1 - States, Provinces v4.1.0, generalised by QGIS; public domain). Its Pakistan has eight units
under older names: F.A.T.A. is merged into Khyber Pakhtunkhwa (as in 2018), and the names are mapped to the
contract's. Needs shapely (a dependency of the package) and the package's file:

    apt-get install qgis-common                      # or, without its dependencies:
    apt-get download qgis-common && dpkg-deb -x qgis-common_*.deb /tmp/qgis
    python data/build_boundaries.py [/tmp/qgis]/usr/share/qgis/resources/data/world_map.gpkg
"""

import json
import sqlite3
import sys
from pathlib import Path

from shapely import from_wkb, set_precision, unary_union
from shapely.geometry import mapping

DEFAULT_GPKG = "/usr/share/qgis/resources/data/world_map.gpkg"
OUT = (
    Path(__file__).resolve().parent.parent
    / "geoloc_lib"
    / "resources"
    / "boundaries"
    / "pakistan_adm1.geojson"
)
# Natural Earth's names -> the contract's province names (F.A.T.A. joined Khyber Pakhtunkhwa in 2018)
NAMES = {
    "Sind": "Sindh",
    "Punjab": "Punjab",
    "K.P.": "Khyber Pakhtunkhwa",
    "F.A.T.A.": "Khyber Pakhtunkhwa",
    "F.C.T.": "Islamabad Capital Territory",
    "Northern Areas": "Gilgit-Baltistan",
    "Baluchistan": "Balochistan",
    "Azad Kashmir": "Azad Kashmir",
}
PRECISION_DEG = 1e-4  # about 11 m: far finer than the generalised borders


def gpkg_geometry(blob: bytes):
    """A GeoPackage geometry blob (header, optional envelope, then WKB) as a shapely geometry."""
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    return from_wkb(blob[8 + envelope :])


def main(gpkg: str = DEFAULT_GPKG) -> None:
    rows = sqlite3.connect(gpkg).execute("select name, geom from states_provinces where adm0_a3 = 'PAK'")
    parts: dict[str, list] = {}
    for name, blob in rows:
        parts.setdefault(NAMES[name], []).append(gpkg_geometry(blob))
    features = [
        {
            "type": "Feature",
            "properties": {"shapeName": province, "source": "Natural Earth 10m admin-1 v4.1.0 (qgis-common)"},
            "geometry": mapping(set_precision(unary_union(shapes), PRECISION_DEG)),
        }
        for province, shapes in sorted(parts.items())
    ]
    assert len(features) == 7, sorted(parts)
    OUT.write_text(
        json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")) + "\n"
    )
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes, {len(features)} provinces)")


if __name__ == "__main__":
    main(*sys.argv[1:])
