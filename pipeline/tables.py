"""Every CSV photoclust writes or reads: exact round trips for any file name the OS allows.

- RFC 4180 quoting with CRLF row ends, so a name holding a comma, quote, line feed or
  carriage return stays one cell;
- UTF-8 with surrogateescape, so a name whose bytes are not UTF-8 is written back byte
  for byte (a spreadsheet shows those bytes as replacement characters);
- a text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or
  a carriage return) is written with a leading apostrophe, and so is one that starts with
  an apostrophe; `read_*` removes exactly one, so the value read equals the value written.
  Numbers are written as numbers and never escaped.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text

ENCODING = dict(encoding="utf-8", errors="surrogateescape")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_cell(value):
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def unescape_cell(value):
    if isinstance(value, str) and value.startswith("'"):
        return value[1:]
    return value


def display_name(text: str) -> str:
    """A file name as a person reads it (sheets, index.html): bytes that are not UTF-8 and
    control characters such as a line feed become U+FFFD; the CSVs keep the exact name."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text)


def _cell(value, float_format: str | None):
    if float_format is not None and isinstance(value, (float, np.floating)):
        return float_format % value  # a number: never escaped, even when negative
    return escape_cell(value)


def csv_text(header: Sequence[str], rows: Iterable[Sequence], float_format: str | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([_cell(v, float_format) for v in row] for row in rows)
    return buffer.getvalue()


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence], float_format: str | None = None) -> None:
    """Atomically write `rows` under `header` (floats as `float_format`, e.g. "%.6f", if given)."""
    write_text(path, csv_text(header, rows, float_format))


def write_frame(path: Path, frame: pd.DataFrame, float_format: str | None = None) -> None:
    write_csv(path, list(frame.columns), frame.itertuples(index=False, name=None), float_format)


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as dicts of strings) of a CSV written by `write_csv`."""
    with open(path, newline="", **ENCODING) as fh:
        reader = csv.DictReader(fh)
        rows = [{k: unescape_cell(v) for k, v in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


def read_frame(path: Path, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV written by `write_csv` as a DataFrame; `text_columns` stay strings ("" not NaN)."""
    frame = pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, **{
        "encoding": ENCODING["encoding"], "encoding_errors": ENCODING["errors"]})
    for column in frame.columns:
        # object under pandas 2, the string dtype ("str") under pandas 3: both hold the text cells
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column].dtype):
            frame[column] = frame[column].map(unescape_cell)
    return frame
