"""The experiment grid: a pure function from config to frozen job specs.

For N domains and each seed the grid holds
  * one ``single`` adapter per domain (trained on that domain's training set),
  * one ``merged`` adapter per subset of >= 2 domains (trained on the union of their
    training sets: the paper's "fine-tuned on the merged data" baseline),
  * one ``sum`` per subset of >= 2 domains: the exact sum of the subset's single
    adapters' ΔW (no training),
and evaluations of the base model and every single adapter on every domain (the
transfer matrix) and of every merged and summed adapter on each of its own domains.
No torch here: planning is cheap and testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

__all__ = ["AdapterJob", "EvalJob", "Plan", "plan", "adapter_name"]

KINDS = ("base", "single", "merged", "sum")


def adapter_name(kind: str, domains: tuple[str, ...]) -> str:
    """Folder-safe name of an adapter: ``math``, ``merged-math+medicine``, ``sum-math+medicine``."""
    if kind == "single":
        return domains[0]
    if kind == "base":
        return "base"
    return f"{kind}-{'+'.join(domains)}"


@dataclass(frozen=True)
class AdapterJob:
    """An adapter to train (``single``, ``merged``) or compose (``sum``) for one seed."""

    kind: str
    domains: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        return adapter_name(self.kind, self.domains)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the single adapters a ``sum`` adds up (empty for trained adapters)."""
        return self.domains if self.kind == "sum" else ()


@dataclass(frozen=True)
class EvalJob:
    """Perplexity of one model (``base`` or an adapter of one seed) on one domain's test set."""

    model: str
    kind: str
    domains: tuple[str, ...]
    seed: int
    eval_domain: str


@dataclass(frozen=True)
class Plan:
    """Everything an experiment runs, in dependency order."""

    domains: tuple[str, ...]
    seeds: tuple[int, ...]
    adapters: tuple[AdapterJob, ...]
    evaluations: tuple[EvalJob, ...]

    @property
    def subsets(self) -> tuple[tuple[str, ...], ...]:
        """Every combination of >= 2 domains, in config order."""
        return _subsets(self.domains)


def _subsets(domains: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(c for k in range(2, len(domains) + 1) for c in combinations(domains, k))


def plan(domains: list[str] | tuple[str, ...], seeds: list[int] | tuple[int, ...]) -> Plan:
    """Expand domains and seeds into adapter and evaluation jobs.

    Raises:
        ValueError: fewer than two domains, or an empty seed list.
    """
    domains, seeds = tuple(domains), tuple(seeds)
    if len(domains) < 2:
        raise ValueError("an experiment needs at least two domains")
    if not seeds:
        raise ValueError("an experiment needs at least one seed")
    subsets = _subsets(domains)
    adapters: list[AdapterJob] = []
    evals: list[EvalJob] = []
    for seed in seeds:
        singles = [AdapterJob("single", (d,), seed) for d in domains]
        merged = [AdapterJob("merged", s, seed) for s in subsets]
        sums = [AdapterJob("sum", s, seed) for s in subsets]
        adapters += singles + merged + sums
        evals += [EvalJob("base", "base", (), seed, d) for d in domains]
        evals += [EvalJob(a.name, a.kind, a.domains, seed, d) for a in singles for d in domains]
        evals += [EvalJob(a.name, a.kind, a.domains, seed, d) for a in merged + sums for d in a.domains]
    return Plan(domains, seeds, tuple(adapters), tuple(evals))
