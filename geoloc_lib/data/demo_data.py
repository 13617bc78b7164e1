"""Deterministic synthetic street-level photos of Pakistan for the demo and the tests.

Locations are drawn around real towns (geoloc_lib/resources/places_pk.csv, from GeoNames, CC BY 4.0) with the real
province imbalance, each inside its town's province (none in the sea off Karachi, none across a border). Each JPEG is a crude scene whose content depends on where it was "taken":

- the ground palette follows the province and region (sand in the south, irrigated green in Punjab
  and along the Indus, rock and snow in the north), and the snow line falls as latitude rises;
- smooth colour gradients follow lat/lon, and the sun's position and a road's angle follow
  lat/lon on a ~1 degree period (so the position inside a cell is visible);
- the number and height of buildings follow the local population;
- every photo gets a random camera (horizon height and tilt, zoom, exposure) and sensor noise.

Province, cell and in-cell position are therefore all learnable from pixels, and none trivially.

The test split holds out whole location blocks (`test_block_km`), so a test photo stands where no training photo
does, as it would for photos of a new place.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geoloc_lib.base.folder_marks import CELLS_CSV, TEST_CSV, TRAIN_CSV
from geoloc_lib.base.progress import progress_bar
from geoloc_lib.data.splits import location_split
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.borders import province_at
from geoloc_lib.geo.geocell_builder import GeocellConfig, assign_cells, build_geocells
from geoloc_lib.geo.places import load_places
from geoloc_lib.geo.sphere import KM_PER_DEG_LAT, PAKISTAN_BBOX

# Photo counts per province of the GEOPAK dataset (docs/design.md), in province-id order.
REAL_PROVINCE_COUNTS = (65221, 8459, 5344, 4410, 2379, 3627, 1075)

# Ground colour (RGB 0..1) of each province's typical terrain, and a secondary colour mixed in by region.
GROUND = {
    0: ((0.80, 0.70, 0.50), (0.35, 0.55, 0.25)),  # Sindh: desert, irrigated near the Indus
    1: ((0.35, 0.58, 0.25), (0.70, 0.65, 0.40)),  # Punjab: irrigated plain, drier in the south-west
    2: ((0.50, 0.55, 0.32), (0.30, 0.45, 0.25)),  # KPK: olive hills, greener north
    3: ((0.28, 0.50, 0.28), (0.45, 0.45, 0.42)),  # ICT: green with grey urban fabric
    4: ((0.52, 0.50, 0.48), (0.65, 0.60, 0.52)),  # Gilgit-Baltistan: bare rock
    5: ((0.72, 0.58, 0.42), (0.60, 0.50, 0.40)),  # Balochistan: arid plateau
    6: ((0.20, 0.40, 0.22), (0.32, 0.48, 0.28)),  # Azad Kashmir: forested mountains
}
_MOUNTAIN_HEIGHT = {0: 0.02, 1: 0.03, 2: 0.20, 3: 0.15, 4: 0.45, 5: 0.18, 6: 0.32}
_INDUS_LON_SINDH = 68.4


@dataclass
class DemoConfig:
    n_train: int = 3000
    n_test: int = 600
    image_size: int = 96
    min_per_province: int = 40  # floor per province so that rare provinces exist in both splits
    seed: int = 0
    geocell_min_samples: int = 30
    geocell_target_radius_km: float = 50.0
    test_block_km: float = 10.0  # the test split takes whole blocks of this size, as validation and ingest do
    test_buffer_km: float = 1.0  # no training photo within this distance of a test photo (as ingest)
    workers: int = 2


TINY_DEMO = DemoConfig(n_train=320, n_test=96, image_size=48, min_per_province=14, geocell_min_samples=8)


def _province_counts(n: int, floor: int) -> np.ndarray:
    share = np.asarray(REAL_PROVINCE_COUNTS, float) / sum(REAL_PROVINCE_COUNTS)
    counts = np.maximum(np.floor(share * n).astype(int), floor)
    counts[0] += max(0, n - counts.sum())  # Sindh absorbs the remainder
    return counts


def _inside(town: pd.DataFrame, sigma_km: np.ndarray, province_id: int, rng, tries: int = 50):
    """(dy, dx) km [N] each, offsets from the towns drawn again until the photo lies inside the town's own province
    (a coastal town's photos would otherwise stand in the sea, a border town's in the next province); a photo
    still outside after `tries` draws stands at its town."""
    lat0, lon0 = town["latitude"].to_numpy(), town["longitude"].to_numpy()
    dy, dx = np.zeros((2, len(town)))
    todo = np.arange(len(town))
    for _ in range(tries):
        dy[todo], dx[todo] = rng.normal(size=(2, len(todo))) * sigma_km[todo]
        lat = lat0[todo] + dy[todo] / KM_PER_DEG_LAT
        lon = lon0[todo] + dx[todo] / (KM_PER_DEG_LAT * np.cos(np.deg2rad(lat)))
        todo = todo[province_at(lat, lon) != province_id]
        if not len(todo):
            break
    dy[todo] = dx[todo] = 0.0
    return dy, dx


def sample_locations(n: int, floor: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw photo locations around towns: province by real share, town by population^0.6."""
    places = load_places()
    frames = []
    for p, count in zip(prov.PROVINCES, _province_counts(n, floor), strict=True):
        own = places[places["province_id"] == p.id]
        weight = np.maximum(own["population"].to_numpy(float), 500.0) ** 0.6
        pick = rng.choice(len(own), size=count, p=weight / weight.sum())
        town = own.iloc[pick]
        pop = town["population"].to_numpy(float).clip(500)
        # urban spread grows with town size; a quarter of photos are rural, far from the centre
        sigma_km = np.where(rng.random(count) < 0.25, 25.0, 2.0 + 1.5 * np.log10(pop / 500 + 1))
        dy, dx = _inside(town, sigma_km, p.id, rng)
        lat = town["latitude"].to_numpy() + dy / KM_PER_DEG_LAT
        lon = town["longitude"].to_numpy() + dx / (KM_PER_DEG_LAT * np.cos(np.deg2rad(lat)))
        dist = np.hypot(dx, dy)
        frames.append(
            pd.DataFrame(
                {
                    "latitude": np.clip(lat, PAKISTAN_BBOX["lat_min"], PAKISTAN_BBOX["lat_max"]).round(6),
                    "longitude": np.clip(lon, PAKISTAN_BBOX["lon_min"], PAKISTAN_BBOX["lon_max"]).round(6),
                    "province": p.name,
                    "province_id": p.id,
                    "town": town["name"].to_numpy(),
                    # people per "view": the town's population fading with distance from its centre
                    "local_population": (pop * np.exp(-dist / (3 * sigma_km.clip(3)))).round(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _paint_mountains(
    img, xx, yy, horizon_at_x, province_id: int, lat: float, rng: np.random.Generator
) -> None:
    """Mountains in place: height by province and latitude, snow above a line that falls northwards."""
    mountain_h = _MOUNTAIN_HEIGHT[province_id] * (1 + 0.15 * (lat - 30)) * rng.uniform(0.7, 1.3)
    ridge = np.zeros(xx.shape[1])
    for _ in range(3):
        centre, width, height = rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0.5, 1.0)
        ridge = np.maximum(ridge, height * mountain_h * np.clip(1 - np.abs(xx[0] - centre) / width, 0, 1))
    mountain = (yy < horizon_at_x) & (yy > horizon_at_x - ridge[None, :])
    snow_line = 0.8 - 0.09 * max(0.0, lat - 33.0)  # fraction of a peak's height under the snow
    snowy = mountain & (yy < horizon_at_x - snow_line * ridge[None, :])
    img[mountain] = np.array([0.42, 0.40, 0.40])
    img[snowy] = np.array([0.95, 0.95, 0.97])


def _paint_buildings(
    img, xx, yy, horizon, horizon_at_x, local_population: float, rng: np.random.Generator
) -> None:
    """Buildings in place: their count and height follow the local population."""
    n_buildings = int(np.clip(np.log10(local_population + 1) * 2 - 4 + rng.normal(0, 1), 0, 12))
    for _ in range(n_buildings):
        left, width = rng.uniform(0, 0.95), rng.uniform(0.04, 0.12)
        height = rng.uniform(0.05, 0.08) * (1 + np.log10(local_population + 10) / 3)
        shade = rng.uniform(0.55, 0.85) * np.array([1.0, 0.95, 0.85])
        block = (xx >= left) & (xx < left + width) & (yy < horizon_at_x + 0.02) & (yy > horizon - height)
        img[block] = shade


def render_scene(
    lat: float,
    lon: float,
    province_id: int,
    local_population: float,
    size: int,
    rng: np.random.Generator,
    ground: tuple | None = None,
) -> np.ndarray:
    """[size, size, 3] uint8 crude street-level scene for one location; `ground` (two RGB colours, 0..1) paints
    the ground instead of the province's (`evaluate/strangers.street_strangers`: the same layout, another world)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)  # [H, W] in 0..1, y down
    base, other = (np.array(c) for c in (ground or GROUND[province_id]))
    # regional mix: Sindh greens near the Indus, other provinces vary north-south
    if province_id == 0:
        mix = math.exp(-(((lon - _INDUS_LON_SINDH) / 0.6) ** 2))
    else:
        mix = (
            0.5 + 0.5 * math.tanh((lat - 31.0) / 2.0) if province_id in (1, 2) else 0.5 + 0.3 * math.sin(lon)
        )
    ground = (1 - mix) * base + mix * other
    ground = ground + 0.06 * np.array([math.sin(lat * 1.3), math.cos(lon * 1.1), math.sin((lat + lon) * 0.9)])

    # camera: horizon height, tilt, exposure
    horizon = 0.45 + rng.normal(0, 0.05) + 0.08 * math.sin(2 * math.pi * lat)  # [0..1] from the top
    tilt = rng.normal(0, 0.06)
    horizon_at_x = horizon + tilt * (xx - 0.5)
    sky_top = np.array([0.35, 0.55, 0.85]) + 0.12 * np.array([math.sin(lon * 0.8), 0.0, -math.sin(lon * 0.8)])
    sky = sky_top[None, None] * (1 - 0.4 * yy[..., None]) + 0.35 * yy[..., None]
    img = sky.copy()

    # sun: position follows lat/lon on a 1-degree period (in-cell position cue)
    sun_x = 0.5 + 0.35 * math.sin(2 * math.pi * lon)
    sun_y = 0.12 + 0.08 * math.cos(2 * math.pi * lat)
    sun = np.exp(-((xx - sun_x) ** 2 + (yy - sun_y) ** 2) / 0.004)
    img = img + sun[..., None] * np.array([1.0, 0.9, 0.6])

    _paint_mountains(img, xx, yy, horizon_at_x, province_id, lat, rng)

    # ground with a road whose angle follows lat/lon
    below = yy >= horizon_at_x
    img[below] = ground * (0.8 + 0.4 * (yy[below] - horizon))[:, None]
    road_dir = math.sin(2 * math.pi * (lat + lon) / 1.3)
    road_centre = 0.5 + road_dir * (yy - horizon_at_x) * 1.2
    road = below & (np.abs(xx - road_centre) < 0.04 + 0.25 * (yy - horizon_at_x))
    img[road] = np.array([0.35, 0.35, 0.37])

    _paint_buildings(img, xx, yy, horizon, horizon_at_x, local_population, rng)

    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.035, img.shape)  # exposure and sensor noise
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _render_chunk(args) -> None:
    rows, size, seed, out_dir = args
    for index, lat, lon, pid, pop, rel_path in rows:
        rng = np.random.default_rng([seed, index])
        # render 25% larger and crop: a random zoom and framing per photo
        big = int(size * 1.25)
        pixels = render_scene(lat, lon, pid, pop, big, rng)
        crop = int(big * rng.uniform(0.8, 1.0))
        top, left = rng.integers(0, big - crop + 1, size=2)
        image = Image.fromarray(pixels[top : top + crop, left : left + crop]).resize((size, size))
        image.save(out_dir / rel_path, quality=88)


def demo_photos(cfg: DemoConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """(the photo rows [N], is_test [N] bool) of a demo dataset, before any pixel is drawn; training photos within
    `test_buffer_km` of a test photo are not among them."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_train + cfg.n_test
    df = sample_locations(n, cfg.min_per_province, rng)
    df.insert(0, "id", [f"pk{i:06d}" for i in range(len(df))])
    df.insert(1, "image", [f"images/pk{i:06d}.jpg" for i in range(len(df))])
    # whole location blocks go to test, per province (the split of ingest and of validation): a test photo
    # never has a training photo from its own block, as a photo from a new place would not
    train_rows, test_rows = location_split(
        df, cfg.n_test / n, cfg.test_block_km, cfg.seed, cfg.test_buffer_km
    )
    df = df[df.index.isin(train_rows.index) | df.index.isin(test_rows.index)].reset_index(drop=True)
    return df, df["id"].isin(test_rows["id"]).to_numpy()


def generate_demo_dataset(out_dir: str | os.PathLike, config: DemoConfig | None = None) -> Path:
    """Write images/, train.csv, test.csv and cell_metadata.csv into `out_dir`; returns it."""
    cfg = config or DemoConfig()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    df, is_test = demo_photos(cfg)
    rows = list(
        zip(
            range(len(df)),
            df["latitude"],
            df["longitude"],
            df["province_id"],
            df["local_population"],
            df["image"],
            strict=True,
        )
    )
    chunks = [(rows[i : i + 64], cfg.image_size, cfg.seed, out_dir) for i in range(0, len(rows), 64)]
    with ProcessPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        list(progress_bar(pool.map(_render_chunk, chunks), total=len(chunks), desc="render demo photos"))

    train, test = df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)
    cells = build_geocells(
        train,
        GeocellConfig(
            min_samples=cfg.geocell_min_samples, target_radius_km=cfg.geocell_target_radius_km, seed=cfg.seed
        ),
    )
    train["cell_id"] = assign_cells(train, cells)
    test["cell_id"] = assign_cells(test, cells)
    columns = ["id", "image", "latitude", "longitude", "province", "province_id", "cell_id", "town"]
    train[columns].to_csv(out_dir / TRAIN_CSV, index=False)
    test[columns].to_csv(out_dir / TEST_CSV, index=False)
    cells.to_csv(out_dir / CELLS_CSV, index=False)
    pd.Series(asdict(cfg)).to_json(out_dir / "demo_config.json", indent=1)
    return out_dir


DEMO_PRESETS = {"default": DemoConfig(), "tiny": TINY_DEMO}
