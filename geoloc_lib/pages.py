"""Command line: executed notebooks as offline pages (`geoloc-pages`, or `python -m geoloc_lib.pages`)

    geoloc-pages runs/my_p1                   # every executed notebook in a run folder
    geoloc-pages notebooks/out.ipynb          # the design card's output notebook: notebooks/out.html

Each page is written beside its notebook (`.ipynb` -> `.html`) and opens in a browser with no network, maps
and the explorer's saved widgets included (viz/notebook_export.py), as `make demo` writes them for the demo.
"""

from __future__ import annotations

import sys
from pathlib import Path

from geoloc_lib.base.command_line import CommandError, CommandParser, run_command

PROG = "geoloc-pages"


def parser() -> CommandParser:
    cli = CommandParser(prog=PROG, description="Write executed notebooks as offline HTML pages, beside them.")
    cli.add_argument(
        "sources", nargs="+", help="executed notebooks (.ipynb), or folders holding them (a run folder)"
    )
    return cli


def notebooks(sources: list[str]) -> list[Path]:
    found = []
    for source in map(Path, sources):
        if source.is_dir():
            inside = sorted(source.glob("*.ipynb"))
            if not inside:
                raise CommandError(
                    f"{source}: a folder with no notebook (.ipynb) in it; name the executed notebook"
                )
            found += inside
        elif source.suffix != ".ipynb":
            raise CommandError(f"{source}: not a notebook (.ipynb); name the notebook papermill wrote")
        elif not source.is_file():
            raise CommandError(f"{source}: no such notebook")
        else:
            found.append(source)
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        from nbformat.reader import NotJSONError

        from geoloc_lib.viz.notebook_export import export_html

        for notebook in notebooks(args.sources):
            try:
                print(f"wrote {export_html(notebook)}")
            except NotJSONError:
                raise CommandError(f"{notebook}: not a readable notebook (its JSON is damaged)") from None

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
