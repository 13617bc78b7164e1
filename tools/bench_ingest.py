"""Ingest benchmark: a folder of GEOPAK's size (90,000 geotagged JPEGs) through `geoloc-ingest`.

    python -m tools.bench_ingest                    # 90,000 photos (make bench-ingest)
    python -m tools.bench_ingest --photos 10000     # a quick look

The photos are written as a phone writes them: a JPEG whose EXIF carries the GPS position (degrees, minutes,
seconds) and the capture time, placed around the bundled towns of Pakistan with the shares of their
provinces, one sub-folder per 1,000. Each photo's EXIF is spliced into one encoded 320 x 240 image (about 30 KB,
so the EXIF sits where it does in a camera file and the duplicate check has real prefixes to hash). 1 % have no
GPS, 0.5 % are byte copies of another photo, and 0.5 % are bursts.

It prints the time of the EXIF read alone (photos per second, every core) and of the whole ingest (reading,
judging, the split, the geocells and the writing), with the outcome counts. Then the same photos again with a
stuck camera clock (every photo's capture time in one minute, the worst case of the burst check), and the
two whole-ingest times side by side. The files are in the page cache
when they are read (they were just written); a first read from a cold disk is slower by the disk's speed.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from geoloc_lib.data.dataset_builder import IngestConfig, ingest
from geoloc_lib.data.photo_exif import geotag, read_facts
from geoloc_lib.geo.places import load_places

PER_FOLDER = 1000
SPREAD_DEG = 0.1  # photos lie within about 10 km of their town (a few near a border fall outside)


def _base_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _with_exif(jpeg: bytes, exif: Image.Exif) -> bytes:
    """The JPEG with an APP1 EXIF segment right after its start marker, where cameras put it."""
    payload = b"Exif\x00\x00" + exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _write_block(job: tuple[str, int, np.ndarray, bool]) -> None:
    folder, start, rows, stuck = (
        job  # rows: [n, 3] latitude, longitude, kind (0 photo, 1 no GPS, 2 copy, 3 burst)
    )
    base = _base_jpeg()
    os.makedirs(folder, exist_ok=True)
    for offset, (lat, lon, kind) in enumerate(rows):
        index = start + offset
        name = os.path.join(folder, f"IMG_{index:06d}.jpg")
        minute = index if kind != 3 else index - 1  # a burst repeats the photo before it, in the same minute
        minute = 0 if stuck else minute  # a stuck clock: every photo in the first minute
        stamp = (np.datetime64("2024-01-01T00:00") + np.timedelta64(int(minute), "m")).astype(str)
        exif = Image.Exif() if kind == 1 else geotag(lat, lon, stamp.replace("T", " ") + ":00")
        data = _with_exif(base, exif)
        if kind == 2:
            data = Path(os.path.join(folder, f"IMG_{index - 1:06d}.jpg")).read_bytes()
        with open(name, "wb") as f:
            f.write(data)


def write_photos(root: Path, n: int, seed: int = 0, stuck_clock: bool = False) -> None:
    rng = np.random.default_rng(seed)
    places = load_places()
    town = rng.choice(len(places), n, p=places["population"] / places["population"].sum())
    lat = places["latitude"].to_numpy()[town] + rng.uniform(-SPREAD_DEG, SPREAD_DEG, n)
    lon = places["longitude"].to_numpy()[town] + rng.uniform(-SPREAD_DEG, SPREAD_DEG, n)
    kind = rng.choice(4, n, p=[0.98, 0.01, 0.005, 0.005])
    kind[::PER_FOLDER] = 0  # the first photo of a folder is never a copy or burst of the previous folder's
    lat[kind == 3] = np.roll(lat, 1)[kind == 3] + 1e-4  # 11 m from the photo before
    lon[kind == 3] = np.roll(lon, 1)[kind == 3]
    rows = np.column_stack([lat, lon, kind])
    jobs = [
        (str(root / f"{start // PER_FOLDER:03d}"), start, rows[start : start + PER_FOLDER], stuck_clock)
        for start in range(0, n, PER_FOLDER)
    ]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_block, jobs))


def main(argv=None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--photos", type=int, default=90_000)
    cli.add_argument(
        "--workdir", help="where to write the photos (default: a temporary folder, removed after)"
    )
    args = cli.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        whole = {}
        for case in ("normal", "stuck clock"):
            whole[case] = _bench(work, args.photos, case == "stuck clock")
        print(
            f"stuck clock against normal: {whole['stuck clock']:.1f} s against {whole['normal']:.1f} s "
            f"({whole['stuck clock'] / whole['normal']:.2f}x) for {args.photos:,} photos"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, photos: int, stuck_clock: bool) -> float:
    """Write the photos, time the EXIF read and the whole ingest, print both; returns the whole ingest's seconds."""
    shutil.rmtree(work / "photos", ignore_errors=True)  # one case's photos at a time (about 5 GB at 90,000)
    shutil.rmtree(work / "data", ignore_errors=True)
    print(
        f"--- {'a stuck clock: every photo taken in one minute' if stuck_clock else 'normal capture times'}"
    )
    started = time.perf_counter()
    write_photos(work / "photos", photos, stuck_clock=stuck_clock)
    paths = sorted(str(p) for p in (work / "photos").rglob("*.jpg"))
    size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"wrote {len(paths)} photos ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    read_facts(paths)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    result = ingest(work / "photos", work / "data", IngestConfig())
    total_s = time.perf_counter() - started
    print(result.counts.to_string())
    print(f"EXIF read alone: {read_s:.1f} s, {len(paths) / read_s:,.0f} photos/s on {os.cpu_count()} cores")
    print(f"whole ingest:    {total_s:.1f} s, {len(paths) / total_s:,.0f} photos/s")
    return total_s


if __name__ == "__main__":
    main()
