"""The pieces that make accuracy claims honest: location-disjoint splits, the baseline ladder, the
geometric median, retrieval refinement, the learning-rate schedule and feature standardisation."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize

from geoloc_lib.data.splits import location_blocks, location_split
from geoloc_lib.evaluate.baselines import baseline_ladder, knn_prediction, nearest_neighbours, standardized
from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.geo.sphere import geometric_median, haversine_km
from geoloc_lib.model.head_config import HeadConfig
from geoloc_lib.model.heads import GeoHeads
from geoloc_lib.model.retrieval import RetrievalIndex
from geoloc_lib.train.schedule import lr_at

TOWNS = {  # (lat, lon, province_id): four well separated places
    "Karachi": (24.86, 67.01, 0),
    "Lahore": (31.55, 74.34, 1),
    "Peshawar": (34.01, 71.58, 2),
    "Quetta": (30.18, 66.98, 5),
}


def _photos(n_per_town=60, spread_deg=0.3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name, (lat, lon, pid) in TOWNS.items():
        for _ in range(n_per_town):
            rows.append((name, lat + rng.normal(0, spread_deg), lon + rng.normal(0, spread_deg), pid))
    return pd.DataFrame(rows, columns=["town", "latitude", "longitude", "province_id"])


def test_location_split_keeps_every_block_on_one_side():
    photos = _photos()
    kept, held = location_split(photos, fraction=0.2, block_km=10.0, seed=3)
    assert len(kept) + len(held) == len(photos) and not set(kept.index) & set(held.index)
    blocks = pd.Series(location_blocks(photos["latitude"], photos["longitude"], 10.0), index=photos.index)
    assert not set(blocks[kept.index]) & set(blocks[held.index])  # no block on both sides
    assert 0.1 < len(held) / len(photos) < 0.3
    assert set(kept["province_id"]) == set(photos["province_id"])  # every province keeps training rows


def _closest_km(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The smallest distance between a photo of `a` and one of `b`, by brute force over every pair."""
    from geoloc_lib.geo.sphere import haversine_km

    return min(
        haversine_km(r.latitude, r.longitude, b["latitude"], b["longitude"]).min() for r in a.itertuples()
    )


def test_the_buffer_leaves_no_kept_photo_within_reach_of_a_held_out_one():
    photos = _photos(spread_deg=0.05)  # dense towns: blocks meet inside them
    kept, held = location_split(photos, fraction=0.2, block_km=10.0, seed=3)
    assert _closest_km(held, kept) < 1.0  # blocks alone leave neighbours across a block border
    kept1, held1 = location_split(photos, fraction=0.2, block_km=10.0, seed=3, buffer_km=1.0)
    assert held1.equals(held) and _closest_km(held1, kept1) >= 1.0
    # exactly the kept photos within 1 km of a held-out one are gone
    dropped = kept.loc[~kept.index.isin(kept1.index)]
    assert len(dropped) > 0 and all(_closest_km(dropped.loc[[i]], held) < 1.0 for i in dropped.index)
    assert _closest_km(kept1, held) >= 1.0


def test_the_demo_and_its_validation_split_keep_1_km_between_sides(tiny_data):
    from geoloc_lib.data.audit import nearest_training_photo
    from geoloc_lib.data.contract import load_dataset
    from geoloc_lib.geo.borders import province_at

    data = load_dataset(tiny_data)
    assert _closest_km(data.test, data.train) >= 1.0  # no test photo has a training photo within 1 km
    both = pd.concat(
        [data.train, data.test]
    )  # and every photo stands inside its own province: none in the sea
    assert (province_at(both["latitude"], both["longitude"]) == both["province_id"]).all()
    table = nearest_training_photo(data)
    assert table.loc["nearest training photo", "within 1 km"] == 0
    assert table.loc["nearest training photo", "test photos"] == len(data.test)
    split = data.with_validation(0.1, 10.0, 0, buffer_km=1.0)
    assert _closest_km(split.val, split.train) >= 1.0
    assert split.buffered == len(data.train) - len(split.train) - len(split.val)


