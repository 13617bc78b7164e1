import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.path import Path as MatplotlibPath
from sklearn.metrics.pairwise import haversine_distances

from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_at
from geoloc_lib.geo.places import PLACES_CSV
from geoloc_lib.geo.sphere import EARTH_RADIUS_KM, haversine_km, km_to_deg


def test_haversine_matches_sklearn_numpy_and_torch():
    rng = np.random.default_rng(1)
    a = np.stack([rng.uniform(23, 37, 50), rng.uniform(60, 78, 50)], 1)
    b = np.stack([rng.uniform(23, 37, 50), rng.uniform(60, 78, 50)], 1)
    expected = haversine_distances(np.deg2rad(a), np.deg2rad(b)) * EARTH_RADIUS_KM
    ours = haversine_km(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-6)
    t = haversine_km(*(torch.tensor(v, dtype=torch.float64) for v in (a[:, 0], a[:, 1], b[:, 0], b[:, 1])))
    np.testing.assert_allclose(t.numpy(), np.diag(expected), rtol=1e-9, atol=1e-6)


def test_haversine_known_distance_and_zero_gradient_is_finite():
    # Karachi -> Lahore is about 1030 km
    assert haversine_km(24.8607, 67.0011, 31.5204, 74.3587) == pytest.approx(1030, abs=15)
    lat = torch.tensor([30.0], requires_grad=True)
    haversine_km(lat, torch.tensor([70.0]), torch.tensor([30.0]), torch.tensor([70.0])).sum().backward()
    assert torch.isfinite(lat.grad).all()


def test_km_to_deg():
    dlat, dlon = km_to_deg(np.array([111.19]), np.array([60.0]))
    assert dlat[0] == pytest.approx(1.0, rel=1e-3)
    assert dlon[0] == pytest.approx(2.0, rel=1e-3)  # cos(60 deg) = 0.5


def test_province_table_matches_design():
    assert prov.PROVINCE_NAMES == (
        "Sindh",
        "Punjab",
        "Khyber Pakhtunkhwa",
        "ICT",
        "Gilgit-Baltistan",
        "Balochistan",
        "Azad Kashmir",
    )
    tau = {p.key: p.tau_km for p in prov.PROVINCES}
    assert tau == {"sindh": 30, "punjab": 60, "kpk": 50, "ict": 10, "gb": 100, "balochistan": 100, "ajk": 40}
    scale = {p.key: p.offset_scale for p in prov.PROVINCES}
    assert scale == {
        "sindh": 1.0,
        "punjab": 0.6,
        "kpk": 1.0,
        "ict": 0.6,
        "gb": 1.4,
        "balochistan": 1.4,
        "ajk": 1.0,
    }
    assert sum(p.batch_share for p in prov.PROVINCES) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "spelling,name",
    [
        ("KPK", "Khyber Pakhtunkhwa"),
        ("kp", "Khyber Pakhtunkhwa"),
        ("Islamabad", "ICT"),
        ("GB", "Gilgit-Baltistan"),
        ("Gilgit Baltistan", "Gilgit-Baltistan"),
        ("AJK", "Azad Kashmir"),
        ("Azad Jammu & Kashmir", "Azad Kashmir"),
        (" sindh ", "Sindh"),
        ("Baluchistan", "Balochistan"),
    ],
)
def test_aliases_normalise(spelling, name):
    assert prov.lookup(spelling).name == name


def test_unknown_province_lists_spellings():
    with pytest.raises(prov.UnknownProvinceError, match="Accepted spellings: Sindh"):
        prov.lookup("Kashmir Valley")


SHARED_BORDERS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "geoBoundaries-PAK-ADM1_simplified.geojson"
)


def test_known_towns_fall_in_their_provinces_on_the_bundled_borders():
    towns = {  # (lat, lon) of each province's main town
        "Sindh": (24.86, 67.01),  # Karachi
        "Punjab": (31.55, 74.34),  # Lahore
        "Khyber Pakhtunkhwa": (34.01, 71.58),  # Peshawar
        "Islamabad Capital Territory": (33.69, 73.06),  # Islamabad
        "Gilgit-Baltistan": (35.92, 74.31),  # Gilgit
        "Balochistan": (30.18, 66.99),  # Quetta
        "Azad Kashmir": (34.37, 73.47),  # Muzaffarabad
    }
    lat, lon = np.array(list(towns.values())).T
    found = [prov.by_id(i).name for i in province_at(lat, lon)]
    assert found == [prov.lookup(name).name for name in towns]
    assert province_at([51.5], [-0.13]).tolist() == [-1]  # London


def test_the_bundled_places_agree_with_the_borders_and_with_geoboundaries():
    places = pd.read_csv(PLACES_CSV)
    found = province_at(places["latitude"], places["longitude"])
    own = places["province"].map(lambda s: prov.lookup(s).id).to_numpy()
    assert (found == own).mean() >= 0.98
    if not SHARED_BORDERS.is_file():
        pytest.skip("the reference geoBoundaries file (shared/data) is not here")
    reference = json.loads(SHARED_BORDERS.read_text())
    points = np.column_stack([places["longitude"], places["latitude"]])
    theirs = np.full(len(places), -1)
    for feature in reference["features"]:
        g = feature["geometry"]
        polygons = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        inside = np.zeros(len(places), bool)
        for polygon in polygons:
            inside |= MatplotlibPath(np.asarray(polygon[0])).contains_points(points)
        theirs[inside & (theirs < 0)] = prov.lookup(feature["properties"]["shapeName"]).id
    assert (found == theirs).mean() >= 0.98
