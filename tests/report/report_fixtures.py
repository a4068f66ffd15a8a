"""A synthetic but self-consistent results dict (schema_version 2 or 1), shaped like the runner's output.

Per-domain rows hold NLL sums and token counts; ``ppl = exp(nll_sum / n_tokens)``; union rows are
token-weighted; combinations take their perplexities from the sum/merged rows, and
Δ % = 100·(ppl_sum − ppl_merged)/ppl_merged.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

DOMAINS = ("math", "medicine", "finance")
MODULES = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("q", "k", "v", "o")]


def _eval_row(model, kind, domains, seed, eval_domain, nll_sum, n_tokens, n_examples):
    return {"model": model, "kind": kind, "domains": list(domains), "seed": seed, "eval_domain": eval_domain,
            "nll_sum": nll_sum, "n_tokens": n_tokens, "n_examples": n_examples, "ppl": math.exp(nll_sum / n_tokens)}


def _name(kind, domains, method="sum", single=None):
    if kind == "base":
        return "base"
    if kind == "single":
        return domains[0]
    if kind == "hybrid":
        return f"hybrid-merged-{'+'.join(d for d in domains if d != single)}+single-{single}"
    return f"{method if kind == 'composed' else kind}-{'+'.join(domains)}"


LEVEL = {"base": 3.0, "single": 2.0, "merged": 1.6, "sum": 1.7, "hybrid": 1.65, "composed": 1.75}


def _geometry(rng, seed, domains):
    """Per-pair cosines on MODULES (2 layers) and their per-layer RMS, as the runner writes them."""
    pairs = []
    for a, b in combinations(domains, 2):
        cos = {m: float(rng.normal(0, 0.05)) for m in MODULES}
        layer_rms = {str(i): float(np.sqrt(np.mean([v**2 for m, v in cos.items() if f"layers.{i}." in m])))
                     for i in range(2)}
        vals = np.array(list(cos.values()))
        pairs.append({"a": a, "b": b, "rms": float(np.sqrt(np.mean(vals**2))), "mean_abs": float(np.abs(vals).mean()),
                      "max_abs": float(np.abs(vals).max()), "cosines": cos, "layer_rms": layer_rms})
    return {"seed": seed, "names": list(domains), "shapes": {m: [32, 32] for m in MODULES}, "pairs": pairs}


def make_results(seeds=(0, 1), domains=DOMAINS, rng_seed=0, version=2, methods=("sum",), hybrids=True) -> dict:
    """Version 2 (default): with hybrids, the extra ``methods``, compositions, geometry and provenance;
    version 1: singles, merged and sums only, as lorasum 0.1 wrote them."""
    rng = np.random.default_rng(rng_seed)
    subsets = [c for k in range(2, len(domains) + 1) for c in combinations(domains, k)]
    tokens = {d: int(rng.integers(200, 400)) for d in domains}
    v2 = version == 2
    adapters, evals, combos, comps, geometry = [], [], [], [], []
    for seed in seeds:
        models = [("base", (), "", None)] + [("single", (d,), "", None) for d in domains]
        models += [("merged", s, "", None) for s in subsets] + [("sum", s, "sum", None) for s in subsets]
        if v2:
            models += [("hybrid", s, "sum", d) for s in subsets if hybrids and len(s) >= 3 for d in s]
            models += [("composed", s, m, None) for m in methods if m != "sum" for s in subsets]
        for kind, doms, method, single in models:
            name = _name(kind, doms, method, single)
            if kind != "base":
                train = None if kind not in ("single", "merged") else {
                    "steps": int(rng.integers(5, 50)), "tokens": int(rng.integers(1000, 20000)),
                    "seconds": float(rng.uniform(1, 100)), "final_loss": float(rng.uniform(1, 3)),
                    "val_loss": float(rng.uniform(1, 3)), "examples": 64}
                adapters.append({"name": name, "kind": kind, "domains": list(doms), "seed": seed,
                                 "path": f"adapters/seed{seed}/{name}", "key": f"key-{name}-{seed}", "train": train}
                                | ({"method": method} if v2 else {}))
            rows = []
            for d in (domains if kind in ("base", "single") else doms):
                mean_nll = LEVEL[kind] + (0.0 if kind != "single" or d in doms else 0.6) + rng.normal(0, 0.15)
                row = _eval_row(name, kind, doms, seed, d, mean_nll * tokens[d], tokens[d], 16)
                if v2:
                    row |= {"method": method, "adapter_key": None if kind == "base" else f"key-{name}-{seed}",
                            "test_hash": f"test-{d}", "key": f"eval-{name}-{seed}-{d}"}
                rows.append(row)
            nll, n = sum(r["nll_sum"] for r in rows), sum(r["n_tokens"] for r in rows)
            evals += rows + [_eval_row(name, kind, doms, seed, "union", nll, n, 16 * len(rows))
                             | ({"method": method} if v2 else {})]

        def ppl(name, seed=seed):
            return {e["eval_domain"]: e["ppl"] for e in evals if e["model"] == name and e["seed"] == seed}

        geo = _geometry(rng, seed, domains)
        geometry.append(geo)
        for s in subsets:
            p_sum, p_merged = ppl(_name("sum", s)), ppl(_name("merged", s))
            pair = next((p for p in geo["pairs"] if (p["a"], p["b"]) == s), None)
            combos.append({"domains": list(s), "seed": seed, "rms_cosine": float(rng.uniform(0.001, 0.05)),
                           "ppl_sum": p_sum, "ppl_merged": p_merged,
                           "ppl_change_pct": {k: 100 * (p_sum[k] - p_merged[k]) / p_merged[k] for k in p_sum},
                           "module_cosines": dict(pair["cosines"]) if pair else {}})
        for kind, doms, method, single in models:
            if kind not in ("sum", "hybrid", "composed"):
                continue
            name = _name(kind, doms, method, single)
            p, pm = ppl(name), ppl(_name("merged", doms))
            comps.append({"domains": list(doms), "seed": seed, "kind": kind, "method": method, "params": {},
                          "name": name, "single": single, "parts": [],
                          "rms_cosine": float(rng.uniform(0.001, 0.05)) if kind != "sum" else
                          next(c["rms_cosine"] for c in combos if c["seed"] == seed and tuple(c["domains"]) == doms),
                          "ppl": p, "ppl_merged": pm, "ppl_change_pct": {k: 100 * (p[k] - pm[k]) / pm[k] for k in p}})
    results = {
        "schema_version": version,
        "created": "2026-11-29T20:00:00Z",
        "lorasum_version": "0.1.0",
        "config": {"name": "synthetic", "model": "smollm2-135m", "domains": list(domains), "seeds": list(seeds),
                   "lora": {"r": 4, "lora_alpha": 64, "lora_dropout": 0.1, "target_modules": None}},
        "model": {"name": "smollm2-135m", "source": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "arch": "llama",
                  "config_hash": "ab" * 32, "n_params": 134515008, "target_modules": ["q_proj", "v_proj"]},
        "data": {d: {"content_hash": f"{i:x}" * 64, "train": 64, "validation": 16, "test": 32,
                     "sources": [{"path": f"/data/{src}/train.jsonl", "sha256": "0" * 64, "records": 7473}]}
                 for i, (d, src) in enumerate(zip(domains, ("gsm8k", "medquad", "tatqa", "x", "y"), strict=False))},
        "adapters": adapters,
        "evaluations": evals,
        "combinations": combos,
    }
    if v2:
        results["config"] |= {"methods": list(methods), "hybrids": hybrids, "method_params": {}}
        results |= {"compositions": comps, "geometry": geometry}
    return results


def md_tables(md: str) -> dict[str, list[list[str]]]:
    """Markdown tables of a report by their bold title line: title -> body rows (header and rule dropped)."""
    tables, title, lines = {}, None, md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("**") and line.endswith("**") and i + 2 < len(lines) and lines[i + 2].startswith("|"):
            title = line.strip("*")
            tables[title] = []
        elif line.startswith("| ") and title is not None:
            cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
            tables[title].append(cells)
        elif not line.strip() and title is not None and tables[title]:
            title = None
    return {t: rows[2:] for t, rows in tables.items()}


def parse_cell(cell: str) -> tuple[float, float | None] | None:
    """``"5.803 ± 1.178"`` -> (5.803, 1.178); ``"+2.00"`` -> (2.0, None); ``"—"`` -> None."""
    cell = cell.strip("*").replace(",", "")
    if cell == "—":
        return None
    if "±" in cell:
        mean, std = cell.split("±")
        return float(mean), float(std)
    return float(cell), None
