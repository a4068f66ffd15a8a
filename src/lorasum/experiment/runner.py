"""Execute a :class:`~lorasum.experiment.grid.Plan`: train, compose, evaluate, measure, report.

Every trained adapter, composed adapter and evaluation is cached in the run folder
under a key that hashes everything that produced it (model config, data content,
LoRA and training settings, seed, max length). Re-running skips finished work; a
changed setting re-runs only what it affects; an interrupted run continues where
it stopped.

Run folder layout::

    OUT/run.json                       what this folder is (config, versions)
    OUT/adapters/seed{S}/{name}/       PEFT adapters (single, merged-*, sum-*)
    OUT/cache/{adapters,evals}/KEY.json
    OUT/results.json                   every number, with provenance
    OUT/report/                        report.md, report.html, results.{json,csv}, plots
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorasum import __version__
from lorasum.config import ExperimentConfig, data_root
from lorasum.errors import OutputExistsError
from lorasum.experiment.grid import AdapterJob, EvalJob, Plan, plan
from lorasum.storage import atomic_write_json, sha256_json

__all__ = ["run_experiment", "RESULTS_SCHEMA_VERSION"]

RESULTS_SCHEMA_VERSION = 1
log = logging.getLogger("lorasum")


class _Cache:
    """JSON records keyed by job hash under ``OUT/cache/<kind>/``."""

    def __init__(self, root: Path, enabled: bool):
        self.root, self.enabled = root, enabled

    def get(self, kind: str, key: str) -> dict | None:
        path = self.root / kind / f"{key}.json"
        if not self.enabled or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged cache entry is recomputed, never trusted

    def put(self, kind: str, key: str, value: dict) -> None:
        atomic_write_json(self.root / kind / f"{key}.json", value)


def _prepare_run_folder(out: Path, cfg: ExperimentConfig, overwrite: bool) -> bool:
    """Check ``out`` and write ``run.json``; return whether cached work may be reused."""
    marker = out / "run.json"
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise OutputExistsError(f"{out}: exists and is not a lorasum run folder; choose another --out")
    reuse = marker.is_file() and not overwrite
    atomic_write_json(marker, {"lorasum_version": __version__, "config": cfg.model_dump(mode="json")})
    return reuse


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the whole grid of ``cfg`` in ``out`` and write the report; return the results dict.

    An existing run folder is continued (cached work reused); ``overwrite`` recomputes everything.

    Raises:
        OutputExistsError: ``out`` holds files that are not a lorasum run.
        ConfigError, DataError, ModelError: from loading the config's data and model.
    """
    from lorasum.data import load_domain
    from lorasum.models import load_model
    from lorasum.report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = _Cache(out / "cache", enabled=_prepare_run_folder(out, cfg, overwrite))
    grid = plan(cfg.domains, cfg.seeds)
    t0 = time.perf_counter()

    root = data_root(cfg.data)
    d = cfg.data
    data = {
        name: load_domain(name, root, split_seed=d.split_seed, validation_fraction=d.validation_fraction,
                          test_fraction=d.test_fraction, train_size=d.train_size,
                          validation_size=d.validation_size, test_size=d.test_size)
        for name in cfg.domains
    }
    for name, dd in data.items():
        log.info("data %s: %d train / %d validation / %d test", name, len(dd.train), len(dd.validation), len(dd.test))

    log.info("loading model %s", cfg.model)
    model, tokenizer, info = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    ctx = _Context(cfg, out, cache, data, model, tokenizer, info, progress)

    adapters = [ctx.run_adapter(job) for job in grid.adapters]
    evaluations = [ctx.run_eval(job) for job in grid.evaluations]
    combinations = ctx.combinations(grid, evaluations)

    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lorasum_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "model": asdict(info) | {"target_modules": list(info.target_modules)},
        "data": {n: {"content_hash": dd.content_hash, "train": len(dd.train), "validation": len(dd.validation),
                     "test": len(dd.test), "sources": dd.sources, "report": dd.report} for n, dd in data.items()},
        "adapters": adapters,
        "evaluations": evaluations + _union_rows(evaluations),
        "combinations": combinations,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "results.json", results)
    write_report(results, out / "report")
    log.info("done in %.0f s; report in %s", results["wall_seconds"], out / "report")
    return results


