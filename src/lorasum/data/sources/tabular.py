"""Generic question-answer tables: JSON Lines, a JSON list of objects, CSV, TSV or Parquet.

Used for a user's own data and for files such as financial-qa-10K (virattt/financial-qa-10K:
``question``, ``answer``, ``context``, ``ticker``, ``filing``). Fields are mapped by name.
:func:`rows_to_records` is shared with the Hugging Face hub reader (``hf.py``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, get_str, iter_rows, skip_or_raise
from lorasum.errors import DataError

__all__ = ["rows_to_records", "load_tabular", "load_financial_qa_10k"]

_MAX_GROUP_CHARS = 80  # longer group values (a context passage) are replaced by their sha256


def _group(row: dict, field: str, where: str) -> str:
    if field not in row or row[field] is None:
        raise DataError(f"{where}: missing field '{field}'")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field '{field}' must be a string or integer, got {type(value).__name__}")
    value = str(value).strip()
    if len(value) > _MAX_GROUP_CHARS:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]
    return value


def rows_to_records(
    rows: Iterable[tuple[str, dict]],
    *,
    domain: str,
    prefix: str,
    label: str,
    question_field: str = "question",
    answer_field: str = "answer",
    context_field: str | None = None,
    group_field: str | None = None,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Turn ``(where, row)`` pairs into records (the core of :func:`load_tabular`).

    Args:
        rows: ``where`` names the file and line / record (used in errors and, with ``label``
            replaced by its last path part, as ``Record.source``); ``row`` maps field names to values.
        domain: the records' domain.
        prefix: id prefix; ids are ``"<prefix>/<row index>"`` (0-based over all rows read).
        label: the file (or dataset) name as it appears at the start of ``where``.
        question_field, answer_field, context_field: field names (context optional).
        group_field: rows sharing its value share a split group ``"<prefix>/group/<value>"``
            (values over 80 characters, e.g. a passage, are replaced by a sha256 prefix);
            ``None``: each row is its own group.
        skip_bad_rows: count a bad row (missing field, wrong type) in ``stats["bad_rows"]``
            instead of raising.
        stats: receives ``records`` and ``empty`` (rows whose question or answer is blank).

    Raises:
        DataError: a missing field or a non-string value (unless ``skip_bad_rows``), naming the
            file, line / record and field; or no usable row at all.
    """
    n = 0
    short = Path(label).name
    for index, (where, row) in enumerate(rows):
        try:
            question = get_str(row, question_field, where).strip()
            answer = get_str(row, answer_field, where).strip()
            context = (get_str(row, context_field, where) or "").strip() if context_field else ""
            rid = f"{prefix}/{index}"
            group = f"{prefix}/group/{_group(row, group_field, where)}" if group_field else rid
        except DataError as e:
            skip_or_raise(e, skip_bad_rows, stats)
            continue
        if not question or not answer:
            bump(stats, "empty")
            continue
        n += 1
        bump(stats, "records")
        yield Record(
            id=rid, domain=domain, question=question, answer=answer, context=context, group=group,
            source=short + ":" + where[len(label) + 1:].strip() if where.startswith(label) else where,
        )
    if n == 0:
        raise DataError(f"{label}: no rows with a non-empty '{question_field}' and '{answer_field}'")


def load_tabular(
    path: str | os.PathLike,
    *,
    domain: str,
    question_field: str = "question",
    answer_field: str = "answer",
    context_field: str | None = None,
    group_field: str | None = None,
    id_prefix: str | None = None,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` per row of a table file with a non-empty question and answer.

    The format follows the file name ending (``.jsonl``/``.ndjson``, ``.json``, ``.csv``,
    ``.tsv``, ``.parquet``; Parquet needs ``pyarrow``). Ids are ``"<id_prefix or file stem>/<row
    index>"``; groups and counts as in :func:`rows_to_records`. Rows whose question or answer is
    empty after stripping are skipped and counted in ``stats["empty"]``; with ``skip_bad_rows``
    malformed rows are skipped and counted in ``stats["bad_rows"]``.

    Raises:
        DataError: unknown extension, pyarrow missing, unreadable / malformed file, a missing
            field, a non-string value, or no usable row (message names the file and line / record).
    """
    path = Path(path)
    rows = iter_rows(path, skip_bad_rows=skip_bad_rows, stats=stats)
    return rows_to_records(
        rows, domain=domain, prefix=id_prefix or path.stem, label=str(path), question_field=question_field,
        answer_field=answer_field, context_field=context_field, group_field=group_field,
        skip_bad_rows=skip_bad_rows, stats=stats,
    )


def load_financial_qa_10k(
    path: str | os.PathLike,
    *,
    domain: str = "finance",
    group_field: str | None = "ticker",
    id_prefix: str | None = None,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """financial-qa-10K (questions generated from companies' 10-K filings; CSV, JSON, JSON Lines
    or Parquet with ``question``, ``answer``, ``context`` and ``ticker``).

    The 10-K passage becomes the record's context. By default all questions about one company
    (``ticker``) share a split group, so that no filing is seen in training and test;
    ``group_field="context"`` groups by passage instead, ``None`` makes every row its own group.
    Ids are ``"<id_prefix or file stem>/<row index>"``.

    Raises:
        DataError: as :func:`load_tabular` (e.g. a file without a ``ticker`` column: pass
            ``group_field``).
    """
    return load_tabular(
        path, domain=domain, question_field="question", answer_field="answer", context_field="context",
        group_field=group_field, id_prefix=id_prefix, skip_bad_rows=skip_bad_rows, stats=stats,
    )
