"""Reading a CSV that a user wrote: whatever is wrong with it becomes one line that names the file and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


class UserTableError(ValueError):
    """A user's CSV cannot be read as a table; the message names the file and says what to do."""


def read_user_csv(path: str | os.PathLike, **options) -> pd.DataFrame:
    """`pd.read_csv(path, **options)`, refusing an empty file, a header with no rows, text that is not UTF-8
    and text that is not comma-separated with one line."""
    path = Path(path)
    try:
        table = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise UserTableError(
            f"{path}: an empty file (not even a header); write a header and one row per photo"
        ) from None
    except UnicodeDecodeError as err:
        raise UserTableError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}); save it as "
            "UTF-8 (in a spreadsheet: CSV UTF-8)"
        ) from None
    except pd.errors.ParserError as err:
        raise UserTableError(
            f"{path}: not a readable CSV ({' '.join(str(err).split())}); save it comma-separated with a header"
        ) from None
    if table.empty:
        raise UserTableError(
            f"{path}: a header with no rows ({', '.join(map(str, table.columns))}); add one row per photo"
        )
    return table