def test_location_blocks_are_block_km_wide():
    # two points 8 km apart north-south share a 10 km block or sit in neighbouring ones, never further
    lat = np.array([30.0, 30.0 + 8 / 111.195, 30.0 + 25 / 111.195])
    blocks = location_blocks(lat, np.full(3, 70.0), block_km=10.0)
    assert blocks[2] not in (blocks[0], blocks[1])  # 25 km away: another block
    row = np.floor(lat * 111.195 / 10.0)
    assert row[1] - row[0] <= 1 and row[2] - row[0] >= 2


def test_a_province_with_a_single_block_stays_in_training():
    photos = _photos()
    photos.loc[photos["town"] == "Quetta", ["latitude", "longitude"]] = (30.18, 66.98)  # one block only
    for seed in range(5):
        kept, _ = location_split(photos, fraction=0.5, block_km=10.0, seed=seed)
        assert (kept["province_id"] == 5).sum() == 60


def test_geometric_median_against_a_numerical_minimiser():
    rng = np.random.default_rng(1)
    lat = 30 + rng.normal(0, 0.5, 7)
    lon = 70 + rng.normal(0, 0.5, 7)
    lat[0], lon[0] = 33.0, 74.0  # an outlier pulls the mean, not the median

    def total(p):
        return haversine_km(p[0], p[1], lat, lon).sum()

    best = minimize(
        total, x0=[lat.mean(), lon.mean()], method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-9}
    )
    mlat, mlon = geometric_median(lat[None], lon[None])
    assert haversine_km(mlat[0], mlon[0], *best.x) < 0.05  # km
    assert total([mlat[0], mlon[0]]) <= best.fun + 0.01  # chord and arc orders agree to metres here
    # three points: the median of a thin triangle is its vertex at the obtuse angle (> 120 degrees)
    tri_lat, tri_lon = np.array([[30.0, 30.0, 30.01]]), np.array([[70.0, 71.0, 70.5]])
    mlat, mlon = geometric_median(tri_lat, tri_lon)
    assert haversine_km(mlat[0], mlon[0], 30.01, 70.5) < 0.05


def test_nearest_neighbours_find_the_right_place_on_separable_features():
    photos = _photos(n_per_town=30)
    rng = np.random.default_rng(2)
    town_codes = {name: rng.normal(0, 1, 16) for name in TOWNS}  # one feature direction per town
    features = np.stack([town_codes[t] + rng.normal(0, 0.1, 16) for t in photos["town"]]).astype(np.float32)
    train, query = photos.iloc[::2], photos.iloc[1::2]
    neighbours = nearest_neighbours(*standardized(features[::2], features[1::2]), k=5)
    assert (train["town"].to_numpy()[neighbours] == query["town"].to_numpy()[:, None]).all()
    prediction = knn_prediction(train, neighbours)
    errors = haversine_km(
        query["latitude"].to_numpy(), query["longitude"].to_numpy(), prediction["lat"], prediction["lon"]
    )
    assert np.median(errors) < 60  # within the town's spread (0.3 deg ~ 33 km), never another town (> 300 km)
    assert errors.max() < 200


def test_the_ladder_ranks_learned_baselines_above_the_constant(tmp_path):
    photos = _photos(n_per_town=40).assign(id=lambda d: d.index.astype(str))
    cells = pd.DataFrame(
        [(i, pid, lat, lon) for i, (lat, lon, pid) in enumerate(TOWNS.values())],
        columns=["cell_id", "province_id", "center_lat", "center_lon"],
    )
    photos["cell_id"] = photos["town"].map({name: i for i, name in enumerate(TOWNS)})
    rng = np.random.default_rng(4)
    codes = rng.normal(0, 1, (4, 8))
    feats = torch.tensor(codes[photos["cell_id"]] + rng.normal(0, 0.2, (len(photos), 8)), dtype=torch.float32)
    features = {"clip": feats[:, :4], "scene": feats[:, 4:]}
    train, test = photos.iloc[::2], photos.iloc[1::2]
    half = {k: v[::2] for k, v in features.items()}, {k: v[1::2] for k, v in features.items()}
    ladder = baseline_ladder(half[0], train, half[1], test, cells)
    constant, one_nn, five_nn, logistic = ladder["median_error_km"]
    assert constant > 300 and max(one_nn, five_nn, logistic) < 60  # each learned rung finds the town
    assert ladder.iloc[3]["province_acc"] == 100  # the cell classifier is perfect on separable codes


