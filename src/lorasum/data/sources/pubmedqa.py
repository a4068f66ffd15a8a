"""PubMedQA PQA-L (Jin et al. 2019, github.com/pubmedqa/pubmedqa): ``ori_pqal.json``.

A JSON object keyed by PMID; each value has ``QUESTION``, ``CONTEXTS`` (abstract
sections), ``LONG_ANSWER`` (the abstract's conclusion) and ``final_decision``
(yes / no / maybe). The answer text is ``"<Decision>. <LONG_ANSWER>"``, e.g.
``"Yes. Results depicted mitochondrial dynamics ..."``. The official test split is
the set of keys of ``test_ground_truth.json`` (500 PMIDs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from lorasum.data.records import Record
from lorasum.data.sources._io import bump, get_str, load_json, skip_or_raise
from lorasum.errors import DataError

__all__ = ["DECISIONS", "load_pubmedqa", "load_pubmedqa_test_ids"]

#: Values of ``final_decision``.
DECISIONS = ("yes", "no", "maybe")


def _object(path: Path) -> dict:
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object keyed by PMID, got {type(data).__name__}")
    return data


def load_pubmedqa_test_ids(path: str | os.PathLike) -> set[str]:
    """The PMIDs of the official test split: the keys of ``test_ground_truth.json``.

    Raises:
        DataError: unreadable / malformed file, or not a non-empty JSON object.
    """
    path = Path(path)
    data = _object(path)
    if not data:
        raise DataError(f"{path}: no test ids (empty JSON object)")
    return set(data)


def _contexts(value: Any, where: str) -> str:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: field 'CONTEXTS' must be a list of strings")
    return "\n".join(c.strip() for c in value if c.strip())


def _record(rec: Any, where: str, include_contexts: bool) -> tuple[str, str, str]:
    """``(question, answer text, context)`` of one PQA-L record."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    question = get_str(rec, "QUESTION", where).strip()
    long_answer = get_str(rec, "LONG_ANSWER", where).strip()
    decision = get_str(rec, "final_decision", where).strip().lower()
    if decision not in DECISIONS:
        raise DataError(f"{where}: field 'final_decision' is {decision!r}, expected yes, no or maybe")
    context = _contexts(rec.get("CONTEXTS"), where) if include_contexts else ""
    answer = f"{decision.capitalize()}. {long_answer}" if long_answer else f"{decision.capitalize()}."
    return question, answer, context


def load_pubmedqa(
    path: str | os.PathLike,
    *,
    domain: str = "pubmedqa",
    include_contexts: bool = False,
    skip_bad_rows: bool = False,
    stats: MutableMapping[str, Any] | None = None,
) -> Iterator[Record]:
    """Yield one :class:`Record` per PMID of ``ori_pqal.json``, in file order.

    Ids are ``"pubmedqa/<PMID>"``, the group is the PMID, ``source`` is
    ``"<file name>:<PMID>"``. ``context`` is empty unless ``include_contexts``, in which
    case it is the ``CONTEXTS`` sections, one per line. With ``skip_bad_rows`` a malformed
    record is skipped and counted in ``stats["bad_rows"]`` instead of raising.

    Raises:
        DataError: unreadable / malformed file, top level not an object, a record that is not
            an object, a missing / non-string ``QUESTION``, ``LONG_ANSWER`` or ``final_decision``,
            or a decision other than yes / no / maybe (message names the file and PMID).
    """
    path = Path(path)
    for pmid, rec in _object(path).items():
        where = f"{path}: record {pmid}"
        try:
            question, answer, context = _record(rec, where, include_contexts)
        except DataError as e:
            skip_or_raise(e, skip_bad_rows, stats)
            continue
        bump(stats, "records")
        yield Record(
            id=f"pubmedqa/{pmid}", domain=domain, question=question, answer=answer, context=context,
            group=f"pubmedqa/{pmid}", source=f"{path.name}:{pmid}",
        )
