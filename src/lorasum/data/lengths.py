"""Token lengths of examples: percentiles, truncation rate, and dropping over-long rows.

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

__all__ = ["PERCENTILES", "token_lengths", "length_summary", "drop_long_records", "describe_domain"]

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