def _tiny_cells():
    rows = [(10, 0, 24.9, 67.0, 20, "12"), (12, 0, 24.9, 67.4, 20, "10"), (30, 1, 31.5, 74.3, 30, "")]
    frame = pd.DataFrame(
        rows, columns=["cell_id", "province_id", "center_lat", "center_lon", "radius_km", "neighbor_cell_ids"]
    )
    return CellTable(frame)


def test_retrieval_moves_to_the_most_similar_photo_inside_the_cell_and_its_neighbours():
    cells = _tiny_cells()
    assert cells.neighbourhood.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    heads = GeoHeads(4, 4, cells, HeadConfig(proj_dim=8, geocell_hidden=8, small_geocell_hidden=8)).eval()
    torch.manual_seed(0)
    feats = torch.randn(5, 4)
    train = pd.DataFrame(
        {
            "cell_id": [10, 12, 30, 30, 10],
            "latitude": [24.90, 24.95, 31.50, 31.60, 24.85],
            "longitude": [67.00, 67.40, 74.30, 74.20, 67.05],
        }
    )
    index = RetrievalIndex(heads, {"clip": feats, "scene": feats}, train, k=1)
    with torch.no_grad():
        fused = heads.fuse(feats, feats)[0]
    # photo 2 (cell 30) queried in cell 10: only cells 10 and 12 count, so the best is one of rows 0, 1, 4
    refined, found = index.refine(fused[[2, 3]], cells.flat_index(torch.tensor([10, 30])))
    assert found.all()
    allowed_10 = {(24.90, 67.00), (24.95, 67.40), (24.85, 67.05)}
    assert tuple(np.round(refined[0].tolist(), 2)) in allowed_10
    torch.testing.assert_close(refined[1], torch.tensor([31.60, 74.20]))  # itself: similarity 1


def test_learning_rate_schedule_by_hand():
    assert [lr_at(s, 100, 1.0, "constant", warmup_steps=4) for s in (0, 1, 3, 4, 99)] == [
        0.25,
        0.5,
        1.0,
        1.0,
        1.0,
    ]
    assert lr_at(0, 100, 2.0, "cosine") == pytest.approx(2.0)
    assert lr_at(50, 100, 2.0, "cosine") == pytest.approx(1.0)  # half-way down the cosine
    assert lr_at(100, 100, 2.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(10 + 45, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 2))
    )


def test_standardised_inputs_have_zero_mean_and_unit_std():
    cells = _tiny_cells()
    heads = GeoHeads(4, 6, cells, HeadConfig(proj_dim=8))
    clip, scene = 5 + 0.1 * torch.randn(200, 4), -3 + 2 * torch.randn(200, 6)
    heads.standardize_inputs(clip, scene)
    norm = heads.input_norm
    torch.testing.assert_close(
        ((clip - norm["clip_mean"]) / norm["clip_std"]).mean(0), torch.zeros(4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        ((scene - norm["scene_mean"]) / norm["scene_std"]).std(0), torch.ones(6), atol=1e-5, rtol=0
    )
    assert not any(p.requires_grad for p in norm.parameters())  # never trained


def test_blocks_are_held_out_alike_whatever_their_size():
    """100 blocks of one photo and 100 of five, 22 km apart: over 200 seeds each kind of block is held out at
    the fraction's rate (a split that deals the largest blocks first would favour one kind), and the held-out
    share is the fraction on average."""
    rows = []
    for i in range(200):
        lat, lon = 25.0 + (i // 20) * 0.2 + 0.001, 67.0 + (i % 20) * 0.2 + 0.001
        rows += [(lat, lon, 0, i % 2 == 1)] * (1 if i % 2 else 5)
    photos = pd.DataFrame(rows, columns=["latitude", "longitude", "province_id", "single"])
    single_rate, grouped_rate, share = [], [], []
    for seed in range(200):
        held = location_split(photos, fraction=0.1, block_km=10.0, seed=seed)[1]
        single_rate.append(held["single"].sum() / 100)
        grouped_rate.append((~held["single"]).sum() / 500)
        share.append(len(held) / len(photos))
    # standard errors over 200 seeds: about 0.0025 (single blocks) and 0.0005 (five-photo blocks)
    assert np.mean(single_rate) == pytest.approx(0.1, abs=0.01)
    assert np.mean(grouped_rate) == pytest.approx(0.1, abs=0.01)
    assert np.mean(share) == pytest.approx(0.1, abs=0.002)
