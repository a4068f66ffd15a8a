"""Shared readers for the data sources: strict UTF-8, JSON, JSON Lines and CSV.

Every problem becomes a one-line :class:`~lorasum.errors.DataError` that names the
file and, where there is one, the line or record and the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.errors import DataError
from lorasum.storage import read_regular_file

__all__ = [
    "TABLE_FORMATS",
    "MAX_EXAMPLES",
    "read_bytes",
    "read_text",
    "load_json",
    "iter_jsonl",
    "iter_rows",
    "get_str",
    "bump",
    "skip_or_raise",
    "merge_stats",
]

#: File name endings :func:`iter_rows` understands.
TABLE_FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
#: How many messages of skipped bad rows ``stats["bad_row_examples"]`` keeps.
MAX_EXAMPLES = 3


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole regular file (symlinks are followed).

    Anything else is refused before a byte is read (:func:`lorasum.storage.read_regular_file`): a
    device (a symlink to ``/dev/zero`` would be read until memory runs out), a named pipe (would
    wait for a writer forever) or a socket.

    Raises:
        DataError: the file is missing, is a folder, is not a regular file (device, pipe, socket),
            or cannot be read; the message names the file.
    """
    return read_regular_file(path, error=DataError)


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
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: invalid UTF-8 at line {line} ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


def load_json(path: str | os.PathLike) -> Any:
    """Parse a whole JSON file.

    Raises:
        DataError: as :func:`read_text`, malformed JSON (with line and column), or JSON nested too
            deeply for Python's parser (a ``RecursionError``).
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read (more than about "
                        f"{sys.getrecursionlimit()} levels of lists or objects)") from None


def iter_jsonl(
    path: str | os.PathLike, *, skip_bad_rows: bool = False, stats: MutableMapping[str, Any] | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file (1-based lines).

    Lines are split at ``\\n`` only and decoded one by one, so an invalid UTF-8 byte is reported
    with its line. With ``skip_bad_rows`` a bad line (invalid UTF-8, malformed JSON, not an
    object) is skipped and counted by :func:`skip_or_raise` instead of raising.

    Raises:
        DataError: missing or unreadable file, a file of blank lines only, or (unless
            ``skip_bad_rows``) a bad line; the message names the file and line.
    """
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise DataError(f"{path}: empty file")
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where, problem = f"{path}:{lineno}", None
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problem = f"invalid UTF-8 ({e.reason} at column {e.start + 1})"
        except json.JSONDecodeError as e:
            problem = f"malformed JSON ({e.msg} at column {e.colno})"
        except RecursionError:
            problem = "JSON nested too deeply to read"
        else:
            if not isinstance(obj, dict):
                problem = f"expected a JSON object, got {type(obj).__name__}"
        if problem is not None:
            skip_or_raise(DataError(f"{where}: {problem}"), skip_bad_rows, stats)
            continue
        yield lineno, obj


def _iter_csv(path: Path, delimiter: str, skip: bool, stats: MutableMapping | None) -> Iterator[tuple[str, dict]]:
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        if not reader.fieldnames:
            raise DataError(f"{path}: no header row")
        for row in reader:
            if None in row:
                skip_or_raise(DataError(f"{path}:{reader.line_num}: more cells than header columns"), skip, stats)
                continue
            yield f"{path}:{reader.line_num}", row
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num + 1} ({e})") from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    read_bytes(path)  # the same missing / folder / unreadable errors as the other formats
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow, which is not installed; pip install pyarrow") from None
    import pyarrow as pa

    try:
        rows = (row for batch in pq.ParquetFile(path).iter_batches(batch_size=4096) for row in batch.to_pylist())
        for i, row in enumerate(rows):
            yield f"{path}: row {i}", row
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: malformed Parquet ({str(e).splitlines()[0]})") from None


def iter_rows(
    path: str | os.PathLike, *, skip_bad_rows: bool = False, stats: MutableMapping[str, Any] | None = None
) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, row)`` from a table-like file; ``where`` is ``"<file>:<line>"``,
    ``"<file>: record <i>"`` (JSON list) or ``"<file>: row <i>"`` (Parquet; both 0-based).

    The format follows the file name ending: ``.jsonl``/``.ndjson`` (one object per
    line), ``.json`` (a list of objects), ``.csv`` or ``.tsv`` (header row first),
    ``.parquet`` (needs the optional ``pyarrow``). With ``skip_bad_rows``, a bad row (see
    :func:`iter_jsonl`; a JSON list item that is not an object; a CSV row with extra cells)
    is skipped and counted by :func:`skip_or_raise`.

    Raises:
        DataError: unknown ending, pyarrow missing for ``.parquet``, any reading problem (see
            :func:`read_text`, :func:`load_json`, :func:`iter_jsonl`), or a ``.json`` that is not
            a list of objects.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for lineno, obj in iter_jsonl(path, skip_bad_rows=skip_bad_rows, stats=stats):
            yield f"{path}:{lineno}", obj
    elif suffix == ".json":
        data = load_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                error = DataError(f"{path}: record {i}: expected a JSON object, got {type(obj).__name__}")
                skip_or_raise(error, skip_bad_rows, stats)
                continue
            yield f"{path}: record {i}", obj
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, "," if suffix == ".csv" else "\t", skip_bad_rows, stats)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
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


def skip_or_raise(error: DataError, skip: bool, stats: MutableMapping[str, Any] | None) -> None:
    """Raise ``error``, or (``skip``) count it: ``stats["bad_rows"] += 1`` and its message kept in
    ``stats["bad_row_examples"]`` (the first :data:`MAX_EXAMPLES`)."""
    if not skip:
        raise error
    bump(stats, "bad_rows")
    if stats is not None:
        examples = stats.setdefault("bad_row_examples", [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(str(error))


def merge_stats(into: MutableMapping[str, Any], stats: MutableMapping[str, Any]) -> None:
    """Add ``stats`` into ``into``: integers summed, lists extended (``bad_row_examples`` capped at
    :data:`MAX_EXAMPLES`); other values (hashes) are not merged."""
    for key, value in stats.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            bump(into, key, value)
        elif isinstance(value, list):
            merged = into.setdefault(key, []) + list(value)
            into[key] = merged[:MAX_EXAMPLES] if key == "bad_row_examples" else merged
