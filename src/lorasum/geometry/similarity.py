"""Pairwise orthogonality report for a set of adapters."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from lorasum.adapters import Adapter
from lorasum.geometry.inner import frobenius_norm, module_cosines, rms

__all__ = ["PairStats", "Similarity", "similarity"]


@dataclass(frozen=True)
class PairStats:
    """Cosines of one pair of adapters.

    Attributes:
        a, b: adapter names.
        cosines: module path → cos(ΔW_a, ΔW_b) over the union of the pair's modules
            (0.0 where a module is absent from one adapter or a ΔW is zero).
        rms: sqrt(mean over modules of cos²), the pair's "RMS cosine".
        mean_abs: mean over modules of |cos|.
        max_abs: max over modules of |cos|.
    """

    a: str
    b: str
    cosines: dict[str, float]
    rms: float
    mean_abs: float
    max_abs: float

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"a": self.a, "b": self.b, "rms": self.rms, "mean_abs": self.mean_abs,
                "max_abs": self.max_abs, "cosines": dict(self.cosines)}


@dataclass(frozen=True)
class Similarity:
    """Orthogonality of a named set of adapters (arXiv 2508.11985 measures it by RMS cosine).

    Attributes:
        names: adapter names, in input order.
        pairs: (a, b) with a before b in ``names`` → :class:`PairStats`.
        norms: name → module path → ‖ΔW‖_F.
        matrix: N×N RMS cosines, ``matrix[i][j]`` for ``names[i]``, ``names[j]``
            (symmetric; the diagonal is an adapter's RMS cosine with itself, 1.0 unless a ΔW is zero).
    """

    names: tuple[str, ...]
    pairs: dict[tuple[str, str], PairStats]
    norms: dict[str, dict[str, float]]
    matrix: tuple[tuple[float, ...], ...]

    def pair(self, a: str, b: str) -> PairStats:
        """The stats of a pair, in either order.

        Raises:
            KeyError: unknown name or a == b.
        """
        return self.pairs[(a, b)] if (a, b) in self.pairs else self.pairs[(b, a)]

    def combination_rms(self, names: Iterable[str]) -> float:
        """RMS cosine of a set of ≥2 adapters: sqrt of the mean of cos² over all pairs in
        the set and all modules in the union of the set's modules (a module outside a
        pair's union counts as cosine 0 for that pair). For two adapters whose modules
        coincide this is the pair's ``rms``.

        Raises:
            ValueError: fewer than two distinct names.
            KeyError: an unknown name.
        """
        names = list(dict.fromkeys(names))
        if len(names) < 2:
            raise ValueError(f"combination_rms needs at least two adapters, got {names}")
        modules = sorted({m for n in names for m in self.norms[n]})
        values = [self.pair(a, b).cosines.get(m, 0.0)
                  for a, b in itertools.combinations(names, 2) for m in modules]
        return rms(values)

    def to_dict(self) -> dict:
        """JSON-ready dict: names, matrix, pairs (list), norms."""
        return {"names": list(self.names), "matrix": [list(row) for row in self.matrix],
                "pairs": [p.to_dict() for p in self.pairs.values()],
                "norms": {n: dict(m) for n, m in self.norms.items()}}


def _stats(a: str, b: str, cos: dict[str, float]) -> PairStats:
    vals = list(cos.values())
    if not vals:
        return PairStats(a, b, cos, math.nan, math.nan, math.nan)
    return PairStats(a, b, cos, rms(vals), sum(abs(v) for v in vals) / len(vals), max(abs(v) for v in vals))


def similarity(adapters: dict[str, Adapter]) -> Similarity:
    """Per-pair, per-module cosines, their RMS / mean |cos| / max |cos|, per-module
    Frobenius norms and the N×N matrix of RMS cosines, all from the factors (float64).

    Raises:
        AdapterError: a shared module's ΔW shape differs between two adapters.
    """
    names = tuple(adapters)
    pairs = {(a, b): _stats(a, b, module_cosines(adapters[a], adapters[b]))
             for a, b in itertools.combinations(names, 2)}
    norms = {n: {m: frobenius_norm(f) for m, f in sorted(adapters[n].factors.items())} for n in names}
    diag = {n: _stats(n, n, module_cosines(adapters[n], adapters[n])).rms for n in names}
    matrix = tuple(tuple(diag[a] if a == b else (pairs.get((a, b)) or pairs[(b, a)]).rms for b in names)
                   for a in names)
    return Similarity(names=names, pairs=pairs, norms=norms, matrix=matrix)
