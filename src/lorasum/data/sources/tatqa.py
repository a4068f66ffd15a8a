"""TAT-QA (Zhu et al. 2021, github.com/NExTplusplus/TAT-QA): hybrid table + text QA over financial reports.

A file is a JSON list of contexts ``{table: {uid, table: [[cell, ...], ...]}, paragraphs:
[{uid, order, text}], questions: [{uid, question, answer, answer_type, scale, ...}]}``.

Context rendering: each table row with at least one non-empty cell becomes one line,
its cells (stripped) joined with ``" | "``; then a blank line; then the paragraphs,
sorted by ``order``, one per line.

Answer formatting (:func:`format_answer`): a list of spans is joined with ``", "``;
numbers are written without a spurious ``.0`` (``27.0`` -> ``"27"``) and never in
scientific notation; the ``scale`` is appended to every item that contains a digit:
``thousand`` / ``million`` / ``billion`` as a word (``"12.5 million"``), ``percent`` as
``"%"`` (``"12.5%"``; not doubled when the span already ends in ``%``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, get_str, load_json, skip_or_raise
from lorasum.errors import DataError

__all__ = ["SCALES", "format_number", "format_answer", "render_context", "load_tatqa"]

#: Values of TAT-QA's ``scale`` field.
SCALES = ("", "thousand", "million", "billion", "percent")


def format_number(x: int | float) -> str:
    """Plain decimal text of a number: ``27.0`` -> ``"27"``, ``-12.6`` -> ``"-12.6"``, ``1e-05`` -> ``"0.00001"``."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return format(Decimal(repr(x)), "f")


def _scaled(item: str, scale: str) -> str:
    if not scale or not any(c.isdigit() for c in item):
        return item
    if scale == "percent":
        return item if item.endswith("%") else f"{item}%"
    return f"{item} {scale}"


def _item(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field 'answer' must be a string, number or list of them, got {type(value).__name__}")
    return value.strip() if isinstance(value, str) else format_number(value)


def format_answer(answer: Any, scale: str, where: str = "answer") -> str:
    """Render a TAT-QA answer (str, number or list of them) with its scale (see module doc).

    ``(["73,260", "57,768"], "thousand")`` -> ``"73,260 thousand, 57,768 thousand"``;
    ``(12.5, "percent")`` -> ``"12.5%"``; ``(1.2, "million")`` -> ``"1.2 million"``.

    Raises:
        DataError: unknown scale or a value of another type (message starts with ``where``).
    """
    if scale not in SCALES:
        raise DataError(f"{where}: field 'scale' is {scale!r}, expected one of {list(SCALES)}")
    items = answer if isinstance(answer, list) else [answer]
    return ", ".join(_scaled(_item(v, where), scale) for v in items)


def render_context(table: list[list[Any]], paragraphs: list[dict], where: str = "context") -> str:
    """Table rows as ``"a | b | c"`` lines (all-empty rows left out), a blank line, then the
    paragraphs' text sorted by ``order``.

    Raises:
        DataError: the table is not a list of lists, or a paragraph lacks ``text``/``order``.
    """
    if not isinstance(table, list) or not all(isinstance(r, list) for r in table):
        raise DataError(f"{where}: field 'table.table' must be a list of rows (lists of cells)")
    lines = []
    for row in table:
        cells = [str(c).strip() for c in row]
        if any(cells):
            lines.append(" | ".join(cells))
    if not isinstance(paragraphs, list):
        raise DataError(f"{where}: field 'paragraphs' must be a list")
    texts = []
    for j, p in enumerate(paragraphs):
        pw = f"{where} paragraph {j}"
        if not isinstance(p, dict):
            raise DataError(f"{pw}: expected an object, got {type(p).__name__}")
        order = p.get("order", j)
        if isinstance(order, bool) or not isinstance(order, (int, float)):
            raise DataError(f"{pw}: field 'order' must be a number")
        texts.append((order, j, get_str(p, "text", pw).strip()))
    paras = [t for _, _, t in sorted(texts) if t]
    return "\n".join(lines) + ("\n\n" + "\n".join(paras) if paras else "")


def _field(obj: dict, key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(obj[key], kind):
        raise DataError(f"{where}: field '{key}' must be a {kind.__name__}, got {type(obj[key]).__name__}")
    return obj[key]


def _question(q: Any, where: str, j: int) -> tuple[str, str, str]:
    """``(uid, question, answer text)`` of one question object."""
    if not isinstance(q, dict):
        raise DataError(f"{where} question {j}: expected an object, got {type(q).__name__}")
    uid = get_str(q, "uid", f"{where} question {j}")
    qw = f"{where} question {uid}"
    question = get_str(q, "question", qw)
    if "answer" not in q:
        raise DataError(f"{qw}: missing field 'answer'")
    return uid, question, format_answer(q["answer"], get_str(q, "scale", qw, required=False) or "", qw)


def _context(ctx: Any, where: str) -> tuple[str, str, list]:
    """``(table uid, rendered context, questions)`` of one context object."""
    if not isinstance(ctx, dict):
        raise DataError(f"{where}: expected an object, got {type(ctx).__name__}")
    table = _field(ctx, "table", dict, where)
    table_uid = get_str(table, "uid", f"{where} table")
    context = render_context(_field(table, "table", list, f"{where} table"),
                             _field(ctx, "paragraphs", list, where), where)
    return table_uid, context, _field(ctx, "questions", list, where)


def load_tatqa(
    path: str | os.PathLike,
    *,
    domain: str = "finance",
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` per question of a TAT-QA file (e.g. ``tatqa_dataset_dev.json``).

    Ids are ``"tatqa/<question uid>"``; the group is ``"tatqa/<table uid>"`` (questions
    share contexts, so a context never straddles splits); ``source`` is
    ``"<file name>:<question uid>"``. ``stats["contexts"]``/``["records"]`` are counted. With
    ``skip_bad_rows`` a malformed context (all its questions) or question is skipped and
    counted once in ``stats["bad_rows"]`` instead of raising.

    Raises:
        DataError: unreadable / malformed JSON, top level not a list, a missing or
            wrongly-typed field (message names the file, context index and question uid).
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of contexts, got {type(data).__name__}")
    for i, ctx in enumerate(data):
        where = f"{path}: context {i}"
        try:
            table_uid, context, questions = _context(ctx, where)
        except DataError as e:
            skip_or_raise(e, skip_bad_rows, stats)
            continue
        bump(stats, "contexts")
        for j, q in enumerate(questions):
            try:
                uid, question, answer = _question(q, where, j)
            except DataError as e:
                skip_or_raise(e, skip_bad_rows, stats)
                continue
            bump(stats, "records")
            yield Record(
                id=f"tatqa/{uid}", domain=domain, question=question.strip(), answer=answer,
                context=context, group=f"tatqa/{table_uid}", source=f"{path.name}:{uid}",
            )
