"""Shared readers for the data sources: strict UTF-8, JSON, JSON Lines and CSV.

Every problem becomes a one-line :class:`~lorasum.errors.DataError` that names the
file and, where there is one, the line or record and the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.errors import DataError

__all__ = [
    "TABLE_FORMATS",
    "read_bytes",
    "read_text",
    "load_json",
    "iter_jsonl",
    "iter_rows",
    "get_str",
    "bump",
]

#: File name endings :func:`iter_rows` understands.
TABLE_FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file.

    Raises:
        DataError: the file is missing, is a folder, or cannot be read.
    """
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a file, found a folder") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file (a leading byte-order mark is dropped).

    Raises:
        DataError: missing or unreadable file, invalid UTF-8 (with the byte offset),
            or a file holding nothing but whitespace.
    """
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


def load_json(path: str | os.PathLike) -> Any:
    """Parse a whole JSON file.

    Raises:
        DataError: as :func:`read_text`, or malformed JSON (with line and column).
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file (1-based lines).

    Raises:
        DataError: as :func:`read_text`, a malformed line, or a line that is not a JSON object.
    """
    text = read_text(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[str, dict]]:
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        if not reader.fieldnames:
            raise DataError(f"{path}: no header row")
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more cells than header columns")
            yield f"{path}:{reader.line_num}", row
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num + 1} ({e})") from None


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, row)`` from a table-like file; ``where`` is ``"<file>:<line>"`` or ``"<file>: record <i>"``.

    The format follows the file name ending: ``.jsonl``/``.ndjson`` (one object per
    line), ``.json`` (a list of objects), ``.csv`` or ``.tsv`` (header row first).

    Raises:
        DataError: unknown ending, or any reading problem (see :func:`read_text`,
            :func:`load_json`, :func:`iter_jsonl`), or a ``.json`` that is not a list of objects.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for lineno, obj in iter_jsonl(path):
            yield f"{path}:{lineno}", obj
    elif suffix == ".json":
        data = load_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DataError(f"{path}: record {i}: expected a JSON object, got {type(obj).__name__}")
            yield f"{path}: record {i}", obj
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, "," if suffix == ".csv" else "\t")
    else:
        known = ", ".join(TABLE_FORMATS)
        raise DataError(f"{path}: unknown format '{suffix or '(no extension)'}' (expected one of {known})")


def get_str(obj: dict, field: str, where: str, *, required: bool = True) -> str | None:
    """Return ``obj[field]`` as a string; ``None`` if absent and not ``required``.

    Raises:
        DataError: the field is missing (and required) or is not a string.
    """
    if field not in obj or obj[field] is None:
        if required:
            raise DataError(f"{where}: missing field '{field}'")
        return None
    value = obj[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    return value


def bump(stats: MutableMapping[str, Any] | None, key: str, n: int = 1) -> None:
    """Add ``n`` to ``stats[key]`` (no-op when ``stats`` is None)."""
    if stats is not None:
        stats[key] = stats.get(key, 0) + n
