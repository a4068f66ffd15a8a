"""Text clean-up and duplicate removal (pure functions; every removal is counted)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable

from lorasum.data.records import Record

__all__ = [
    "normalize_text",
    "dedup_key",
    "dedup_digest",
    "clean_record",
    "deduplicate",
    "clean_records",
]

_HSPACE = re.compile(r"[^\S\n]+")  # whitespace other than a newline
_BLANKS = re.compile(r"\n{3,}")
_NON_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str, *, keep_newlines: bool = True) -> str:
    """Unicode NFC, then whitespace collapse.

    With ``keep_newlines`` (answers, contexts: GSM8K steps and table rows are lines),
    ``\\r\\n``/``\\r`` become ``\\n``, runs of other whitespace become one space, every line
    is stripped and at most one blank line is kept in a row. Without it, all whitespace
    runs become one space. Leading / trailing whitespace is removed.
    """
    text = unicodedata.normalize("NFC", text)
    if not keep_newlines:
        return " ".join(text.split())
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_HSPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _loose(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def dedup_key(question: str, answer: str) -> str:
    """Loose key of a question-answer pair: NFKC, case-folded, punctuation and
    whitespace runs reduced to one space. ``"What is (are) X ?"`` and ``"what is are x"``
    share a key. Used by :func:`deduplicate` and the split leakage check."""
    return f"{_loose(question)}\x1f{_loose(answer)}"


@functools.lru_cache(maxsize=1 << 16)
def dedup_digest(question: str, answer: str) -> bytes:
    """BLAKE2b digest (16 bytes) of :func:`dedup_key`; memoised, since cleaning and the
    leakage check both key the same records."""
    return hashlib.blake2b(dedup_key(question, answer).encode(), digest_size=16).digest()


def clean_record(record: Record) -> Record:
    """``record`` with :func:`normalize_text` applied: the question on one line, the
    answer and context keeping their line breaks."""
    return dataclasses.replace(
        record,
        question=normalize_text(record.question, keep_newlines=False),
        answer=normalize_text(record.answer),
        context=normalize_text(record.context),
    )


def deduplicate(records: Iterable[Record]) -> tuple[list[Record], dict[str, int]]:
    """Drop repeated question-answer pairs, keeping the first occurrence (order kept).

    Returns:
        ``(kept, counts)`` with counts ``exact_duplicates`` (identical question and answer
        strings) and ``normalized_duplicates`` (further pairs equal under :func:`dedup_key`).
        The context is not part of the key.
    """
    exact: set[tuple[str, str]] = set()
    loose: set[bytes] = set()
    kept: list[Record] = []
    counts = {"exact_duplicates": 0, "normalized_duplicates": 0}
    for r in records:
        if (r.question, r.answer) in exact:
            counts["exact_duplicates"] += 1
            continue
        exact.add((r.question, r.answer))
        key = dedup_digest(r.question, r.answer)
        if key in loose:
            counts["normalized_duplicates"] += 1
            continue
        loose.add(key)
        kept.append(r)
    return kept, counts


def clean_records(records: Iterable[Record]) -> tuple[list[Record], dict[str, int]]:
    """Normalise every record (:func:`clean_record`), drop those left with an empty
    question or answer, then :func:`deduplicate`.

    Returns:
        ``(kept, counts)``: counts ``input``, ``empty_after_cleaning``,
        ``exact_duplicates``, ``normalized_duplicates`` and ``output``.
    """
    cleaned, empty, n = [], 0, 0
    for r in records:
        n += 1
        c = clean_record(r)
        if not c.question or not c.answer:
            empty += 1
            continue
        cleaned.append(c)
    kept, counts = deduplicate(cleaned)
    return kept, {"input": n, "empty_after_cleaning": empty, **counts, "output": len(kept)}
