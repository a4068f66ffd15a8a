"""Generic question-answer tables: JSON Lines, a JSON list of objects, CSV or TSV.

Used for a user's own data and for files such as financial-qa-10K
(``question``, ``answer``, ``context``). Fields are mapped by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, get_str, iter_rows
from lorasum.errors import DataError

__all__ = ["load_tabular"]


def _group(row: dict, field: str, where: str) -> str:
    if field not in row or row[field] is None:
        raise DataError(f"{where}: missing field '{field}'")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field '{field}' must be a string or integer, got {type(value).__name__}")
    return str(value).strip()


def load_tabular(
    path: str | os.PathLike,
    *,
    domain: str,
    question_field: str = "question",
    answer_field: str = "answer",
    context_field: str | None = None,
    group_field: str | None = None,
    id_prefix: str | None = None,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` per row with a non-empty question and answer.

    The format follows the file name ending (``.jsonl``/``.ndjson``, ``.json``, ``.csv``,
    ``.tsv``). Ids are ``"<id_prefix or file stem>/<row index>"`` (0-based over all rows);
    the group is ``"<prefix>/group/<value of group_field>"`` when a group field is given
    (e.g. a document id shared by several questions), else the id. Rows whose question
    or answer is empty after stripping are skipped and counted in ``stats["empty"]``.

    Raises:
        DataError: unknown extension, unreadable / malformed file, a missing field, a
            non-string value, or no usable row (message names the file and line / record).
    """
    path = Path(path)
    prefix = id_prefix or path.stem
    n = 0
    for index, (where, row) in enumerate(iter_rows(path)):
        question = get_str(row, question_field, where).strip()
        answer = get_str(row, answer_field, where).strip()
        context = get_str(row, context_field, where).strip() if context_field else ""
        if not question or not answer:
            bump(stats, "empty")
            continue
        rid = f"{prefix}/{index}"
        group = f"{prefix}/group/{_group(row, group_field, where)}" if group_field else rid
        n += 1
        bump(stats, "records")
        yield Record(
            id=rid, domain=domain, question=question, answer=answer, context=context, group=group,
            source=f"{path.name}:{where[len(str(path)) + 1:].strip()}",
        )
    if n == 0:
        raise DataError(f"{path}: no rows with a non-empty '{question_field}' and '{answer_field}'")
