"""The experiment grid: a pure function from config to frozen job specs.

For N >= 2 domains and each seed the grid holds
  * one ``single`` adapter per domain (trained on that domain's training set),
  * one ``merged`` adapter per subset S of >= 2 domains (trained on the union of their
    training sets: the paper's "fine-tuned on the merged data" baseline),
  * one ``sum`` per subset S: the exact sum of S's single adapters' ΔW (no training),
  * with ``hybrids``, for each subset S of k >= 3 domains and each d in S, one ``hybrid``:
    the merged-data adapter of S∖{d} plus the single adapter of d, by exact sum
    (arXiv 2508.11985's hybrid combinations),
  * for each further composition method (``methods`` other than ``sum``), one ``composed``
    adapter per subset S: S's single adapters composed by that method,
and evaluations of the base model and every single adapter on every domain (the transfer
matrix) and of every merged, summed, hybrid and composed adapter on each of S's domains.
No torch here: planning is cheap and testable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

__all__ = ["AdapterJob", "EvalJob", "Plan", "plan", "adapter_name", "KINDS", "COMPOSED_KINDS"]

KINDS = ("base", "single", "merged", "sum", "hybrid", "composed")
COMPOSED_KINDS = ("sum", "hybrid", "composed")  # adapters made without training, compared with ``merged``


def adapter_name(kind: str, domains: tuple[str, ...], method: str = "sum", single: str | None = None) -> str:
    """Folder-safe name of an adapter.

    ``math`` (single), ``merged-math+medicine``, ``sum-math+medicine``,
    ``hybrid-merged-math+medicine+single-finance`` (merged adapter of math+medicine plus the
    single finance adapter), ``ties-math+medicine`` (method ``ties``), ``base``.
    """
    if kind == "base":
        return "base"
    if kind == "single":
        return domains[0]
    if kind == "hybrid":
        rest = "+".join(d for d in domains if d != single)
        return f"hybrid-merged-{rest}+single-{single}"
    return f"{method if kind == 'composed' else kind}-{'+'.join(domains)}"


@dataclass(frozen=True)
class AdapterJob:
    """An adapter to train (``single``, ``merged``) or compose (``sum``, ``hybrid``, ``composed``) for one seed.

    Attributes:
        kind: one of :data:`KINDS` except ``base``.
        domains: the domains it covers (S for compositions, in config order).
        seed: training seed of the adapters involved.
        method: composition method name (``sum`` for sums and hybrids; empty for trained adapters).
        params: the method's keyword parameters as sorted (name, value) pairs.
        single: hybrids only: the domain d whose single adapter is added to the merged adapter of S∖{d}.
    """

    kind: str
    domains: tuple[str, ...]
    seed: int
    method: str = ""
    params: tuple[tuple[str, Any], ...] = ()
    single: str | None = None

    @property
    def name(self) -> str:
        return adapter_name(self.kind, self.domains, self.method, self.single)

    @property
    def trained(self) -> bool:
        """True for adapters that are trained (single, merged); False for compositions."""
        return self.kind in ("single", "merged")

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the adapters a composition combines, in order (empty for trained adapters)."""
        if self.kind in ("sum", "composed"):
            return self.domains
        if self.kind == "hybrid":
            rest = tuple(d for d in self.domains if d != self.single)
            return (adapter_name("merged", rest), self.single)
        return ()


@dataclass(frozen=True)
class EvalJob:
    """Perplexity of one model (``base`` or an adapter of one seed) on one domain's test set."""

    model: str
    kind: str
    domains: tuple[str, ...]
    seed: int
    eval_domain: str
    method: str = ""


@dataclass(frozen=True)
class Plan:
    """Everything an experiment runs, in dependency order (sources before the compositions using them)."""

    domains: tuple[str, ...]
    seeds: tuple[int, ...]
    adapters: tuple[AdapterJob, ...]
    evaluations: tuple[EvalJob, ...]
    methods: tuple[str, ...] = ("sum",)
    hybrids: bool = True

    @property
    def subsets(self) -> tuple[tuple[str, ...], ...]:
        """Every combination of >= 2 domains, by size, then in config order."""
        return _subsets(self.domains)

    def compositions(self, seed: int) -> tuple[AdapterJob, ...]:
        """The ``sum``, ``hybrid`` and ``composed`` jobs of one seed, in plan order."""
        return tuple(a for a in self.adapters if a.seed == seed and a.kind in COMPOSED_KINDS)


def _subsets(domains: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(c for k in range(2, len(domains) + 1) for c in combinations(domains, k))


def _check(domains: tuple[str, ...], seeds: tuple[int, ...], methods: tuple[str, ...]) -> None:
    if len(domains) < 2:
        raise ValueError("an experiment needs at least two domains")
    if len(set(domains)) != len(domains):
        raise ValueError(f"domains listed twice: {list(domains)}")
    if not seeds:
        raise ValueError("an experiment needs at least one seed")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods listed twice: {list(methods)}")


def plan(
    domains: Sequence[str],
    seeds: Sequence[int],
    *,
    methods: Sequence[str] = ("sum",),
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    hybrids: bool = True,
) -> Plan:
    """Expand domains, seeds, methods and the hybrid switch into adapter and evaluation jobs.

    ``sum`` is always planned (it is the headline); every other name in ``methods`` adds one
    ``composed`` job per subset and seed with ``method_params[name]`` as its parameters. Method
    names are not checked here (the config is; see :class:`lorasum.config.ExperimentConfig`).

    Raises:
        ValueError: fewer than two domains, a domain or method listed twice, or no seed.
    """
    domains, seeds = tuple(domains), tuple(seeds)
    methods = ("sum",) + tuple(m for m in methods if m != "sum")
    _check(domains, seeds, methods)
    params = {m: tuple(sorted((method_params or {}).get(m, {}).items())) for m in methods}
    subsets = _subsets(domains)
    adapters: list[AdapterJob] = []
    evals: list[EvalJob] = []
    for seed in seeds:
        singles = [AdapterJob("single", (d,), seed) for d in domains]
        merged = [AdapterJob("merged", s, seed) for s in subsets]
        sums = [AdapterJob("sum", s, seed, "sum", params["sum"]) for s in subsets]
        hybrid = [AdapterJob("hybrid", s, seed, "sum", single=d)
                  for s in subsets if hybrids and len(s) >= 3 for d in s]
        composed = [AdapterJob("composed", s, seed, m, params[m]) for m in methods[1:] for s in subsets]
        adapters += singles + merged + sums + hybrid + composed
        evals += [EvalJob("base", "base", (), seed, d) for d in domains]
        evals += [EvalJob(a.name, a.kind, a.domains, seed, d) for a in singles for d in domains]
        evals += [EvalJob(a.name, a.kind, a.domains, seed, d, a.method)
                  for a in merged + sums + hybrid + composed for d in a.domains]
    return Plan(domains, seeds, tuple(adapters), tuple(evals), methods, hybrids)
