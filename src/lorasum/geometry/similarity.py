"""Pairwise orthogonality report for a set of adapters.

Per pair and module: the cosine of ΔW (arXiv 2508.11985's orthogonality measure, computed
from the factors for all pairs at once, :mod:`lorasum.geometry.gram`), the principal-angle
overlap of the factor subspaces (:mod:`lorasum.geometry.subspace`), the ratio of Frobenius
norms, and the random baseline |cos| of unrelated updates of the same shapes and ranks
(:mod:`lorasum.geometry.baseline`); summaries per pair, per layer and for the N×N matrix.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from lorasum.adapters import Adapter, check_same_base_model
from lorasum.geometry.baseline import expected_abs_cosine, expected_rms_cosine
from lorasum.geometry.gram import cosine_matrices
from lorasum.geometry.inner import frobenius_norm, rms
from lorasum.geometry.layers import group_by_layer, natural_key
from lorasum.geometry.subspace import orthonormal_basis, overlap

__all__ = ["PairStats", "Similarity", "json_safe", "similarity"]

log = logging.getLogger("lorasum")


@dataclass(frozen=True)
class PairStats:
    """Cosines and related geometry of one pair of adapters.

    Attributes:
        a, b: adapter names.
        cosines: module path → cos(ΔW_a, ΔW_b) over the union of the pair's modules
            (0.0 where a module is absent from one adapter; NaN, undefined, where the module's
            ΔW has zero norm in either: see :mod:`lorasum.geometry.inner`).
        rms: sqrt(mean over modules of cos²), the pair's "RMS cosine".
        mean_abs: mean over modules of |cos|.
        max_abs: max over modules of |cos|. These three are NaN when any cosine is NaN: a
            summary over a module whose cosine is undefined is undefined too.
        column_overlap: module → mean cos² of the principal angles between the column spaces
            of B_a and B_b (0.0 where a module is absent from one adapter).
        row_overlap: the same for the row spaces of A_a and A_b.
        norm_ratio: module → ‖ΔW_a‖_F / ‖ΔW_b‖_F on shared modules (inf if only ΔW_b is 0,
            nan if both are).
        baseline_abs: module → E|cos| of independent random updates of the same shapes and
            ranks (:func:`~lorasum.geometry.baseline.expected_abs_cosine`), shared modules.
        baseline_rms: the RMS cosine expected under that null model over the pair's modules
            (exact in the squared sense; absent modules count 0 as in ``rms``).
        layer_rms: layer index → RMS cosine over the pair's modules in that layer (paths
            without a layer index are left out).
    """

    a: str
    b: str
    cosines: dict[str, float]
    rms: float
    mean_abs: float
    max_abs: float
    column_overlap: dict[str, float] = field(default_factory=dict)
    row_overlap: dict[str, float] = field(default_factory=dict)
    norm_ratio: dict[str, float] = field(default_factory=dict)
    baseline_abs: dict[str, float] = field(default_factory=dict)
    baseline_rms: float = math.nan
    layer_rms: dict[int, float] = field(default_factory=dict)

    @property
    def undefined(self) -> list[str]:
        """Modules whose cosine is NaN (a ΔW of zero norm), in natural order (``h.2`` before ``h.10``)."""
        return sorted((m for m, c in self.cosines.items() if math.isnan(c)), key=natural_key)

    def to_dict(self) -> dict:
        """JSON-ready dict (layer keys as strings); NaN and ±inf (undefined cosines and summaries, a
        norm ratio with a zero ΔW) become None, so ``json.dumps(..., allow_nan=False)`` works and
        the JSON has ``null`` where a strict reader would choke on ``NaN``/``Infinity``."""
        return json_safe({"a": self.a, "b": self.b, "rms": self.rms, "mean_abs": self.mean_abs,
                          "max_abs": self.max_abs, "cosines": dict(self.cosines),
                          "baseline_rms": self.baseline_rms, "baseline_abs": dict(self.baseline_abs),
                          "column_overlap": dict(self.column_overlap), "row_overlap": dict(self.row_overlap),
                          "norm_ratio": dict(self.norm_ratio),
                          "layer_rms": {str(k): v for k, v in self.layer_rms.items()}})


@dataclass(frozen=True)
class Similarity:
    """Orthogonality of a named set of adapters (arXiv 2508.11985 measures it by RMS cosine).

    Attributes:
        names: adapter names, in input order.
        pairs: (a, b) with a before b in ``names`` → :class:`PairStats`.
        norms: name → module path → ‖ΔW‖_F.
        matrix: N×N RMS cosines, ``matrix[i][j]`` for ``names[i]``, ``names[j]``
            (symmetric; the diagonal is an adapter's RMS cosine with itself, 1.0 unless a ΔW has
            zero norm, NaN then).
        shapes: module path → ΔW shape (d_out, d_in), over all adapters' modules.
        ranks: name → module path → LoRA rank r.
    """

    names: tuple[str, ...]
    pairs: dict[tuple[str, str], PairStats]
    norms: dict[str, dict[str, float]]
    matrix: tuple[tuple[float, ...], ...]
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    ranks: dict[str, dict[str, int]] = field(default_factory=dict)

    def pair(self, a: str, b: str) -> PairStats:
        """The stats of a pair, in either order.

        Raises:
            KeyError: unknown name or a == b.
        """
        return self.pairs[(a, b)] if (a, b) in self.pairs else self.pairs[(b, a)]

    def _combination(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        names = list(dict.fromkeys(names))
        if len(names) < 2:
            raise ValueError(f"combination_rms needs at least two adapters, got {names}")
        return names, sorted({m for n in names for m in self.norms[n]})

    def combination_rms(self, names: Iterable[str]) -> float:
        """RMS cosine of a set of ≥2 adapters: sqrt of the mean of cos² over all pairs in
        the set and all modules in the union of the set's modules (a module outside a
        pair's union counts as cosine 0 for that pair). For two adapters whose modules
        coincide this is the pair's ``rms``. NaN when a cosine in the set is NaN (a ΔW of
        zero norm).

        Raises:
            ValueError: fewer than two distinct names.
            KeyError: an unknown name.
        """
        names, modules = self._combination(names)
        values = [self.pair(a, b).cosines.get(m, 0.0)
                  for a, b in itertools.combinations(names, 2) for m in modules]
        return rms(values)

    def combination_baseline_rms(self, names: Iterable[str]) -> float:
        """The random-baseline counterpart of :meth:`combination_rms` (same pairs and modules;
        E[cos²] = 1/(d_out·d_in) where both adapters have the module, 0 otherwise).

        Raises:
            ValueError: fewer than two distinct names.
            KeyError: an unknown name.
        """
        names, modules = self._combination(names)
        return expected_rms_cosine(self.shapes[m] if m in self.norms[a] and m in self.norms[b] else None
                                   for a, b in itertools.combinations(names, 2) for m in modules)

    @property
    def layers(self) -> list[int]:
        """Sorted layer indices of the adapted modules."""
        return list(group_by_layer(self.shapes))

    def to_dict(self) -> dict:
        """JSON-ready dict: names, matrix, pairs (list), norms, shapes, ranks, layers; non-finite
        numbers (undefined cosines) as None (see :meth:`PairStats.to_dict`)."""
        return json_safe({"names": list(self.names), "matrix": [list(row) for row in self.matrix],
                          "pairs": [p.to_dict() for p in self.pairs.values()],
                          "norms": {n: dict(m) for n, m in self.norms.items()},
                          "shapes": {m: list(s) for m, s in self.shapes.items()},
                          "ranks": {n: dict(r) for n, r in self.ranks.items()}, "layers": self.layers})


def json_safe(obj):
    """``obj`` with every float that is NaN or ±inf replaced by None, through dicts, lists and
    tuples (tuples become lists): what JSON can hold (``null``) for an undefined number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _summary(cos: dict[str, float]) -> tuple[float, float, float]:
    """(RMS, mean |cos|, max |cos|); all NaN when there is no value or any value is NaN."""
    vals = list(cos.values())
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan, math.nan, math.nan
    return rms(vals), sum(abs(v) for v in vals) / len(vals), max(abs(v) for v in vals)


