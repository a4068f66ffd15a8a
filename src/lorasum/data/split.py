"""Deterministic, seeded, group-aware splits; subsampling; leakage checks (pure functions).

Randomness comes only from :class:`random.Random` seeded with an integer derived by
SHA-256 from ``(seed, purpose)``, applied to *sorted* keys, so results never depend on
``PYTHONHASHSEED``, set iteration order or the platform.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lorasum.data.clean import dedup_digest, dedup_key
from lorasum.data.records import Record
from lorasum.errors import ConfigError, DataError

__all__ = [
    "SPLITS",
    "Splits",
    "seeded_rng",
    "split_records",
    "carve_validation",
    "subsample",
    "check_leakage",
    "find_cross_domain_overlap",
    "check_cross_domain",
]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Splits:
    """Records of the three splits, each in the input order."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]

    def as_dict(self) -> dict[str, list[Record]]:
        """``{"train": ..., "validation": ..., "test": ...}``."""
        return {"train": self.train, "validation": self.validation, "test": self.test}


def seeded_rng(seed: int, purpose: str) -> random.Random:
    """A :class:`random.Random` seeded with the first 8 bytes of sha256(``"<seed>:<purpose>"``)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _target(fraction: float, n: int) -> int:
    return max(1, round(fraction * n)) if fraction > 0 and n else 0


def split_records(
    records: Sequence[Record],
    *,
    seed: int = 0,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.1,
) -> Splits:
    """Split by group (``Record.split_key``): a group never straddles two splits.

    The sorted group keys are shuffled by :func:`seeded_rng` (``seed``, ``"split"``); whole
    groups are then given to test until it holds at least ``round(test_fraction * n)``
    records (at least 1 if the fraction is > 0), then to validation likewise, and the rest
    to train. Large groups can make a split overshoot its target by less than one group.

    Raises:
        ConfigError: a fraction is negative or the two sum to 1 or more.
        DataError: no records, or too few groups to leave any for training.
    """
    for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {f}")
    if validation_fraction + test_fraction >= 1:
        raise ConfigError(f"validation_fraction + test_fraction must be < 1, got {validation_fraction + test_fraction}")
    if not records:
        raise DataError("cannot split: no records")
    sizes: dict[str, int] = {}
    for r in records:
        sizes[r.split_key] = sizes.get(r.split_key, 0) + 1
    keys = sorted(sizes)
    seeded_rng(seed, "split").shuffle(keys)
    n = len(records)
    assign: dict[str, str] = {}
    pos = 0
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        target, got = _target(fraction, n), 0
        while got < target and pos < len(keys):
            assign[keys[pos]] = name
            got += sizes[keys[pos]]
            pos += 1
    if pos >= len(keys):
        raise DataError(f"cannot split {n} records in {len(keys)} groups: no group left for training")
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in records:
        out[assign.get(r.split_key, "train")].append(r)
    return Splits(**out)


def carve_validation(
    pool: Sequence[Record], *, seed: int = 0, validation_fraction: float = 0.05
) -> tuple[list[Record], list[Record]]:
    """Split a training pool (where an official test split exists) into ``(train, validation)``,
    group-aware as :func:`split_records` with ``test_fraction=0``. Raises what it raises."""
    s = split_records(pool, seed=seed, validation_fraction=validation_fraction, test_fraction=0.0)
    return s.train, s.validation


def subsample(records: Sequence[Record], n: int | None, *, seed: int = 0, purpose: str = "") -> list[Record]:
    """A seeded random sample of ``n`` records, returned in the input order.

    ``n=None`` or ``n >= len(records)`` returns all of them. The sample is drawn with
    :func:`seeded_rng` (``seed``, ``"sample:<purpose>"``) over record positions.

    Raises:
        ConfigError: ``n`` is not positive.
    """
    if n is None or n >= len(records):
        return list(records)
    if n <= 0:
        raise ConfigError(f"sample size must be positive, got {n}")
    picked = sorted(seeded_rng(seed, f"sample:{purpose}").sample(range(len(records)), n))
    return [records[i] for i in picked]


def _first_overlap(a: dict[str, str], b: dict[str, str]) -> tuple[int, str | None]:
    common = a.keys() & b.keys()
    return len(common), (min(common) if common else None)


def check_leakage(splits: Splits | Mapping[str, Sequence[Record]]) -> None:
    """Refuse overlapping splits: no group (``split_key``), no id and no pair equal under
    :func:`~lorasum.data.clean.dedup_key` (question + answer) may appear in two splits.

    Raises:
        DataError: naming the two splits, the count of shared items and one example id.
    """
    named = splits.as_dict() if isinstance(splits, Splits) else dict(splits)
    index = {
        name: {
            "group": {r.split_key: r.id for r in recs},
            "id": {r.id: r.id for r in recs},
            "question+answer": {dedup_digest(r.question, r.answer): r.id for r in recs},
        }
        for name, recs in named.items()
    }
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for kind in ("group", "id", "question+answer"):
                count, key = _first_overlap(index[a][kind], index[b][kind])
                if count:
                    raise DataError(
                        f"leakage: {count} {kind} value(s) appear in both {a} and {b}, "
                        f"e.g. {index[a][kind][key]} and {index[b][kind][key]}"
                    )


def find_cross_domain_overlap(domains: Mapping[str, Sequence[Record]]) -> list[tuple[str, str, str, str]]:
    """Questions (case-folded, punctuation-free) that appear in more than one domain.

    Returns:
        Sorted ``(domain_a, id_a, domain_b, id_b)`` tuples, one per shared question and pair of domains.
    """
    seen: dict[str, dict[str, str]] = {}
    for domain in sorted(domains):
        for r in domains[domain]:
            seen.setdefault(dedup_key(r.question, ""), {}).setdefault(domain, r.id)
    out = []
    for per_domain in seen.values():
        doms = sorted(per_domain)
        out += [(a, per_domain[a], b, per_domain[b]) for i, a in enumerate(doms) for b in doms[i + 1:]]
    return sorted(out)


def check_cross_domain(domains: Mapping[str, Sequence[Record]]) -> None:
    """Refuse a question that appears in two domains (see :func:`find_cross_domain_overlap`).

    Raises:
        DataError: naming the count and one example pair of ids.
    """
    overlap = find_cross_domain_overlap(domains)
    if overlap:
        a, ia, b, ib = overlap[0]
        raise DataError(
            f"cross-domain overlap: {len(overlap)} question(s) appear in two domains, e.g. {ia} ({a}) and {ib} ({b})"
        )