class _Context:
    """State shared by the jobs of one run (model, data, cache)."""

    def __init__(self, cfg, out, cache, data, model, tokenizer, info, progress):
        self.cfg, self.out, self.cache, self.data = cfg, out, cache, data
        self.model, self.tokenizer, self.info, self.progress = model, tokenizer, info, progress
        self.keys: dict[tuple[str, int], str] = {}  # (adapter name, seed) -> job key
        self.paths: dict[tuple[str, int], Path] = {}

    # -- adapters --------------------------------------------------------------------------
    def _train_key(self, job: AdapterJob) -> str:
        c = self.cfg
        return sha256_json({
            "v": 1, "model": [self.info.name, self.info.config_hash], "seed": job.seed,
            "data": [self.data[dom].content_hash for dom in job.domains], "max_length": c.data.max_length,
            "lora": c.lora.model_dump(mode="json"), "train": c.train.model_dump(mode="json"),
        })

    def run_adapter(self, job: AdapterJob) -> dict:
        path = self.out / "adapters" / f"seed{job.seed}" / job.name
        key = (sha256_json({"sum": [self.keys[(s, job.seed)] for s in job.sources]})
               if job.kind == "sum" else self._train_key(job))
        self.keys[(job.name, job.seed)], self.paths[(job.name, job.seed)] = key, path
        row = {"name": job.name, "kind": job.kind, "domains": list(job.domains), "seed": job.seed,
               "path": str(path.relative_to(self.out)), "key": key}
        cached = self.cache.get("adapters", key)
        if cached is not None and (path / "adapter_config.json").is_file():
            log.info("cached  %-28s seed %d", job.name, job.seed)
            return row | {"train": cached.get("train")}
        log.info("%-7s %-28s seed %d", "compose" if job.kind == "sum" else "train", job.name, job.seed)
        summary = self._compose(job, path) if job.kind == "sum" else self._train(job, path, key)
        self.cache.put("adapters", key, {"row": row, "train": summary})
        return row | {"train": summary}

    def _train(self, job: AdapterJob, path: Path, key: str) -> dict:
        from lorasum.train import train_adapter

        records = [r for dom in job.domains for r in self.data[dom].train]
        validation = [r for dom in job.domains for r in self.data[dom].validation]
        meta = {"job_key": key, "domains": list(job.domains),
                "data": {dom: {"content_hash": self.data[dom].content_hash, "sources": self.data[dom].sources}
                         for dom in job.domains}}
        res = train_adapter(self.model, self.tokenizer, records, lora=self.cfg.lora, train=self.cfg.train,
                            seed=job.seed, out_dir=path, max_length=self.cfg.data.max_length,
                            model_info=self.info, meta=meta, validation=validation or None,
                            overwrite=True, progress=self.progress)
        return {"steps": res.steps, "tokens": res.tokens, "seconds": round(res.seconds, 2),
                "final_loss": res.final_loss, "val_loss": res.val_loss, "examples": len(records)}

    def _compose(self, job: AdapterJob, path: Path) -> None:
        from lorasum.adapters import load_adapter, save_adapter
        from lorasum.compose import compose_sum

        sources = [load_adapter(self.paths[(s, job.seed)]) for s in job.sources]
        save_adapter(compose_sum(sources), path, overwrite=True, base_model=self.info.name)
        return None

    # -- evaluation ------------------------------------------------------------------------
    def run_eval(self, job: EvalJob) -> dict:
        from lorasum.evaluate import perplexity

        dom = self.data[job.eval_domain]
        model_key = "base" if job.kind == "base" else self.keys[(job.model, job.seed)]
        key = sha256_json({"v": 1, "model": [self.info.name, self.info.config_hash, model_key],
                           "test": dom.content_hash, "max_length": self.cfg.data.max_length})
        row = {"model": job.model, "kind": job.kind, "domains": list(job.domains), "seed": job.seed,
               "eval_domain": job.eval_domain}
        cached = self.cache.get("evals", key)
        if cached is None:
            log.info("eval    %-28s seed %d on %s", job.model, job.seed, job.eval_domain)
            with self._active(job) as model:
                p = perplexity(model, self.tokenizer, dom.test, max_length=self.cfg.data.max_length,
                               batch_size=self.cfg.eval.batch_size, progress=False)
            cached = {"nll_sum": p.nll_sum, "n_tokens": p.n_tokens, "n_examples": p.n_examples}
            self.cache.put("evals", key, cached)
        return row | _with_ppl(cached)

    def _active(self, job: EvalJob):
        """Context manager yielding the base model, or the base with one adapter loaded."""
        import contextlib

        @contextlib.contextmanager
        def cm():
            if job.kind == "base":
                yield self.model
                return
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(self.model, self.paths[(job.model, job.seed)])
            try:
                yield peft_model.eval()
            finally:
                self.model = peft_model.unload()

        return cm()

    # -- combinations ----------------------------------------------------------------------
    def combinations(self, grid: Plan, evaluations: list[dict]) -> list[dict]:
        from lorasum.adapters import load_adapter
        from lorasum.geometry import module_cosines, similarity

        rows = []
        for seed in grid.seeds:
            singles = {dom: load_adapter(self.paths[(dom, seed)]) for dom in grid.domains}
            sim = similarity(singles)
            for subset in grid.subsets:
                ppl_sum = _ppl_by_domain(evaluations, "sum", subset, seed)
                ppl_merged = _ppl_by_domain(evaluations, "merged", subset, seed)
                change = {k: 100.0 * (ppl_sum[k] - ppl_merged[k]) / ppl_merged[k] for k in ppl_sum}
                module_cos = ({k: float(v) for k, v in module_cosines(singles[subset[0]], singles[subset[1]]).items()}
                              if len(subset) == 2 else {})
                rows.append({"domains": list(subset), "seed": seed, "rms_cosine": float(sim.combination_rms(subset)),
                             "ppl_sum": ppl_sum, "ppl_merged": ppl_merged, "ppl_change_pct": change,
                             "module_cosines": module_cos})
        return rows


