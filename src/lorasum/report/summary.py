"""Regroup a results dict (``results.json``, schema_version 1 or 2) for tables, plots and text.

The runner writes one row per (model, seed, evaluation domain) and one combination entry per
(domain set, seed). Here those rows are grouped across seeds: every summary holds per-seed
lists so that callers can report a single value (one seed) or mean ± std and a bootstrap CI
(several seeds). Number formatting lives here too so that every table uses the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lorasum.experiment.stats import mean_std_ci

__all__ = [
    "KIND_ORDER",
    "parallel_groups",
    "UNION",
    "ComboSummary",
    "CompositionSummary",
    "ModelSummary",
    "compositions",
    "domains_of",
    "combo_label",
    "combos",
    "models",
    "points",
    "seeds_of",
    "finite",
    "fmt",
    "cell",
    "ci_cell",
    "truncation_counts",
    "truncation_limit",
]

UNION = "union"
KIND_ORDER = ("base", "single", "merged", "sum", "hybrid", "composed")

_FORMATS = {
    "ppl": ("{:.3f}", "{:.3f}"),  # perplexity: 3 decimals
    "pct": ("{:+.2f}", "{:.2f}"),  # Δ %: sign and 2 decimals
    "cos": ("{:.4g}", "{:.3g}"),  # cosines: 4 significant digits
    "r": ("{:+.3f}", "{:.3f}"),  # correlation coefficients
    "p": ("{:.3g}", "{:.3g}"),  # p-values
    "num": ("{:.4g}", "{:.2g}"),  # anything else
    "int": ("{:,.0f}", "{:,.0f}"),
}
MISSING = "—"


def finite(v: Any) -> bool:
    """True for a real, finite number (not None, NaN, inf, a string, or an integer too large for a float)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond ~1.8e308 (a hand-edited results.json)
        return False


def fmt(v: Any, kind: str = "num") -> str:
    """Format one number by ``kind`` (ppl, pct, cos, r, p, num, int); missing or NaN → "—"."""
    return _FORMATS[kind][0].format(v) if finite(v) else MISSING


def cell(values: list[float], kind: str = "num") -> str:
    """One value, or ``mean ± std`` over seeds when there are several finite values."""
    vals = [v for v in values if finite(v)]
    if not vals:
        return MISSING
    if len(vals) == 1:
        return fmt(vals[0], kind)
    return f"{fmt(float(np.mean(vals)), kind)} ± {_FORMATS[kind][1].format(float(np.std(vals, ddof=1)))}"


def ci_cell(values: list[float], kind: str = "num") -> str:
    """``[low, high]``: 95 % percentile-bootstrap CI of the mean over seeds ("—" for < 2 values)."""
    s = mean_std_ci([v for v in values if finite(v)])
    if not finite(s["ci_low"]):
        return MISSING
    return f"[{fmt(s['ci_low'], kind)}, {fmt(s['ci_high'], kind)}]"


def domains_of(results: dict) -> list[str]:
    """The experiment's domains in config order (falls back to the data section's keys)."""
    doms = (results.get("config") or {}).get("domains")
    return list(doms) if doms else list((results.get("data") or {}).keys())


def seeds_of(results: dict) -> list[int]:
    """The experiment's seeds (config order, else those found in the combinations)."""
    seeds = (results.get("config") or {}).get("seeds")
    if seeds:
        return list(seeds)
    return sorted({c.get("seed") for c in results.get("combinations", []) if c.get("seed") is not None})


def combo_label(domains: list[str] | tuple[str, ...]) -> str:
    """Display name of a domain combination, e.g. ``math+medicine``."""
    return "+".join(domains)


