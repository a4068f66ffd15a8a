"""GSM8K (Cobbe et al. 2021, github.com/openai/grade-school-math): JSON Lines with ``question``, ``answer``.

Answers are step-by-step solutions with calculator annotations such as
``<<48/2=24>>`` and a final line ``#### <number>``. The annotations are removed
(they are not natural language); the final ``####`` line is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, get_str, iter_jsonl, skip_or_raise
from lorasum.errors import DataError

__all__ = ["strip_calculator_annotations", "load_gsm8k"]

_ANNOTATION = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^####\s*\S", re.MULTILINE)


def strip_calculator_annotations(answer: str) -> str:
    """Remove GSM8K calculator annotations ``<<expr=value>>`` from a solution.

    ``"48/2 = <<48/2=24>>24 clips"`` becomes ``"48/2 = 24 clips"``. Everything else,
    including line breaks and the final ``#### N`` line, is left as it is.
    """
    return _ANNOTATION.sub("", answer)


def load_gsm8k(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    domain: str = "math",
    strip_annotations: bool = True,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` per line of an official GSM8K ``train.jsonl`` / ``test.jsonl``.

    Args:
        path: the JSON Lines file.
        split: name used in the ids (``"gsm8k/<split>/<index>"``, 0-based over records);
            defaults to the file stem (``train``/``test``).
        domain: the records' domain.
        strip_annotations: remove ``<<...>>`` calculator annotations from the answers.
        skip_bad_rows: skip a bad line (malformed, missing field, no final line) and count it in
            ``stats["bad_rows"]`` (see :func:`~lorasum.data.sources._io.skip_or_raise`) instead of raising.
        stats: if given, ``stats["records"]`` is incremented per record.

    The group of each record is its id (GSM8K problems are independent); ``source`` is
    ``"<file name>:<line>"``; ``context`` is empty.

    Raises:
        DataError: unreadable file / invalid UTF-8 / empty file, a malformed line, a missing
            or non-string ``question``/``answer``, or an answer without a final ``#### N`` line
            (the last three only without ``skip_bad_rows``).
    """
    path = Path(path)
    split = split or path.stem
    n = 0
    for index, (lineno, obj) in enumerate(iter_jsonl(path, skip_bad_rows=skip_bad_rows, stats=stats)):
        where = f"{path}:{lineno}"
        try:
            question = get_str(obj, "question", where)
            answer = get_str(obj, "answer", where)
            if not _FINAL.search(answer):
                raise DataError(f"{where}: field 'answer' has no final '#### <number>' line (not GSM8K format)")
        except DataError as e:
            skip_or_raise(e, skip_bad_rows, stats)
            continue
        if strip_annotations:
            answer = strip_calculator_annotations(answer)
        rid = f"gsm8k/{split}/{index}"
        n += 1
        bump(stats, "records")
        yield Record(
            id=rid, domain=domain, question=question, answer=answer, context="", group=rid,
            source=f"{path.name}:{lineno}",
        )
    if n == 0:
        raise DataError(f"{path}: no usable line (every line was bad)")