def _with_ppl(p: dict) -> dict:
    import math

    mean = p["nll_sum"] / p["n_tokens"] if p["n_tokens"] else float("nan")
    return p | {"ppl": math.exp(mean) if p["n_tokens"] else float("nan")}


def _union_rows(evaluations: list[dict]) -> list[dict]:
    """Token-weighted pooling of each model's per-domain rows into an ``eval_domain: union`` row."""
    groups: dict[tuple, list[dict]] = {}
    for e in evaluations:
        groups.setdefault((e["model"], e["seed"]), []).append(e)
    rows = []
    for (_, _), es in groups.items():
        pooled = {k: sum(e[k] for e in es) for k in ("nll_sum", "n_tokens", "n_examples")}
        rows.append({k: es[0][k] for k in ("model", "kind", "domains", "seed")} | {"eval_domain": "union"}
                    | _with_ppl(pooled))
    return rows


def _ppl_by_domain(evaluations: list[dict], kind: str, subset: tuple[str, ...], seed: int) -> dict[str, float]:
    """Perplexity of the ``kind`` adapter of ``subset`` on each of its domains and on their union."""
    es = [e for e in evaluations if e["kind"] == kind and tuple(e["domains"]) == subset and e["seed"] == seed]
    out = {e["eval_domain"]: e["ppl"] for e in es}
    pooled = {k: sum(e[k] for e in es) for k in ("nll_sum", "n_tokens", "n_examples")}
    out["union"] = _with_ppl(pooled)["ppl"]
    return out
