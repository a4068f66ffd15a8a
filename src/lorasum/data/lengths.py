"""Token lengths of examples: percentiles, truncation rate, what truncation cuts, and dropping over-long rows.

The length of a record is the number of tokens :func:`~lorasum.data.tokenize.encode_record`
gives it without truncation (special tokens, prompt, answer and eos), so it is exactly what
training and evaluation would see before cutting to ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lorasum.data.records import Record
from lorasum.data.tokenize import encode_records
from lorasum.errors import ConfigError

__all__ = ["PERCENTILES", "token_lengths", "length_summary", "drop_long_records", "describe_domain",
           "truncation_counts", "domain_truncation", "truncation_warning", "TRUNCATION_SPLITS"]

#: Percentiles reported by :func:`length_summary`.
PERCENTILES = (50, 90, 99)


def token_lengths(records: Sequence[Record], tokenizer: Any) -> list[int]:
    """Untruncated token count of each record (``len(encode_record(tokenizer, r, None).input_ids)``)."""
    return [len(e.input_ids) for e in encode_records(tokenizer, records, None)]


def length_summary(lengths: Sequence[int], max_length: int | None = None) -> dict[str, float | int | None]:
    """Percentiles of token lengths and the share of examples over ``max_length``.

    Returns:
        ``{"p50", "p90", "p99"}`` (numpy's linear-interpolation percentiles, in tokens), ``"max"``,
        ``"mean"``, ``"over_max_length"`` (count with length > ``max_length``) and
        ``"truncation_rate"`` (that count / number of examples; None without ``max_length``).
        All None for no examples.
    """
    keys = [f"p{p}" for p in PERCENTILES]
    if not len(lengths):
        return {**dict.fromkeys(keys), "max": None, "mean": None, "over_max_length": None, "truncation_rate": None}
    arr = np.asarray(lengths, dtype=np.float64)
    out: dict[str, float | int | None] = {k: float(v) for k, v in zip(keys, np.percentile(arr, PERCENTILES))}
    out["max"] = int(arr.max())
    out["mean"] = float(arr.mean())
    over = int((arr > max_length).sum()) if max_length is not None else None
    out["over_max_length"] = over
    out["truncation_rate"] = over / len(arr) if over is not None else None
    return out


def drop_long_records(
    records: Sequence[Record], tokenizer: Any, max_length: int
) -> tuple[list[Record], dict[str, int]]:
    """Drop the records that :func:`~lorasum.data.tokenize.encode_record` would truncate
    (more than ``max_length`` tokens), keeping the order of the rest.

    Returns:
        ``(kept, {"input": n, "too_long": dropped, "output": len(kept)})``.

    Raises:
        ConfigError: ``max_length`` is not positive.
    """
    if max_length <= 0:
        raise ConfigError(f"max_length must be positive, got {max_length}")
    kept = [r for r, e in zip(records, encode_records(tokenizer, records, max_length)) if not e.truncated]
    return kept, {"input": len(records), "too_long": len(records) - len(kept), "output": len(kept)}


def describe_domain(data: Any, tokenizer: Any = None, max_length: int | None = None) -> dict[str, Any]:
    """Per-split statistics of a :class:`~lorasum.data.presets.DomainData` (what ``lorasum data stats`` shows).

    Returns:
        ``{"records_loaded", "removed": {cause: count}, "duplicates_removed", "content_hash",
        "max_length", "splits": {"all" | "train" | "validation" | "test": {"records", "groups",
        "tokens"}}}``; ``tokens`` is :func:`length_summary` at ``max_length`` (the domain's own
        limit when it has one), or None without a tokenizer. ``"all"`` is the union of the splits.
    """
    limit = data.max_length or max_length
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    lengths = {k: token_lengths(v, tokenizer) for k, v in splits.items()} if tokenizer is not None else None
    rows: dict[str, dict[str, Any]] = {}
    for name, recs in (("all", data.train + data.validation + data.test), *splits.items()):
        tokens = None
        if lengths is not None:
            ls = [n for k in splits for n in lengths[k]] if name == "all" else lengths[name]
            tokens = length_summary(ls, limit)
        rows[name] = {"records": len(recs), "groups": len({r.split_key for r in recs}), "tokens": tokens}
    removed = dict(data.report.get("removed", {}))
    return {
        "records_loaded": data.report.get("loaded"),
        "removed": removed,
        "duplicates_removed": removed.get("exact_duplicates", 0) + removed.get("normalized_duplicates", 0),
        "content_hash": data.content_hash,
        "max_length": limit,
        "splits": rows,
    }


#: The splits :func:`domain_truncation` counts by default.
TRUNCATION_SPLITS = ("train", "validation", "test")


def truncation_counts(records: Sequence[Record], tokenizer: Any, max_length: int) -> dict[str, int]:
    """What cutting ``records`` to ``max_length`` tokens loses, exactly as training and evaluation cut them
    (:func:`~lorasum.data.tokenize.encode_records`: the context's end first, then the answer's end, then the
    question's beginning).

    Returns:
        ``{"examples", "truncated"`` (examples over ``max_length``), ``"answer_cut"`` (of those, the ones
        that lose answer tokens: the answer's end or its eos), ``"prompt_only"`` (the ones that lose only
        context or question tokens; their answer is whole), ``"question_cut"`` (the ones that lose the
        beginning of their question, which is cut last), ``"answer_tokens"`` (answer tokens, eos included,
        of all the examples before cutting) and ``"answer_tokens_cut"`` (of those, the ones cut)``}``.
    """
    encoded = encode_records(tokenizer, list(records), max_length)
    cut = [e for e in encoded if e.truncated]
    answer = sum(1 for e in cut if e.answer_cut)
    return {"examples": len(encoded), "truncated": len(cut), "answer_cut": answer, "prompt_only": len(cut) - answer,
            "question_cut": sum(1 for e in cut if e.question_cut),
            "answer_tokens": sum(e.n_answer_tokens + e.answer_cut for e in encoded),
            "answer_tokens_cut": sum(e.answer_cut for e in cut)}


def domain_truncation(data: Any, tokenizer: Any, max_length: int, *, splits: Sequence[str] = TRUNCATION_SPLITS,
                      windows: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`truncation_counts` of each of ``splits`` of a :class:`~lorasum.data.presets.DomainData`, with its
    ``long_rows`` policy (what results.json's data section and the report show).

    Args:
        max_length: the limit the examples are cut at.
        windows: splits that are scored in sliding windows (``eval.stride``) and so never cut: counted as
            whole, with ``"sliding_windows": True``, without tokenising them.

    Returns:
        ``{"max_length", "long_rows"`` (``"truncate"`` or ``"drop"``), ``"splits": {split: counts}}``; each
        split's counts also hold ``"dropped"``, the examples left out as too long (``data.long_rows: drop``,
        at the domain's limit; 0 otherwise).
    """
    long_rows = data.report.get("long_rows") or {}
    dropped = long_rows.get("splits") or {}
    out: dict[str, Any] = {"max_length": max_length, "long_rows": long_rows.get("policy", "truncate"), "splits": {}}
    for split in splits:
        records = getattr(data, split)
        if split in windows:
            counts = {"examples": len(records), "truncated": 0, "answer_cut": 0, "prompt_only": 0, "question_cut": 0,
                      "sliding_windows": True}
        else:
            counts = truncation_counts(records, tokenizer, max_length)
        counts["dropped"] = int((dropped.get(split) or {}).get("too_long") or 0)
        out["splits"][split] = counts
    return out


def truncation_warning(domain: str, split: str, counts: dict[str, int], max_length: int, *,
                       setting: str = "data.max_length", flag: str | None = None) -> str | None:
    """One line saying how many examples of a split are cut, what they lose and how to avoid it; None when
    none is cut.

    Args:
        counts: :func:`truncation_counts` of the split.
        setting: the config key that sets ``max_length`` (``custom_domains.NAME.max_length`` for a custom
            domain's own limit).
        flag: the command-line flag that sets it too, if any (``--max-length``).
    """
    n, k = counts.get("examples") or 0, counts.get("truncated") or 0
    if not k or not n:
        return None
    parts = []
    answer, prompt = counts.get("answer_cut") or 0, counts.get("prompt_only") or 0
    if answer:
        total, lost = counts.get("answer_tokens") or 0, counts.get("answer_tokens_cut") or 0
        share = f", {100 * lost / total:.1f} %" if total else ""
        unused = _UNUSED.get(split, "not used")
        parts.append(f"{answer} lose the end of their answer ({lost} of the split's {total} answer tokens{share}, "
                     f"{unused})")
    if prompt:
        parts.append(f"{prompt} lose only context or question tokens (their answer is whole)")
    question = counts.get("question_cut") or 0
    if question:
        parts.append(f"{question} of them also lose the beginning of their question")
    how = f"{setting} ({flag})" if flag else setting
    drop = ("data.long_rows: drop would leave none" if k == n else
            "or set data.long_rows: drop to leave them out")
    return (f"data {domain} {split}: {k} of {n} examples ({100 * k / n:.1f} %) are longer than {max_length} tokens "
            f"({setting}) and are cut: {'; '.join(parts)}. To keep them whole, raise {how} (`lorasum data stats` "
            f"shows the token lengths){'; ' if k == n else ', '}{drop}")


#: What happens to the answer tokens cut from an example of each split.
_UNUSED = {"train": "never trained on", "validation": "left out of the validation loss",
           "test": "never scored"}
