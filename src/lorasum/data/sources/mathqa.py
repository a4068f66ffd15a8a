"""MathQA (Amini et al. 2019, math-qa.github.io; AllenAI release ``MathQA.zip``).

Each of ``train.json`` / ``dev.json`` / ``test.json`` is a JSON list of objects with
``Problem``, ``Rationale``, ``options`` (``"a ) 400 , b ) 300 , ..."``), ``correct``
(``a``-``e``), ``annotated_formula``, ``linear_formula`` and ``category``; CSV, JSON Lines
and Parquet copies with the same columns are read too.

The question is the ``Problem``, the answer the ``Rationale`` (worked solution ending with
the chosen option), as in the paper's Problem -> Rationale setting. The AllenAI files wrap
each rationale in double quotes (``"\\"explanation : ... answer : a\\""``); one pair of
surrounding quotes is removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, get_str, iter_rows, skip_or_raise
from lorasum.errors import DataError

__all__ = ["CHOICES", "strip_quotes", "load_mathqa"]

#: Values of ``correct``.
CHOICES = ("a", "b", "c", "d", "e")


def strip_quotes(text: str) -> str:
    """Remove one pair of double quotes around ``text`` (after stripping whitespace):
    ``'"explanation : 4 answer : a"'`` -> ``'explanation : 4 answer : a'``; other text is returned stripped."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].strip()
    return text


def _row(row: dict, where: str) -> tuple[str, str]:
    problem = get_str(row, "Problem", where).strip()
    rationale = strip_quotes(get_str(row, "Rationale", where))
    correct = get_str(row, "correct", where).strip().lower()
    if correct not in CHOICES:
        raise DataError(f"{where}: field 'correct' is {correct!r}, expected one of a, b, c, d, e")
    if "options" not in row:
        raise DataError(f"{where}: missing field 'options'")
    return problem, rationale


def load_mathqa(
    path: str | os.PathLike,
    *,
    domain: str = "math",
    id_prefix: str | None = None,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` (``Problem`` -> ``Rationale``) per row of a MathQA file.

    Ids are ``"mathqa/<id_prefix or file stem>/<row index>"`` (0-based); each problem is its own
    split group; ``source`` is ``"<file name>:<line or record>"``. Rows with an empty problem or
    rationale are skipped and counted in ``stats["empty"]``; ``stats["records"]`` counts the rest.
    With ``skip_bad_rows`` malformed rows are counted in ``stats["bad_rows"]`` instead of raising.

    Raises:
        DataError: unreadable / malformed file, a missing ``Problem``/``Rationale``/``options``/
            ``correct`` field, a non-string value, ``correct`` outside a-e (naming the file, line
            or record and field), or no usable row.
    """
    path = Path(path)
    prefix = f"mathqa/{id_prefix or path.stem}"
    n = 0
    for index, (where, row) in enumerate(iter_rows(path, skip_bad_rows=skip_bad_rows, stats=stats)):
        try:
            problem, rationale = _row(row, where)
        except DataError as e:
            skip_or_raise(e, skip_bad_rows, stats)
            continue
        if not problem or not rationale:
            bump(stats, "empty")
            continue
        n += 1
        bump(stats, "records")
        rid = f"{prefix}/{index}"
        yield Record(
            id=rid, domain=domain, question=problem, answer=rationale, context="", group=rid,
            source=f"{path.name}:{where[len(str(path)) + 1:].strip()}",
        )
    if n == 0:
        raise DataError(f"{path}: no rows with a non-empty 'Problem' and 'Rationale' (not MathQA?)")
