"""Command line: where were these photos taken? (`geoloc-predict`, or `python -m geoloc_lib.predict`)

    geoloc-predict runs/demo photo1.jpg photo2.jpg
    geoloc-predict runs/demo ~/Pictures/trip --csv predictions.csv      # every photo under a folder
    geoloc-predict runs/demo list.csv --top-k 3                         # the `image` column of a CSV

Photos that are missing or not images are reported on stderr and skipped; the others are predicted. A
problem that stops everything (not a run folder, a Phase 0 run, missing weights, other geocells) prints
one line that names the file and the fix, and the command exits with status 2. Torch and the model are
imported only after the arguments are read, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geoloc_lib.base.command_line import CommandError, CommandParser, positive_int, run_main
from geoloc_lib.model.decode_modes import DECODE_MODES, MODE_HELP

PROG = "geoloc-predict"


def parser() -> argparse.ArgumentParser:
    cli = CommandParser(
        prog=PROG,
        description="Predict where photos were taken in Pakistan with a trained run (Phase 1).",
        epilog="Output: a table on stdout (image, lat, lon, province); with --csv, also every mode's "
        "coordinate and the hypotheses as JSON.",
    )
    cli.add_argument("run_dir", help="a Phase 1 run folder, e.g. runs/demo (written by 03_train_phase1)")
    cli.add_argument(
        "images",
        nargs="+",
        help="photos to place (JPEG, PNG or anything Pillow reads), folders of them (searched recursively), or "
        "CSV files whose `image` column names them (relative to the CSV)",
    )
    cli.add_argument("--image-column", default="image", help="the column of image paths in a CSV input")
    cli.add_argument(
        "--top-k", type=positive_int, default=5, help="hypotheses kept per photo in the CSV (default 5)"
    )
    cli.add_argument("--mode", choices=DECODE_MODES, help=MODE_HELP)
    cli.add_argument(
        "--checkpoint", default="best", help="best (default), last, or a file name in checkpoints/phase1/"
    )
    cli.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, ..."
    )
    cli.add_argument(
        "--batch-size", type=positive_int, default=64, help="photos per forward pass (default 64)"
    )
    cli.add_argument("--data-dir", help="the run's data folder, if it moved since training")
    cli.add_argument(
        "--csv", help="also write the predictions, with every mode and the hypotheses (JSON), here"
    )
    cli.add_argument(
        "--map",
        help="with one photo: write its offline probability map (every cell, the prediction, its 90 %% radius) here",
    )
    cli.add_argument(
        "--force",
        action="store_true",
        help="write --csv / --map even over an input, a file of another kind or a file inside a run or data folder",
    )
    return cli


def expand_inputs(inputs: list[str], image_column: str) -> list[str]:
    """Photo paths from the command line's inputs: files as given, folders searched recursively for image
    files, CSV files by their image column (paths relative to the CSV's folder)."""
    from geoloc_lib.data.photo_exif import IMAGE_SUFFIXES

    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise CommandError(f"{item}: a folder with no image files (.jpg, .png, ...) in it")
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            from geoloc_lib.base.user_tables import read_user_csv

            table = read_user_csv(path, dtype=str)
            if image_column not in table:
                raise CommandError(
                    f"{item}: no column {image_column!r} (it has {list(table.columns)}); use --image-column"
                )
            paths += [str(path.parent / p) for p in table[image_column].fillna("")]
        else:
            paths.append(item)
    return paths


def readable_photos(paths: list[str]) -> tuple[list[str], list[str]]:
    """(readable photos, one problem line per unreadable one)."""
    from geoloc_lib.data.photos import image_problem

    good, problems = [], []
    for path in paths:
        if not Path(path).is_file():
            problems.append(f"{path}: photo not found; skipped")
        elif (problem := image_problem(path)) is not None:
            problems.append(f"{path}: not a readable image ({problem.removeprefix(path + ': ')}); skipped")
        else:
            good.append(path)
    return good, problems


def run(args: argparse.Namespace) -> int:
    """Predict and print; the exit status: 0 when every photo was placed, 1 when one was skipped or flagged."""
    if args.map and len(args.images) != 1:
        raise CommandError(f"--map draws one photo's probabilities; give one photo, not {len(args.images)}")
    listed = expand_inputs(args.images, args.image_column)
    from geoloc_lib.base.output_files import check_output

    inputs = [*args.images, *listed]
    for option, path, suffixes in (("--csv", args.csv, (".csv",)), ("--map", args.map, (".html", ".htm"))):
        if path:
            check_output(path, option, inputs, suffixes, args.force)
    photos, problems = readable_photos(listed)
    for problem in problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    if not photos:
        raise CommandError("none of the photos could be read (see above); nothing to predict")
    from geoloc_lib.inference.answers import readable_table
    from geoloc_lib.inference.predictor import predictor_of_run, uncalibrated_reason

    predictor = predictor_of_run(args.run_dir, args.checkpoint, args.device, args.data_dir)
    # with --map the one photo's probability of every cell comes from the same forward pass
    raw = predictor.predict(photos, args.batch_size, args.mode, cell_probs=bool(args.map))
    frame = readable_table(raw.drop(columns="cell_probs", errors="ignore"), args.top_k)
    own = predictor.decoder.config.mode
    if (why := uncalibrated_reason(predictor.calibration, own, args.mode or own)) is not None:
        print(f"{PROG}: {args.run_dir}: {why}", file=sys.stderr)
    shown = ["image", "lat", "lon", "province", "nearest_town", "town_km", "confidence"]
    shown += [c for c in frame if c.startswith("radius_")]
    print(
        frame[shown + (["out_of_domain"] if "out_of_domain" in frame else [])].to_string(
            index=False, na_rep=""
        )
    )
    flagged = frame[frame["out_of_domain"]] if "out_of_domain" in frame else frame.iloc[:0]
    for row in flagged.itertuples():
        print(
            f"{PROG}: {row.image}: unlike every training photo (novelty_distance {row.novelty_distance:.3f} > "
            f"{predictor.novelty.threshold:.3f}); its place is not to be trusted",
            file=sys.stderr,
        )
    if args.csv:
        from geoloc_lib.base.atomic_files import atomic_write_csv

        atomic_write_csv(frame.assign(hypotheses=frame["hypotheses"].map(json.dumps)), Path(args.csv))
        print(f"wrote {args.csv}")
    if args.map:
        from geoloc_lib.inference.predictor import map_inputs
        from geoloc_lib.viz import maps, photo_maps

        maps.save_map(photo_maps.probability_map(*map_inputs(predictor, raw.iloc[0])), args.map)
        print(f"wrote {args.map}")
    return 1 if problems or len(flagged) else 0


def main(argv: list[str] | None = None) -> None:
    run_main(PROG, parser(), run, argv)


if __name__ == "__main__":
    main()
