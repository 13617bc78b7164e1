"""EXIF GPS and capture time: what ingest needs to know of each file, read without decoding a pixel: is it an image, where and when was it
taken (the EXIF GPS position and the capture time), and its size and a hash of its first bytes (to find exact
duplicates without reading whole files).

Pillow parses a JPEG's markers up to the image data and its EXIF block (`Image.getexif`, with the GPS and Exif
sub-IFDs), so a read costs a few hundred microseconds; `read_facts` spreads the files over processes.
`geotag` writes the same tags, as a camera does (the tests and the ingest benchmark use it).
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime

import pandas as pd
from PIL import ExifTags, Image, UnidentifiedImageError

from geoloc_lib.base.progress import progress_bar

PREFIX_BYTES = 64 * 1024  # hashed for every file; a whole file only when its size and prefix hash collide
NOT_AN_IMAGE = "not an image"
UNREADABLE = "unreadable"
FACT_COLUMNS = ("path", "size", "prefix_hash", "problem", "detail", "gps_latitude", "gps_longitude", "taken")
# the first bytes of image formats Pillow may not read (HEIC from phones): such a file is "unreadable", not
# "not an image", so the user converts it instead of discarding it
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif", ".bmp", ".gif", ".dng"}
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4
DATETIME, DATETIME_ORIGINAL, ORIENTATION = 0x0132, 0x9003, 0x0112
SMALL_JOB = 256  # fewer files than this are read in this process: a pool costs more than it saves
CHUNK = 128  # files per task sent to a worker process


def _looks_like_an_image(path: str, prefix: bytes) -> bool:
    heif = prefix[4:8] == b"ftyp" and prefix[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc")
    return heif or prefix.startswith(IMAGE_SIGNATURES) or os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def gps_degrees(value, reference) -> float:
    """Signed decimal degrees of an EXIF GPS coordinate: (degrees, minutes, seconds) or fewer parts, with its
    N/S/E/W reference (south and west are negative, whatever the sign stored). NaN when the values are not
    finite numbers."""
    parts = [float(v) for v in (value if isinstance(value, tuple | list) else (value,))][:3]
    degrees = sum(abs(p) / 60**i for i, p in enumerate(parts))  # the magnitude
    ref = reference.decode("ascii", "replace") if isinstance(reference, bytes) else str(reference or "")
    ref = ref.strip("\x00 ").upper()[:1]
    if not math.isfinite(degrees):
        return math.nan
    # the reference gives the sign; some writers also store south and west as negative numbers, which must
    # not flip it back. Without a reference a stored negative number is south or west.
    if ref in ("S", "W") or (ref not in ("N", "E") and any(p < 0 for p in parts)):
        return -degrees
    return degrees


def _capture_time(exif: Image.Exif) -> str:
    """'YYYY-MM-DD HH:MM:SS' when the photo was taken (DateTimeOriginal), or ''. DateTime is not read: it is
    when the file was last changed, which one batch export sets alike for every photo."""
    text = exif.get_ifd(ExifTags.IFD.Exif).get(DATETIME_ORIGINAL) or ""
    try:
        return datetime.strptime(str(text).strip("\x00 "), "%Y:%m:%d %H:%M:%S").strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:  # absent, or a camera's placeholder such as "0000:00:00 00:00:00"
        return ""


def _gps(exif: Image.Exif) -> tuple[float, float]:
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if GPS_LATITUDE not in gps or GPS_LONGITUDE not in gps:
        return math.nan, math.nan
    return (
        gps_degrees(gps[GPS_LATITUDE], gps.get(GPS_LATITUDE_REF)),
        gps_degrees(gps[GPS_LONGITUDE], gps.get(GPS_LONGITUDE_REF)),
    )


def read_one(path: str) -> tuple:
    """The FACT_COLUMNS of one file. Never raises: a file that cannot be read says why in `problem`."""
    size, prefix, lat, lon, taken = -1, b"", math.nan, math.nan, ""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return (
                    path,
                    size,
                    "",
                    UNREADABLE,
                    "an empty file (0 bytes): copy the photo again",
                    lat,
                    lon,
                    taken,
                )
            prefix = f.read(PREFIX_BYTES)
            f.seek(0)
            try:
                with Image.open(f) as image:
                    exif = image.getexif()
                    taken = _capture_time(exif)
                    lat, lon = _gps(exif)
            except UnidentifiedImageError:
                problem = UNREADABLE if _looks_like_an_image(path, prefix) else NOT_AN_IMAGE
                detail = (
                    "an image format Pillow cannot read (HEIC? save as JPEG)" if problem == UNREADABLE else ""
                )
                return path, size, "", problem, detail or "no image format recognised", lat, lon, taken
    except (OSError, SyntaxError, ValueError, ZeroDivisionError, Image.DecompressionBombError) as err:
        return path, size, "", UNREADABLE, f"{type(err).__name__}: {err}", lat, lon, taken
    digest = hashlib.blake2b(prefix, digest_size=16).hexdigest()
    return path, size, digest, "", "", lat, lon, taken


def file_digest(path: str) -> str:
    """A hash of the whole file (only for files whose size and prefix hash collide)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def read_facts(paths: list[str], workers: int | None = None, desc: str = "read EXIF") -> pd.DataFrame:
    """FACT_COLUMNS of every path, in order, read in `workers` processes (default: every core)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < SMALL_JOB:
        rows = [read_one(p) for p in progress_bar(paths, desc=desc)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(progress_bar(pool.map(read_one, paths, chunksize=CHUNK), total=len(paths), desc=desc))
    return pd.DataFrame(rows, columns=list(FACT_COLUMNS))


def _dms(degrees: float) -> tuple[float, float, float]:
    whole, minutes = int(abs(degrees)), abs(degrees) % 1 * 60
    return float(whole), float(int(minutes)), round(minutes % 1 * 60, 4)


def geotag(latitude: float, longitude: float, taken: str = "", orientation: int = 1) -> Image.Exif:
    """EXIF as a phone writes it: the GPS position in degrees, minutes and seconds with N/S/E/W references,
    the capture time ('YYYY-MM-DD HH:MM:SS', optional) and the orientation tag. Pass it to `Image.save(exif=)`."""
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {
        GPS_LATITUDE_REF: "N" if latitude >= 0 else "S",
        GPS_LATITUDE: _dms(latitude),
        GPS_LONGITUDE_REF: "E" if longitude >= 0 else "W",
        GPS_LONGITUDE: _dms(longitude),
    }
    if taken:
        stamp = taken.replace("-", ":")
        exif[DATETIME] = stamp
        exif[ExifTags.IFD.Exif] = {DATETIME_ORIGINAL: stamp}
    exif[ORIENTATION] = orientation
    return exif