@dataclass
class ComboSummary:
    """One domain combination across seeds; every list is aligned with ``seeds``."""

    domains: tuple[str, ...]
    seeds: list[Any] = field(default_factory=list)
    rms_cosine: list[float] = field(default_factory=list)
    ppl_sum: dict[str, list[float]] = field(default_factory=dict)
    ppl_merged: dict[str, list[float]] = field(default_factory=dict)
    change: dict[str, list[float]] = field(default_factory=dict)
    module_cosines: list[dict[str, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return combo_label(self.domains)

    def per_seed(self, name: str, eval_domain: str = UNION) -> list[float]:
        """Per-seed values of ``ppl_sum``, ``ppl_merged`` or ``change`` on ``eval_domain`` (NaN if absent)."""
        return getattr(self, name).get(eval_domain, [math.nan] * len(self.seeds))


def _num(v: Any) -> float:
    return float(v) if finite(v) else math.nan


def _append(target: dict[str, list[float]], values: dict, i: int) -> None:
    """Append seed ``i``'s per-domain values to ``target`` (domain → list), padding with NaN."""
    for dom, v in (values or {}).items():
        target.setdefault(dom, [math.nan] * i).append(_num(v))
    for vals in target.values():
        vals.extend([math.nan] * (i + 1 - len(vals)))


def combos(results: dict) -> list[ComboSummary]:
    """Combinations grouped across seeds, ordered by size, then by first appearance."""
    by_key: dict[frozenset, ComboSummary] = {}
    for c in results.get("combinations", []):
        doms = tuple(c.get("domains", []))
        s = by_key.setdefault(frozenset(doms), ComboSummary(domains=doms))
        i = len(s.seeds)
        s.seeds.append(c.get("seed"))
        s.rms_cosine.append(_num(c.get("rms_cosine")))
        s.module_cosines.append(dict(c.get("module_cosines") or {}))
        for name, src in (("ppl_sum", "ppl_sum"), ("ppl_merged", "ppl_merged"), ("change", "ppl_change_pct")):
            _append(getattr(s, name), c.get(src), i)
    return sorted(by_key.values(), key=lambda s: len(s.domains))


@dataclass
class CompositionSummary:
    """One composition of one domain combination across seeds, compared with the merged-data adapter.

    ``kind`` is ``sum`` (exact sum of the singles), ``hybrid`` (merged adapter of S∖{single} plus the
    single adapter of ``single``) or ``composed`` (the singles composed by ``method``).
    """

    domains: tuple[str, ...]
    kind: str
    method: str
    name: str
    single: str | None = None
    seeds: list[Any] = field(default_factory=list)
    rms_cosine: list[float] = field(default_factory=list)
    ppl: dict[str, list[float]] = field(default_factory=dict)
    ppl_merged: dict[str, list[float]] = field(default_factory=dict)
    change: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return combo_label(self.domains)

    @property
    def what(self) -> str:
        """What is composed: ``sum of singles``, ``merged(math+medicine) + finance`` or ``ties of singles``."""
        if self.kind == "hybrid":
            return f"merged({combo_label([d for d in self.domains if d != self.single])}) + {self.single}"
        return f"{self.method or 'sum'} of singles"

    def per_seed(self, name: str, eval_domain: str = UNION) -> list[float]:
        """Per-seed values of ``ppl``, ``ppl_merged`` or ``change`` on ``eval_domain`` (NaN if absent)."""
        return getattr(self, name).get(eval_domain, [math.nan] * len(self.seeds))


def _composition_rows(results: dict) -> list[dict]:
    rows = results.get("compositions")
    if isinstance(rows, list):
        return rows
    # schema_version 1 has only the sums, inside the combinations
    return [{"domains": c.get("domains", []), "seed": c.get("seed"), "kind": "sum", "method": "sum",
             "name": f"sum-{combo_label(c.get('domains', []))}", "rms_cosine": c.get("rms_cosine"),
             "ppl": c.get("ppl_sum"), "ppl_merged": c.get("ppl_merged"), "ppl_change_pct": c.get("ppl_change_pct")}
            for c in results.get("combinations", [])]


def compositions(results: dict) -> list[CompositionSummary]:
    """Compositions grouped across seeds, ordered by combination (as :func:`combos`), then sum,
    hybrids, other methods."""
    by_name: dict[str, CompositionSummary] = {}
    for r in _composition_rows(results):
        doms = tuple(r.get("domains", []))
        name = r.get("name") or combo_label(doms)
        s = by_name.setdefault(name, CompositionSummary(
            domains=doms, kind=r.get("kind", "sum"), method=r.get("method", "sum"), name=name,
            single=r.get("single")))
        i = len(s.seeds)
        s.seeds.append(r.get("seed"))
        s.rms_cosine.append(_num(r.get("rms_cosine")))
        for name, src in (("ppl", "ppl"), ("ppl_merged", "ppl_merged"), ("change", "ppl_change_pct")):
            _append(getattr(s, name), r.get(src), i)
    combo_rank = {frozenset(c.domains): i for i, c in enumerate(combos(results))}
    first = {name: i for i, name in enumerate(by_name)}

    def key(s: CompositionSummary) -> tuple:
        kind = KIND_ORDER.index(s.kind) if s.kind in KIND_ORDER else len(KIND_ORDER)
        return (len(s.domains), combo_rank.get(frozenset(s.domains), len(combo_rank)), kind, first[s.name])

    return sorted(by_name.values(), key=key)


@dataclass
class ModelSummary:
    """One evaluated model (base, single adapter, merged-data adapter or adapter sum)."""

    name: str
    kind: str
    domains: tuple[str, ...]
    ppl: dict[str, list[float]] = field(default_factory=dict)  # eval_domain -> one value per seed
    method: str = ""


def models(results: dict) -> list[ModelSummary]:
    """Evaluated models in report order: base, singles (domain order), merged, sums (combination order)."""
    by_name: dict[str, ModelSummary] = {}
    for e in results.get("evaluations", []):
        m = by_name.setdefault(
            e["model"], ModelSummary(name=e["model"], kind=e.get("kind", ""), domains=tuple(e.get("domains") or ()),
                                     method=e.get("method") or "")
        )
        m.ppl.setdefault(e.get("eval_domain", UNION), []).append(_num(e.get("ppl")))
    dom_rank = {d: i for i, d in enumerate(domains_of(results))}
    combo_rank = {frozenset(c.domains): i for i, c in enumerate(combos(results))}
    first = {name: i for i, name in enumerate(by_name)}

    def key(m: ModelSummary) -> tuple:
        kind = KIND_ORDER.index(m.kind) if m.kind in KIND_ORDER else len(KIND_ORDER)
        if m.kind == "single" and len(m.domains) == 1:
            sub = dom_rank.get(m.domains[0], len(dom_rank))
        else:
            sub = combo_rank.get(frozenset(m.domains), len(combo_rank))
        return (kind, len(m.domains), sub, first[m.name])

    return sorted(by_name.values(), key=key)


def points(results: dict, eval_domain: str = UNION, size: int | None = None) -> list[tuple[str, Any, float, float]]:
    """(combination label, seed, RMS cosine, Δ perplexity % on ``eval_domain``), one per combination and seed.

    ``size`` keeps only combinations of that many domains (2: pairs).
    """
    out = []
    for s in combos(results):
        if size is not None and len(s.domains) != size:
            continue
        for seed, x, y in zip(s.seeds, s.rms_cosine, s.per_seed("change", eval_domain), strict=True):
            out.append((s.label, seed, x, y))
    return out


def parallel_groups(results: dict) -> str | None:
    """How the trained adapters were trained together, in words, or None if one after the other.

    From each adapter's ``train.parallel_adapters`` (what happened); results written before that
    field existed fall back to the config's ``train.parallel_adapters``."""
    trained = [a["train"] for a in results.get("adapters", []) if a.get("train")]
    sizes = [t["parallel_adapters"] for t in trained if "parallel_adapters" in t]
    if not sizes:
        setting = ((results.get("config") or {}).get("train") or {}).get("parallel_adapters", 1)
        return None if setting == 1 or not trained else (
            f"{len(trained)} adapters trained {'all together' if setting == 0 else f'{setting} at a time'}")
    together = [n for n in sizes if n > 1]
    if not together:
        return None
    return (f"{len(together)} of the {len(sizes)} trained adapters trained together in groups of "
            f"{', '.join(str(n) for n in sorted(set(together), reverse=True))}")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def truncation_counts(results: dict, domain: str, split: str) -> dict | None:
    """How many of a domain's ``split`` examples were cut at ``data.max_length`` (results.json's
    ``data.<domain>.truncation.splits.<split>``), or None where results.json has no such counts (runs
    written before the field was added) or they are not counts (a hand-edited file).

    Returns:
        ``{"examples", "truncated", "answer_cut", "dropped", "sliding_windows"}``: ``answer_cut`` is None
        where unknown; ``dropped`` 0 where absent.
    """
    data = results.get("data")
    entry = data.get(domain) if isinstance(data, dict) else None
    trunc = entry.get("truncation") if isinstance(entry, dict) else None
    splits = trunc.get("splits") if isinstance(trunc, dict) else None
    counts = splits.get(split) if isinstance(splits, dict) else None
    if not isinstance(counts, dict):
        return None
    n, k = counts.get("examples"), counts.get("truncated")
    if not (_count(n) and _count(k)) or k > n:
        return None
    answer = counts.get("answer_cut")
    dropped = counts.get("dropped")
    return {"examples": n, "truncated": k, "answer_cut": answer if _count(answer) and answer <= k else None,
            "dropped": dropped if _count(dropped) else 0, "sliding_windows": counts.get("sliding_windows") is True}


def truncation_limit(results: dict) -> int | None:
    """The token limit examples were cut at: a domain's ``truncation.max_length``, else ``config.data.max_length``."""
    data = results.get("data")
    for entry in data.values() if isinstance(data, dict) else ():
        trunc = entry.get("truncation") if isinstance(entry, dict) else None
        limit = trunc.get("max_length") if isinstance(trunc, dict) else None
        if _count(limit):
            return limit
    cfg = results.get("config")
    section = cfg.get("data") if isinstance(cfg, dict) else None
    limit = section.get("max_length") if isinstance(section, dict) else None
    return limit if _count(limit) else None
