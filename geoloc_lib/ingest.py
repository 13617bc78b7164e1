"""Command line: a folder of geotagged photos becomes a data folder (`geoloc-ingest`, or `python -m geoloc_lib.ingest`)

    geoloc-ingest ~/Pictures/pakistan data/my_photos
    geoloc-ingest photos.csv data/my_photos --image-column file --latitude-column lat --longitude-column lon

It reads each photo's GPS position from its EXIF (or takes it from the CSV), gives it its province from the
bundled borders, rejects what cannot be used with a reason (data_dir/ingest_report.csv), splits train and test by
location and builds geocells on the training photos. The photos are never modified or copied. Exit status: 0 on
success, 2 when nothing was written (the message says why).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from geoloc_lib.base.command_line import CommandParser, run_command
from geoloc_lib.data.dataset_builder import IngestConfig, ingest, option_flag

PROG = "geoloc-ingest"

OPTION_HELP = {
    "test_fraction": "share of the photos held out as test.csv, by whole location blocks (default 0.1)",
    "block_km": "side in km of the location blocks the split never cuts (default 10)",
    "seed": "seed of the split and the geocells (default 0)",
    "border_tolerance_km": "a photo this close outside Pakistan's border takes the nearest province (0-50, default 5)",
    "burst_m": "photos with the same capture minute within this many metres count as one burst (0-1000, default 50)",
    "geocell_min_samples": "minimum training photos per geocell (at least 2, default 40)",
    "geocell_target_radius_km": "geocells wider than this are split (1-2000, default 50)",
    "test_buffer_km": "training photos this close to a test photo are left out, so that none stands beside one "
    "(0-50, default 1; 0: none)",
    "csv_image_column": "with a CSV source: the column of image paths, relative to the CSV (default image)",
    "csv_latitude_column": "with a CSV source: the latitude column (default latitude)",
    "csv_longitude_column": "with a CSV source: the longitude column (default longitude)",
    "workers": "processes reading EXIF (default 0: every core)",
}


def parser() -> argparse.ArgumentParser:
    cli = CommandParser(prog=PROG, description="Make a data folder of the contract from geotagged photos.")
    cli.add_argument(
        "source", help="a folder of photos (searched recursively) or a CSV of image, latitude, longitude"
    )
    cli.add_argument(
        "out_dir", help="the data folder to write (must not exist, or be empty, unless --overwrite)"
    )
    for field in fields(IngestConfig):
        if field.name == "overwrite":
            continue
        cli.add_argument(
            option_flag(field.name),
            dest=field.name,
            type=type(field.default),
            default=field.default,
            help=OPTION_HELP[field.name],
        )
    cli.add_argument(
        "--overwrite", action="store_true", help="replace an output folder that ingest wrote before"
    )
    return cli


def main(argv=None) -> int:
    args = vars(parser().parse_args(argv))
    source, out_dir = args.pop("source"), args.pop("out_dir")

    def body() -> None:
        result = ingest(
            source, out_dir, IngestConfig(**args)
        )  # the settings are checked before any photo is read
        print(result.counts.to_string())
        print(
            f"wrote {result.data_dir} (train.csv, test.csv, cell_metadata.csv; rejected files in ingest_report.csv)"
        )

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
