"""The ``results.json`` schema: per-domain rows pooled into unions, compositions compared with merged.

Pure Python (no torch): the runner hands over evaluation rows, adapter keys and geometry; this
module derives everything the report reads.

Schema version 2 (version 1 lacked ``compositions``, ``geometry`` and provenance fields)::

    schema_version, created, lorasum_version, config, model, data, wall_seconds
    timings         seconds of this process per phase: load_model, data, train_and_compose, evaluate,
                    geometry (a continued run counts only what it did itself); device; peak_gpu_memory_gib
                    (CUDA: the process's peak, else null). Added without a version change: readers take
                    them as optional.
    adapters[]      name, kind, method, params, domains, seed, path, key, sources (keys), train_data, train
    evaluations[]   model, kind, method, domains, seed, eval_domain, nll_sum, n_tokens, n_examples, ppl,
                    key, adapter_key, test_hash, base_model          (eval_domain "union": pooled)
    combinations[]  one per subset and seed: sum vs merged (the headline), as in version 1, plus
                    adapter_keys and test_hashes
    compositions[]  one per subset, seed and composition (sum, hybrid, each method): ppl, ppl_merged,
                    ppl_change_pct per domain and union, rms_cosine of its parts, keys
    geometry[]      one per seed: per pair of single adapters the cosine per module and RMS per layer

Δ % = 100·(PPL composed − PPL merged)/PPL merged (arXiv 2508.11985's headline measure).
"""

from __future__ import annotations

import math

from lorasum.experiment.grid import AdapterJob, Plan

__all__ = ["RESULTS_SCHEMA_VERSION", "with_ppl", "union_rows", "combination_rows", "composition_rows", "geometry_rows"]

RESULTS_SCHEMA_VERSION = 2
_POOL = ("nll_sum", "n_tokens", "n_examples")


def with_ppl(p: dict) -> dict:
    """``p`` plus ``ppl`` = exp(nll_sum / n_tokens) (natural log; NaN without tokens, inf when a mean NLL
    above ~709 nats overflows a float, as an adapter with exploding logits can give)."""
    if not p["n_tokens"]:
        return p | {"ppl": float("nan")}
    try:
        return p | {"ppl": math.exp(p["nll_sum"] / p["n_tokens"])}
    except OverflowError:
        return p | {"ppl": math.inf}


def union_rows(evaluations: list[dict]) -> list[dict]:
    """Token-weighted pooling of each model's per-domain rows into an ``eval_domain: union`` row."""
    groups: dict[tuple, list[dict]] = {}
    for e in evaluations:
        groups.setdefault((e["model"], e["seed"]), []).append(e)
    rows = []
    for es in groups.values():
        pooled = {k: sum(e[k] for e in es) for k in _POOL}
        keep = {k: es[0][k] for k in ("model", "kind", "method", "domains", "seed", "adapter_key", "base_model")
                if k in es[0]}
        rows.append(keep | {"eval_domain": "union", "test_hash": {e["eval_domain"]: e.get("test_hash") for e in es}}
                    | with_ppl(pooled))
    return rows


def _ppl(evaluations: list[dict], name: str, seed: int) -> dict[str, float]:
    """Perplexity of model ``name`` (one seed) on each of its evaluation domains and on their union."""
    es = [e for e in evaluations if e["model"] == name and e["seed"] == seed and e["eval_domain"] != "union"]
    out = {e["eval_domain"]: e["ppl"] for e in es}
    out["union"] = with_ppl({k: sum(e[k] for e in es) for k in _POOL})["ppl"]
    return out


def _change(ppl: dict[str, float], merged: dict[str, float]) -> dict[str, float]:
    return {k: 100.0 * (v - merged[k]) / merged[k] if k in merged else float("nan") for k, v in ppl.items()}


def _test_hashes(evaluations: list[dict], name: str, seed: int) -> dict[str, str]:
    return {e["eval_domain"]: e.get("test_hash") for e in evaluations
            if e["model"] == name and e["seed"] == seed and e["eval_domain"] != "union"}


def combination_rows(grid: Plan, evaluations: list[dict], keys: dict[tuple[str, int], str],
                     geometry: dict[int, dict]) -> list[dict]:
    """One row per subset and seed: the exact sum of single adapters vs the merged-data adapter.

    ``geometry[seed]`` holds ``combination_rms`` (label → RMS cosine of the subset's singles) and
    ``pairs`` (see :mod:`lorasum.experiment.runner`).
    """
    rows = []
    for seed in grid.seeds:
        geo = geometry[seed]
        for subset in grid.subsets:
            label = "+".join(subset)
            sum_name, merged_name = f"sum-{label}", f"merged-{label}"
            ppl_sum, ppl_merged = _ppl(evaluations, sum_name, seed), _ppl(evaluations, merged_name, seed)
            pair = geo["pairs"].get(subset) if len(subset) == 2 else None
            rows.append({
                "domains": list(subset), "seed": seed, "rms_cosine": geo["combination_rms"][label],
                "ppl_sum": ppl_sum, "ppl_merged": ppl_merged, "ppl_change_pct": _change(ppl_sum, ppl_merged),
                "module_cosines": dict(pair["cosines"]) if pair else {},
                "adapter_keys": {"sum": keys[(sum_name, seed)], "merged": keys[(merged_name, seed)],
                                 "singles": {d: keys[(d, seed)] for d in subset}},
                "test_hashes": _test_hashes(evaluations, merged_name, seed),
            })
    return rows


def composition_rows(grid: Plan, evaluations: list[dict], keys: dict[tuple[str, int], str],
                     part_cosines: dict[tuple[str, int], float]) -> list[dict]:
    """One row per composition (sum, hybrid, each method) and seed, compared with merged(S).

    ``part_cosines[(name, seed)]`` is the RMS cosine between the composition's parts (the
    singles for sum and methods; merged(S∖{d}) and d for hybrids).
    """
    rows = []
    for seed in grid.seeds:
        for job in grid.compositions(seed):
            rows.append(_composition_row(job, evaluations, keys, part_cosines))
    return rows


def _composition_row(job: AdapterJob, evaluations: list[dict], keys: dict, part_cosines: dict) -> dict:
    merged_name = f"merged-{'+'.join(job.domains)}"
    ppl, merged = _ppl(evaluations, job.name, job.seed), _ppl(evaluations, merged_name, job.seed)
    return {
        "domains": list(job.domains), "seed": job.seed, "kind": job.kind, "method": job.method,
        "params": dict(job.params), "name": job.name, "single": job.single, "parts": list(job.sources),
        "rms_cosine": part_cosines.get((job.name, job.seed), float("nan")),
        "ppl": ppl, "ppl_merged": merged, "ppl_change_pct": _change(ppl, merged),
        "adapter_key": keys[(job.name, job.seed)], "merged_key": keys[(merged_name, job.seed)],
        "part_keys": [keys[(s, job.seed)] for s in job.sources],
    }


def geometry_rows(geometry: dict[int, dict]) -> list[dict]:
    """JSON-ready per-seed geometry: names, module shapes and, per pair, cosines and per-layer RMS."""
    return [{"seed": seed, "names": g["names"], "shapes": g["shapes"],
             "pairs": [p | {"a": a, "b": b} for (a, b), p in g["pairs"].items()]}
            for seed, g in geometry.items()]