def _ratio(x: float, y: float) -> float:
    if y > 0:
        return x / y
    return math.inf if x > 0 else math.nan


def _pair(a: str, b: str, ads: dict[str, Adapter], cos: dict[str, float], norms: dict, bases: dict) -> PairStats:
    fa, fb = ads[a].factors, ads[b].factors
    shared = [m for m in cos if m in fa and m in fb]
    col = {m: overlap(bases[a, m][0], bases[b, m][0]) if m in shared else 0.0 for m in cos}
    row = {m: overlap(bases[a, m][1], bases[b, m][1]) if m in shared else 0.0 for m in cos}
    layer_rms = {i: rms(cos[m] for m in ms) for i, ms in group_by_layer(cos).items()}
    return PairStats(
        a, b, cos, *_summary(cos), column_overlap=col, row_overlap=row,
        norm_ratio={m: _ratio(norms[a][m], norms[b][m]) for m in shared},
        baseline_abs={m: expected_abs_cosine(*fa[m].shape, fa[m].rank, fb[m].rank) for m in shared},
        baseline_rms=expected_rms_cosine(fa[m].shape if m in shared else None for m in cos) if cos else math.nan,
        layer_rms=layer_rms)


def similarity(adapters: dict[str, Adapter]) -> Similarity:
    """Per-pair, per-module cosines, their RMS / mean |cos| / max |cos|, subspace overlaps,
    norm ratios, random baselines, per-layer RMS, per-module Frobenius norms and the N×N
    matrix of RMS cosines, all from the factors (float64, no dense ΔW).

    The adapters must share a base model (:func:`lorasum.adapters.check_same_base_model`: the
    record of their ``lorasum.json``, else ``base_model_name_or_path``); a caveat (same config,
    other source) is logged as a warning.

    Raises:
        AdapterError: the adapters were trained on different base models (the message names
            both adapters and their base models); a shared module's ΔW shape differs between
            two adapters.

    A pair that shares no module (possible for adapters of one model with other target modules, likely
    for adapters of different models that recorded none) gets cosine 0 everywhere and a logged warning.
    """
    names = tuple(adapters)
    ads = [adapters[n] for n in names]
    check_same_base_model(ads)
    cmats = cosine_matrices(ads)
    norms = {n: {m: frobenius_norm(f) for m, f in sorted(adapters[n].factors.items())} for n in names}
    bases = {(n, m): (orthonormal_basis(f.B), orthonormal_basis(f.A.T))
             for n in names for m, f in adapters[n].factors.items()}
    pairs = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        if not set(adapters[a].factors) & set(adapters[b].factors):
            log.warning("%s and %s share no adapted module: their ΔW are orthogonal by construction (cosine 0); "
                        "adapters of different base models?", a, b)
        union = sorted(set(adapters[a].factors) | set(adapters[b].factors))
        cos = {m: float(cmats[m][i, j]) for m in union}
        pairs[(a, b)] = _pair(a, b, adapters, cos, norms, bases)
    diag = {n: _summary({m: float(cmats[m][i, i]) for m in adapters[n].factors})[0] for i, n in enumerate(names)}
    matrix = tuple(tuple(diag[a] if a == b else (pairs.get((a, b)) or pairs[(b, a)]).rms for b in names)
                   for a in names)
    shapes = {m: next(a.factors[m].shape for a in ads if m in a.factors) for m in cmats}
    ranks = {n: {m: f.rank for m, f in sorted(adapters[n].factors.items())} for n in names}
    return Similarity(names=names, pairs=pairs, norms=norms, matrix=matrix, shapes=shapes, ranks=ranks)
