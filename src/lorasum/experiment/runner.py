"""Execute a :class:`~lorasum.experiment.grid.Plan`: train, compose, evaluate, measure, report.

Every trained adapter, composed adapter and evaluation is cached in the run folder under a key
that hashes everything that produced it:

* trained adapter: base model (name, config hash), seed, the *training-side* data (train and
  validation records of its domains), max length, LoRA and training settings;
* composition: method, its parameters and the keys of its source adapters;
* evaluation: base model, the evaluated adapter's key, the *test* records of the domain, max length.

So re-running skips finished work; a setting that only affects evaluation (``data.test_size``)
re-runs evaluations and retrains nothing; an interrupted run continues where it stopped (a missing
adapter folder or cache entry is redone, nothing else; so is a folder whose config or weights no longer
have the SHA-256 its cache entry recorded, and, with a warning naming the file, a cache entry that is not
JSON or not of its form: an evaluation needs a finite ``nll_sum`` >= 0, ``n_tokens`` >= 1 and the
domain's number of test examples as ``n_examples``, see :func:`eval_entry_problem`).
``eval.batch_size`` is not in any key: it changes speed, not perplexity.

Run folder layout::

    OUT/run.json                       what this folder is (config, versions)
    OUT/adapters/seed{S}/{name}/       PEFT adapters (single, merged-*, sum-*, hybrid-*, low-rank methods)
    OUT/cache/{adapters,evals}/KEY.json
    OUT/results.json                   every number, with provenance (schema: lorasum.experiment.results)
    OUT/report/                        report.md, report.html, results.csv, plots

Nothing of the user's is written through or replaced: a symbolic link, named pipe, device or socket anywhere
in ``run.json``, ``results.json``, ``manifest.json``, ``report/``, ``adapters/`` or ``cache/`` is refused
before the model is loaded, and an adapter folder that this run folder did not make (no job key with a cache
entry recording its files) is refused before any training unless ``overwrite`` (then replaced with a warning).

Dense composition results (``ties``, ``dare_*``, ``magnitude_prune``) are not stored: they are
recomposed in memory when one of their evaluations is not cached, added to the base weights and
taken off again (:mod:`lorasum.experiment.activate`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path

from lorasum import __version__
from lorasum.config import ExperimentConfig, data_root
from lorasum.errors import DataError, OutputExistsError, UserError
from lorasum.experiment.grid import AdapterJob, EvalJob, Plan, plan
from lorasum.experiment.results import (RESULTS_SCHEMA_VERSION, combination_rows, composition_rows,
                                        geometry_rows, union_rows, with_ppl)
from lorasum.storage import (atomic_write_json, check_no_links, check_regular, check_tree_no_links, make_folders,
                             settle_path, sha256_json)

__all__ = ["run_experiment", "plan_of", "RESULTS_SCHEMA_VERSION"]

log = logging.getLogger("lorasum")
_KEY_VERSION = 3  # bump when what a key hashes changes
_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")  # a job key (SHA-256 hex)
_JOB_FILE = "lorasum_job.json"  # in composed adapter folders: the job key that made them
#: what lorasum writes in a run folder: none of it, nor anything below it, may be a symbolic link
RUN_ENTRIES = ("run.json", "results.json", "manifest.json", "report", "adapters", "cache")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def eval_entry_problem(entry) -> str | None:
    """Why a cached evaluation (``{"nll_sum", "n_tokens", "n_examples"}``, see :meth:`_Context._evaluate`)
    cannot be used, or None when it can.

    Required: a JSON object with ``nll_sum`` a finite number >= 0 (nats), ``n_tokens`` an integer >= 1
    and ``n_examples`` an integer >= 1. Other fields are ignored. Such an entry gives a finite
    perplexity exp(nll_sum / n_tokens) >= 1.
    """
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__}"
    nll, n_tokens, n_examples = entry.get("nll_sum"), entry.get("n_tokens"), entry.get("n_examples")
    if isinstance(nll, bool) or not isinstance(nll, (int, float)):
        return "nll_sum is missing or not a number"
    try:
        finite = math.isfinite(nll)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite or nll < 0:
        return f"nll_sum {str(nll)[:40]} is not a finite number >= 0"
    if not _is_int(n_tokens) or n_tokens < 1:
        return f"n_tokens {n_tokens!r} is not an integer >= 1"
    if not _is_int(n_examples) or n_examples < 1:
        return f"n_examples {n_examples!r} is not an integer >= 1"
    return None


def _adapter_entry_problem(entry) -> str | None:
    """Why a cached adapter entry (``{"row", "train", "files"}``) cannot be used, or None."""
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__}"
    if "files" in entry and not isinstance(entry["files"], dict):
        return "files is not an object"
    if entry.get("train") is not None and not isinstance(entry["train"], dict):
        return "train is not an object"
    return None


_CHECKS = {"evals": eval_entry_problem, "adapters": _adapter_entry_problem}


class _Cache:
    """JSON records keyed by job hash under ``OUT/cache/<kind>/``.

    An entry that is not JSON, or fails its kind's check (:func:`eval_entry_problem` for ``evals``),
    counts as missing: the work is done again and the entry rewritten, with a warning naming the file.
    """

    def __init__(self, root: Path, enabled: bool):
        self.root, self.enabled = root, enabled  # enabled: entries of earlier runs may be reused
        self._fresh: set[tuple[str, str]] = set()  # entries written by this run (always readable)
        self._warned: set[Path] = set()  # damaged entries already reported

    def get(self, kind: str, key: str) -> dict | None:
        """The entry ``kind/key``, or None: not cached, cached by an earlier run while reuse is off
        (``--overwrite``), or damaged (warned about once, see :meth:`reject`)."""
        path = self.root / kind / f"{key}.json"
        if not (self.enabled or (kind, key) in self._fresh) or not check_regular(path).is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            problem = f"not readable JSON ({type(e).__name__})"
        else:
            check = _CHECKS.get(kind)
            problem = check(entry) if check else None
            if problem is None:
                return entry
        # a damaged or edited cache entry is recomputed, never trusted
        self.reject(kind, key, problem)
        return None

    def reject(self, kind: str, key: str, problem: str) -> None:
        """Warn (once per entry) that the entry ``kind/key`` is not used because of ``problem``."""
        path = self.root / kind / f"{key}.json"
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: damaged cache entry (%s); %s again", path, problem,
                        "evaluating" if kind == "evals" else "making the adapter")

    def fresh(self, kind: str, key: str) -> bool:
        """Whether this run wrote the entry."""
        return (kind, key) in self._fresh

    def put(self, kind: str, key: str, value: dict) -> None:
        path = check_no_links(self.root.parent, self.root / kind / f"{key}.json")  # never through a user's link
        check_regular(path)  # a named pipe, device or socket is never replaced
        atomic_write_json(path, value)
        self._fresh.add((kind, key))


_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _adapter_files(path: Path) -> dict[str, str]:
    """SHA-256 of the config and weights of an adapter folder (the files present, readable ones)."""
    from lorasum.storage import sha256_file

    out = {}
    for name in _ADAPTER_FILES:
        if not (path / name).is_file():  # missing, or a pipe or device: never read
            continue
        try:
            out[name] = sha256_file(path / name)
        except OSError:
            continue
    return out


def _prepare_run_folder(out: Path, cfg: ExperimentConfig, overwrite: bool) -> bool:
    """Check ``out`` and write ``run.json``; return whether cached work may be reused."""
    from lorasum.report import check_report_dir

    marker = out / "run.json"
    if os.path.lexists(out) and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder; choose another --out")
    # a symlink in what lorasum writes (RUN/report -> a user's folder) would have the run write through it
    check_tree_no_links(out, RUN_ENTRIES)
    check_report_dir(out / "report")  # before hours of training, not when the report is written
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise OutputExistsError(f"{out}: exists and is not a lorasum run folder; choose another --out")
    reuse = marker.is_file() and not overwrite
    # a folder holding only run.json (a run that stopped before it made anything, e.g. its model failed to load)
    # has nothing another model or LoRA setting could replace
    made = reuse and any(p.name != "run.json" and (p.is_file() or any(p.rglob("*"))) for p in out.iterdir())
    if made:  # continuing: a run of another model or LoRA setting would have every trained adapter replaced
        try:
            before = json.loads(marker.read_text(encoding="utf-8")).get("config") or {}
        except (OSError, ValueError, AttributeError, RecursionError):  # damaged: nothing to compare with
            before = {}
        now = cfg.model_dump(mode="json")
        for key in ("model", "lora"):
            if key in before and before[key] != now[key]:
                raise OutputExistsError(
                    f"{out}: a run with {key} {json.dumps(before[key])} (run.json); this config has "
                    f"{json.dumps(now[key])}, and its adapters would replace the run's: choose another --out, or pass "
                    "--overwrite to recompute the folder")
    atomic_write_json(marker, {"lorasum_version": __version__, "config": cfg.model_dump(mode="json")})
    return reuse


def plan_of(cfg: ExperimentConfig) -> Plan:
    """The grid of ``cfg`` (domains, seeds, methods with their parameters, hybrids)."""
    return plan(cfg.domains, cfg.seeds, methods=cfg.methods, method_params=cfg.method_params, hybrids=cfg.hybrids)


def _load_data(cfg: ExperimentConfig, tokenizer) -> dict:
    """Every domain of ``cfg`` with all its data settings (``lorasum.data.load_domains``)."""
    from lorasum.data import load_domains

    data = load_domains(cfg, tokenizer=tokenizer)
    for name, dd in data.items():
        log.info("data %s: %d train / %d validation / %d test", name, len(dd.train), len(dd.validation), len(dd.test))
        if not dd.test:  # every model is evaluated on every domain: fail before training, not after
            dropped = ((dd.report.get("long_rows") or {}).get("splits") or {}).get("test", {}).get("too_long")
            raise DataError(f"domain {name}: no test examples left"
                            + (f" ({dropped} dropped as longer than data.max_length {cfg.data.max_length}; "
                               "data.long_rows: drop)" if dropped else ""))
    return data


def _truncation(cfg: ExperimentConfig, data: dict, tokenizer) -> dict:
    """Per domain, what cutting its examples at ``data.max_length`` loses in each split
    (:func:`lorasum.data.lengths.domain_truncation`; results.json's ``data.<domain>.truncation``), with a
    warning for each split whose examples are cut. Test examples scored in sliding windows (``eval.stride``)
    are never cut."""
    from lorasum.data.lengths import domain_truncation, truncation_warning

    windows = ("test",) if cfg.eval.stride is not None else ()
    out = {}
    for name, dd in data.items():
        out[name] = domain_truncation(dd, tokenizer, cfg.data.max_length, windows=windows)
        for split, counts in out[name]["splits"].items():
            message = truncation_warning(name, split, counts, cfg.data.max_length)
            if message:
                log.warning("%s", message)
    return out


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the whole grid of ``cfg`` in ``out`` and write the report; return the results dict.

    An existing run folder is continued (cached work reused); ``overwrite`` recomputes everything.

    Raises:
        UserError: ``out`` is empty or names no folder of its own (``""``, ``.``, ``..``, ``/``), cannot
            be created, or ``out/report`` exists and is not a folder.
        OutputExistsError: ``out`` is not a folder, or holds files that are not a lorasum run.
        ConfigError, DataError, ModelError: from loading the config's data and model; a domain with
            no test example, or no answer token to score, is a DataError.
    """
    with contextlib.ExitStack() as scope:  # what lasts as long as the run (the tokenizer's shared ids)
        return _run_experiment(cfg, out, overwrite=overwrite, progress=progress, scope=scope)


def _run_experiment(cfg: ExperimentConfig, out: str | Path, *, overwrite: bool, progress: bool,
                    scope: contextlib.ExitStack) -> dict:
    import torch

    from lorasum.data.tokenize import shared_tokenization
    from lorasum.models import load_model
    from lorasum.report import write_report
    from lorasum.storage import check_output_name

    check_output_name(out)
    out = settle_path(out)  # `newp/../c2` with no newp: c2, and no empty newp left behind
    data_root(cfg.data)  # a missing data folder fails before the run folder is made and the model loaded
    if os.path.lexists(out) and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder; choose another --out")
    try:
        make_folders(out)  # `--out newp/../c2` leaves no empty newp behind
    except OSError as e:  # a file where a folder above it should be, no permission, read-only
        raise UserError(f"{out}: cannot create the run folder: {e.strerror or e}") from None
    cache = _Cache(out / "cache", enabled=_prepare_run_folder(out, cfg, overwrite))
    grid = plan_of(cfg)
    t0 = time.perf_counter()
    for name, spec in cfg.custom_domains.items():
        if name in cfg.domains and spec.max_length not in (None, cfg.data.max_length):
            log.warning("custom_domains.%s.max_length (%d) applies to `lorasum train` on that domain alone; an "
                        "experiment cuts every domain at data.max_length (%d), so that single, merged and summed "
                        "adapters see the same examples", name, spec.max_length, cfg.data.max_length)
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        timings[phase] = round(now - clock[0], 1)
        clock[0] = now

    log.info("loading model %s", cfg.model)
    model, tokenizer, info = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    # each record's text fields tokenised once: truncation counts, training, validation and evaluation share them
    scope.enter_context(shared_tokenization(tokenizer))
    lap("load_model")
    data = _load_data(cfg, tokenizer)
    truncation = _truncation(cfg, data, tokenizer)
    ctx = _Context(cfg, out, cache, data, model, tokenizer, info, progress)
    lap("data")

    ctx.check_adapter_folders(grid.adapters, overwrite)  # before any training: never replace what is not ours
    if cfg.train.parallel_adapters != 1:
        ctx.train_together(list(grid.adapters))
    adapters = [ctx.run_adapter(job) for job in grid.adapters]
    lap("train_and_compose")
    evaluations = ctx.run_evaluations(grid.evaluations)
    lap("evaluate")
    geometry, part_cosines = ctx.geometry(grid)
    lap("geometry")
    device = next(model.parameters()).device
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lorasum_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "model": asdict(info) | {"target_modules": list(info.target_modules)},
        "data": {n: {"content_hash": dd.content_hash, "train_hash": ctx.hashes[n]["train"],
                     "test_hash": ctx.hashes[n]["test"], "train": len(dd.train), "validation": len(dd.validation),
                     "test": len(dd.test), "sources": dd.sources, "report": dd.report,
                     "truncation": truncation[n]} for n, dd in data.items()},
        "adapters": adapters,
        "evaluations": evaluations + union_rows(evaluations),
        "combinations": combination_rows(grid, evaluations, ctx.keys, geometry),
        "compositions": composition_rows(grid, evaluations, ctx.keys, part_cosines),
        "geometry": geometry_rows(geometry),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "timings": timings,
        "device": _device_name(device),
        # peak of the process (a CLI run: this run), where the model is on a CUDA GPU
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda"
                                else None),
    }
    check_tree_no_links(out, RUN_ENTRIES)  # again before the last writes: nothing put there since then
    atomic_write_json(out / "results.json", results)
    write_report(results, out / "report")
    _write_run_manifest(out, cfg, data)
    log.info("done in %.0f s (%s); report in %s", results["wall_seconds"],
             ", ".join(f"{phase.replace('_', ' ')} {sec:.0f} s" for phase, sec in timings.items()), out / "report")
    return results


def _device_name(device) -> str:
    """``cuda: NVIDIA H200`` or ``cpu``: where the run computed (a ``torch.device``), for its timings."""
    import torch

    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def _write_run_manifest(out: Path, cfg: ExperimentConfig, data: dict) -> None:
    """``out/manifest.json``: package versions, the config, SHA-256 of the data files read and of
    results.json, the report and the adapters (:func:`lorasum.storage.write_manifest`)."""
    from lorasum.storage import write_manifest

    root = data_root(cfg.data)
    inputs = {f"data/{name}/{s['path']}": root / s["path"] for name, dd in data.items() for s in dd.sources
              if (root / s["path"]).exists()}
    outputs = [p for p in (out / "results.json", out / "report", out / "adapters") if p.exists()]
    write_manifest(out, config=cfg.model_dump(mode="json"), inputs=inputs, outputs=outputs)


class _Context:
    """State shared by the jobs of one run (model, data, cache, adapter keys and paths)."""

    def __init__(self, cfg, out, cache, data, model, tokenizer, info, progress):
        from lorasum.data import content_hash

        self.cfg, self.out, self.cache, self.data = cfg, out, cache, data
        self.model, self.tokenizer, self.info, self.progress = model, tokenizer, info, progress
        self.hashes = {n: {"train": content_hash(dd.train, dd.validation, []), "test": content_hash([], [], dd.test)}
                       for n, dd in data.items()}
        self.keys: dict[tuple[str, int], str] = {}  # (adapter name, seed) -> job key
        self.paths: dict[tuple[str, int], Path | None] = {}  # None: dense result, not stored
        self.jobs: dict[tuple[str, int], AdapterJob] = {}
        self._encoded: dict[str, list] = {}  # domain -> tokenised test examples

    # -- adapters --------------------------------------------------------------------------
    def _train_key(self, job: AdapterJob) -> str:
        c = self.cfg
        return sha256_json({
            "v": _KEY_VERSION, "model": [self.info.name, self.info.config_hash, self.info.weights_digest],
            "seed": job.seed,
            "train_data": [self.hashes[dom]["train"] for dom in job.domains], "max_length": c.data.max_length,
            "lora": c.lora.model_dump(mode="json", exclude=set() if c.lora.init_per_adapter else {"init_per_adapter"}),
            # parallel training draws other dropout masks: part of the key unless off (1), so old keys stay valid;
            # how a step is cut into forward passes changes memory, not the result
            "train": c.train.model_dump(mode="json", exclude={"checkpoint_every", "parallel_max_tokens"} | (
                {"parallel_adapters", "cuda_graphs"} if c.train.parallel_adapters == 1 else set()) | (
                {"attention_dropout"} if c.train.attention_dropout is None else set())),
        })

    def _params(self, job: AdapterJob) -> dict:
        """The method's parameters; methods with a ``seed`` (DARE) get the experiment seed unless set."""
        from lorasum.compose import get_method

        params = dict(job.params)
        if "seed" in get_method(job.method).params and "seed" not in params:
            params["seed"] = job.seed
        return params

    def _dense(self, job: AdapterJob) -> bool:
        from lorasum.compose import get_method

        return not job.trained and not get_method(job.method).low_rank

    def _row(self, job: AdapterJob, key: str, path: Path | None) -> dict:
        row = {"name": job.name, "kind": job.kind, "method": job.method, "domains": list(job.domains),
               "seed": job.seed, "path": str(path.relative_to(self.out)) if path else None, "key": key}
        if job.trained:
            row["train_data"] = {dom: self.hashes[dom]["train"] for dom in job.domains}
        else:
            row |= {"params": self._params(job), "sources": [self.keys[(s, job.seed)] for s in job.sources]}
        return row

    @staticmethod
    def _folder_key(path: Path) -> str | None:
        """The job key that the adapter folder at ``path`` names (lorasum.json's ``meta.job_key`` of a trained
        adapter, lorasum_job.json's ``job_key`` of a composed one), or None: no adapter there, or not one
        made by a run folder."""
        from lorasum.train import ADAPTER_META_FILE

        if not (path / "adapter_config.json").is_file():
            return None
        for name, field in ((ADAPTER_META_FILE, lambda d: (d.get("meta") or {}).get("job_key")),
                            (_JOB_FILE, lambda d: d.get("job_key"))):
            if not (path / name).is_file():  # missing, or a pipe or device: never read
                continue
            try:
                value = field(json.loads((path / name).read_text(encoding="utf-8")))
            except (OSError, ValueError, AttributeError, RecursionError):
                continue
            if isinstance(value, str):  # a composed adapter's lorasum.json holds only its base-model record
                return value
        return None

    @classmethod
    def _folder_holds(cls, path: Path, key: str) -> bool:
        """Whether the adapter folder at ``path`` is the one of job ``key`` (its lorasum.json names the key):
        a folder left by a run with other settings is redone, never reused under this key."""
        return cls._folder_key(path) == key

    def _made_here(self, path: Path) -> bool:
        """Whether the adapter folder at ``path`` is one this run folder made (with any settings): it names a
        job key whose cache entry (``cache/adapters/KEY.json``) records the very files it holds."""
        key = self._folder_key(path)
        if key is None or not _KEY_PATTERN.fullmatch(key):  # the key becomes a file name: hex only
            return False
        entry_path = self.cache.root / "adapters" / f"{key}.json"
        if not entry_path.is_file():
            return False
        try:
            entry = json.loads(entry_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return False
        if _adapter_entry_problem(entry) is not None:
            return False
        files = entry.get("files")
        return not files or files == _adapter_files(path)

    def check_adapter_folder(self, key: str, path: Path, overwrite: bool) -> None:
        """Before adapter job ``key`` is (re)made at ``path``: refuse to replace what this run folder did not
        make there (an adapter of the user's, of another run folder, or of edited files) unless
        ``overwrite``; such a folder is named in a warning when it is replaced. The run's own folders (its
        earlier settings, an interrupted save, an edited adapter already warned about) are redone as before.

        Raises:
            OutputExistsError: ``path`` holds something else and ``overwrite`` is False.
        """
        if not os.path.lexists(path) or self._folder_holds(path, key) or self._made_here(path):
            return
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            return  # an empty folder: nothing to lose
        what = ("an adapter this run folder did not make (another config, or copied here)"
                if (path / "adapter_config.json").is_file() else "something that is not an adapter this run made")
        if not overwrite:
            raise OutputExistsError(f"{path}: holds {what}; the run would replace it: move it away, or pass "
                                    "--overwrite to replace it")
        log.warning("%s: holds %s; replacing it (--overwrite)", path, what)

    def check_adapter_folders(self, jobs, overwrite: bool) -> None:
        """:meth:`check_adapter_folder` for every stored adapter of ``jobs`` (plan order), before any training."""
        keys = dict(self.keys)
        for job in jobs:
            key = self._job_key(job, keys)
            keys[(job.name, job.seed)] = key
            if not self._dense(job):
                path = self._trained_path(job)
                self._check_links(path)
                self.check_adapter_folder(key, path, overwrite)

    def _job_key(self, job: AdapterJob, keys: dict) -> str:
        """The cache key of adapter ``job``; ``keys`` holds those of its sources ((name, seed) → key)."""
        if job.trained:
            return self._train_key(job)
        return sha256_json({"v": _KEY_VERSION, "method": job.method, "params": self._params(job),
                            "sources": [keys[(s, job.seed)] for s in job.sources]})

    def _adapter_done(self, key: str, path: Path) -> bool:
        """Whether adapter job ``key`` is finished: a usable cache entry and its own folder at ``path``, whose
        config and weights are still the files the entry recorded (SHA-256; entries of earlier versions
        record none). An edited or damaged folder is made again, never evaluated as it is."""
        entry = self.cache.get("adapters", key)
        if entry is None or not self._folder_holds(path, key):
            return False
        files = entry.get("files")
        if isinstance(files, dict) and files:
            now = _adapter_files(path)
            if now != files:
                changed = sorted(n for n in set(files) | set(now) if files.get(n) != now.get(n))
                log.warning("%s: %s changed or missing since this run folder made it; making the adapter again",
                            path, ", ".join(changed))
                return False
        return True

    def _put_adapter(self, key: str, path: Path, value: dict) -> None:
        """Cache adapter job ``key`` with the SHA-256 of its folder's config and weights."""
        self.cache.put("adapters", key, value | {"files": _adapter_files(path)})

    def _check_links(self, path: Path) -> None:
        """Refuse to write the adapter folder ``path`` (or its checkpoint) through a symbolic link."""
        from lorasum.train.checkpoint import checkpoint_dir

        check_no_links(self.out, path)
        check_no_links(self.out, checkpoint_dir(path))
        check_tree_no_links(path.parent, (path.name, checkpoint_dir(path).name))

    def _trained_path(self, job: AdapterJob) -> Path:
        return self.out / "adapters" / f"seed{job.seed}" / job.name

    def train_together(self, jobs: list[AdapterJob]) -> None:
        """Train the trained adapters of ``jobs`` ``train.parallel_adapters`` at a time in one pass over the
        base model (:func:`lorasum.train.train_adapters`); each one is cached as soon as it is saved, so
        :meth:`run_adapter` then finds it.

        Groups are cut from all trained adapters of the run in plan order and always trained whole, so
        an adapter's dropout draws (which depend on the adapters sharing its passes) are those of an
        uninterrupted run. A group's checkpoint (``OUT/adapters/parallel-<hash>.ckpt``, every
        ``train.checkpoint_every`` steps and on SIGINT / SIGTERM) is continued by the next run; a
        damaged one, or one of other settings, is discarded with a warning and the group retrained
        from the start (its finished adapters again, to the same values); ``overwrite`` starts every
        group over. Groups whose adapters are all cached are skipped. Falls back to doing nothing
        (sequential training in :meth:`run_adapter`) where parallel training does not apply."""
        from lorasum.train.checkpoint import CheckpointError, prepare_checkpoint
        from lorasum.train.parallel import ParallelUnsupported

        trained = [(job, self._train_key(job), self._trained_path(job)) for job in jobs if job.trained]
        size = self.cfg.train.parallel_adapters or len(trained)
        groups = [trained[i:i + size] for i in range(0, len(trained), size)]
        current = {self._group_checkpoint(g) for g in groups}
        for old in sorted((self.out / "adapters").glob("parallel-*.ckpt")):
            if old not in current or not self.cache.enabled:  # other settings, or --overwrite
                log.warning("%s: removing the checkpoint of %s", old,
                            "an earlier run (--overwrite)" if old in current else "other settings")
                prepare_checkpoint(old, resume=False, overwrite=True)  # a checkpoint; anything else is refused
        for group in groups:
            if all(self._adapter_done(key, path) for _, key, path in group):
                continue
            ckpt = self._group_checkpoint(group)
            for _, _, path in group:
                self._check_links(path)
            check_no_links(self.out, ckpt)
            try:
                if ckpt.exists() or ckpt.is_symlink():
                    try:
                        self._train_group(group, ckpt, resume=True)
                        continue
                    except CheckpointError as e:  # the run folder is ours: a stale checkpoint goes
                        log.warning("%s; training the group from the start", e)
                        prepare_checkpoint(ckpt, resume=False, overwrite=True)
                self._train_group(group, ckpt, resume=False)
            except ParallelUnsupported as e:  # found before any training: nothing is lost
                log.warning("%s: training the adapters one after the other", e)
                return

    def _group_checkpoint(self, group: list) -> Path:
        return self.out / "adapters" / f"parallel-{sha256_json([key for _, key, _ in group])[:16]}.ckpt"

    def _train_group(self, group: list, ckpt: Path, resume: bool) -> None:
        from lorasum.train import AdapterTask, train_adapters
        from lorasum.train.checkpoint import checkpoint_dir, remove_checkpoint

        log.info("train   %d adapters together: %s", len(group),
                 ", ".join(f"{job.name} (seed {job.seed})" for job, _, _ in group))
        tasks = [AdapterTask(records=self._records(job, "train"), seed=job.seed, out_dir=path,
                             meta=self._train_meta(job, key), validation=self._records(job, "validation") or None)
                 for job, key, path in group]

        def saved(i: int, res) -> None:
            job, key, path = group[i]
            remove_checkpoint(checkpoint_dir(path))  # of an earlier one-at-a-time run (only a checkpoint)
            self._put_adapter(key, path, {"row": self._row(job, key, path), "train": self._summary(res, job)})

        train_adapters(self.model, self.tokenizer, tasks, lora=self.cfg.lora, train=self.cfg.train,
                       max_length=self.cfg.data.max_length, model_info=self.info, overwrite=True,
                       progress=self.progress, on_saved=saved, checkpoint=ckpt, resume=resume)

    def _records(self, job: AdapterJob, split: str) -> list:
        return [r for dom in job.domains for r in getattr(self.data[dom], split)]

    def _train_meta(self, job: AdapterJob, key: str) -> dict:
        return {"job_key": key, "domains": list(job.domains),
                "data": {dom: {"content_hash": self.data[dom].content_hash, "train_hash": self.hashes[dom]["train"],
                               "sources": self.data[dom].sources} for dom in job.domains}}

    def _summary(self, res, job: AdapterJob) -> dict:
        return {"steps": res.steps, "tokens": res.tokens, "seconds": round(res.seconds, 2),
                "final_loss": res.final_loss, "val_loss": res.val_loss, "examples": len(self._records(job, "train")),
                "parallel_adapters": res.parallel_adapters}

    def run_adapter(self, job: AdapterJob) -> dict:
        """Train or compose one adapter unless its folder and cache entry exist; return its row."""
        dense = self._dense(job)
        path = None if dense else self._trained_path(job)
        key = self._job_key(job, self.keys)
        self.keys[(job.name, job.seed)], self.paths[(job.name, job.seed)] = key, path
        self.jobs[(job.name, job.seed)] = job
        row = self._row(job, key, path)
        if dense:
            return row | {"train": None}  # composed in memory when evaluated
        cached = self.cache.get("adapters", key)
        if self._adapter_done(key, path):
            log.info("%-7s %-40s seed %d", "done" if self.cache.fresh("adapters", key) else "cached", job.name, job.seed)
            return row | {"train": cached.get("train")}
        log.info("%-7s %-40s seed %d", "train" if job.trained else "compose", job.name, job.seed)
        self._check_links(path)
        if self.cache.enabled:  # checked before any training too (--overwrite: warned about there)
            self.check_adapter_folder(key, path, overwrite=False)
        summary = self._train(job, path, key) if job.trained else self._compose(job, path)
        self._put_adapter(key, path, {"row": row, "train": summary})
        return row | {"train": summary}

    def _train(self, job: AdapterJob, path: Path, key: str) -> dict:
        from lorasum.train import train_adapter

        from lorasum.train.checkpoint import CheckpointError, checkpoint_dir, remove_checkpoint

        records, validation, meta = self._records(job, "train"), self._records(job, "validation"), self._train_meta(job, key)

        def train(resume: bool):
            return train_adapter(self.model, self.tokenizer, records, lora=self.cfg.lora, train=self.cfg.train,
                                 seed=job.seed, out_dir=path, max_length=self.cfg.data.max_length,
                                 model_info=self.info, meta=meta, validation=validation or None,
                                 overwrite=True, progress=self.progress, resume=resume)

        try:  # an interrupted run left a checkpoint: continue it
            res = train(resume=True)
        except CheckpointError as e:  # the run folder is ours: a stale checkpoint (other settings) goes
            log.warning("%s; training %s from the start", e, job.name)
            remove_checkpoint(checkpoint_dir(path))  # anything else there is refused by train(resume=False)
            res = train(resume=False)
        return self._summary(res, job)

    def _composed(self, job: AdapterJob):
        """The composition result in memory: an Adapter (low-rank methods) or a DenseDelta."""
        from lorasum.adapters import load_adapter
        from lorasum.compose import compose

        sources = [load_adapter(self.paths[(s, job.seed)]) for s in job.sources]
        return compose(sources, job.method, **self._params(job))

    def _compose(self, job: AdapterJob, path: Path) -> None:
        from lorasum.adapters import save_adapter

        key = self.keys[(job.name, job.seed)]
        save_adapter(self._composed(job), path, overwrite=True, base_model=self.info.name,
                     extra_json={_JOB_FILE: {"job_key": key, "method": job.method, "sources": list(job.sources)}})
        return None

    # -- evaluation ------------------------------------------------------------------------
    def _eval_key(self, job: EvalJob) -> str:
        model_key = "base" if job.kind == "base" else self.keys[(job.model, job.seed)]
        ev = self.cfg.eval  # loss_on and stride change the number; batch_size and max_tokens do not
        scoring = {} if (ev.loss_on, ev.stride) == ("answer", None) else {"loss_on": ev.loss_on, "stride": ev.stride}
        return sha256_json({"v": _KEY_VERSION, "model": [self.info.name, self.info.config_hash, self.info.weights_digest, model_key],
                            "test": self.hashes[job.eval_domain]["test"], "max_length": self.cfg.data.max_length}
                           | scoring)

    def run_evaluations(self, jobs: tuple[EvalJob, ...]) -> list[dict]:
        """Evaluate every job not in the cache; each model is put on once for all its missing domains.

        With ``eval.compile``, the decoder layers are compiled once on CUDA and every model is scored with
        them: the ΔW of each LoRA folder (trained adapters, sums, hybrids, low-rank methods) is added to the
        base weights in place for its evaluations and taken off again
        (:func:`lorasum.experiment.activate.merged_slot`), as dense results always are; without it, LoRA
        folders are loaded as PEFT adapters. Same numbers either way up to bf16 rounding (merged weights,
        compiled kernels): the cache keys do not depend on it."""
        keyed = [[(job, self._eval_key(job)) for job in group]
                 for _, group in groupby(jobs, key=lambda j: (j.model, j.seed))]
        found = {key: self._cached_eval(job, key) for group in keyed for job, key in group}
        todo, scheduled = [], set()  # a key in several groups (the base model of each seed) is scored once
        for group in keyed:
            missing = [(job, key) for job, key in group if found[key] is None and key not in scheduled]
            scheduled |= {key for _, key in missing}
            if missing:
                todo.append(missing)
        if self.cfg.eval.compile and len(todo) > 1:  # one model alone: nothing to share a compilation with
            from lorasum.experiment.activate import merged_slot

            cuda = next(self.model.parameters()).is_cuda
            log.info("eval    %d models scored with %sdecoder layers, each adapter's ΔW merged into the base "
                     "weights (eval.compile)", len(todo), "compiled " if cuda else "")
            with merged_slot(self.model, compile=cuda) as merged:
                for t in todo:
                    path = self._lora_folder(t[0][0])
                    if path is None:  # the base model, a dense result
                        found |= self._evaluate(t)
                    else:
                        with merged(path) as model:
                            found |= self._evaluate(t, model)
        else:
            for t in todo:
                found |= self._evaluate(t)
        return [self._eval_row(job, key, found[key]) for group in keyed for job, key in group]

    def _cached_eval(self, job: EvalJob, key: str) -> dict | None:
        """The cached evaluation ``key`` reduced to its three numbers, or None (not cached, or damaged:
        see :func:`eval_entry_problem`; its ``n_examples`` must also be the number of test examples)."""
        entry = self.cache.get("evals", key)
        if entry is None:
            return None
        expected = len(self.data[job.eval_domain].test)
        if entry["n_examples"] != expected:
            self.cache.reject("evals", key, f"n_examples {entry['n_examples']}, but the test split of "
                              f"{job.eval_domain} has {expected} examples")
            return None
        return {"nll_sum": float(entry["nll_sum"]), "n_tokens": entry["n_tokens"], "n_examples": entry["n_examples"]}

    def _lora_folder(self, job: EvalJob) -> Path | None:
        """The PEFT folder of ``job``'s model, or None (the base model, a dense result)."""
        return None if job.kind == "base" else self.paths[(job.model, job.seed)]

    def _test_set(self, domain: str) -> list:
        """The domain's test examples, tokenised once for all the models scored on them."""
        from lorasum.evaluate import encode_for_eval

        if domain not in self._encoded:
            ev = self.cfg.eval
            self._encoded[domain] = encode_for_eval(self.tokenizer, self.data[domain].test,
                                                    max_length=self.cfg.data.max_length, loss_on=ev.loss_on,
                                                    stride=ev.stride)
        return self._encoded[domain]

    def _evaluate(self, todo: list[tuple[EvalJob, str]], active=None) -> dict[str, dict]:
        """Score ``todo`` (one model's missing domains) with ``active`` (the model with the adapter on)
        or, by default, with the adapter put on for the purpose (:meth:`_active`)."""
        from lorasum.evaluate import score

        done = {}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with (contextlib.nullcontext(active) if active is not None else self._active(todo[0][0])) as model:
            for job, key in todo:
                log.info("eval    %-40s seed %d on %s", job.model, job.seed, job.eval_domain)
                p = score(model, self._test_set(job.eval_domain), pad_token_id=pad_id,
                          n_examples=len(self.data[job.eval_domain].test), batch_size=self.cfg.eval.batch_size,
                          max_tokens=self.cfg.eval.max_tokens)
                done[key] = {"nll_sum": p.nll_sum, "n_tokens": p.n_tokens, "n_examples": p.n_examples}
                if p.n_tokens == 0:  # a perplexity of nothing: the data settings leave no answer token
                    raise DataError(f"domain {job.eval_domain}: no answer token left to score in its "
                                    f"{p.n_examples} test examples (dropped or cut as too long: data.max_length "
                                    f"{self.cfg.data.max_length}, data.long_rows {self.cfg.data.long_rows})")
                problem = eval_entry_problem(done[key])
                if problem is None:
                    self.cache.put("evals", key, done[key])
                else:  # reported, and not cached: a later run evaluates it again
                    log.warning("eval    %s seed %d on %s: %s; kept as it is in results.json but not cached",
                                job.model, job.seed, job.eval_domain, problem)
        return done

    def _eval_row(self, job: EvalJob, key: str, value: dict) -> dict:
        return {"model": job.model, "kind": job.kind, "method": job.method, "domains": list(job.domains),
                "seed": job.seed, "eval_domain": job.eval_domain} | with_ppl(value) | {
                "key": key, "adapter_key": None if job.kind == "base" else self.keys[(job.model, job.seed)],
                "test_hash": self.hashes[job.eval_domain]["test"],
                "base_model": {"name": self.info.name, "config_hash": self.info.config_hash}}

    def _active(self, job: EvalJob):
        """Context manager yielding the base model with ``job``'s adapter on (or the base model itself)."""
        from lorasum.experiment.activate import dense_delta, peft_adapter

        if job.kind == "base":
            return contextlib.nullcontext(self.model)
        path = self.paths[(job.model, job.seed)]
        if path is None:
            return dense_delta(self.model, self._composed(self.jobs[(job.model, job.seed)]))
        return peft_adapter(self.model, path)

    # -- geometry --------------------------------------------------------------------------
    def geometry(self, grid: Plan) -> tuple[dict[int, dict], dict[tuple[str, int], float]]:
        """Per seed: cosines of the single adapters' ΔW (per pair, module and layer); and the RMS
        cosine between the parts of every composition ((name, seed) → value)."""
        from lorasum.adapters import load_adapter
        from lorasum.geometry import module_cosines, rms, similarity

        geometry, parts = {}, {}
        for seed in grid.seeds:
            singles = {dom: load_adapter(self.paths[(dom, seed)]) for dom in grid.domains}
            sim = similarity(singles)
            geometry[seed] = {
                "names": list(sim.names), "shapes": {m: list(s) for m, s in sim.shapes.items()},
                "pairs": {(p.a, p.b): {"rms": p.rms, "mean_abs": p.mean_abs, "max_abs": p.max_abs,
                                       "cosines": dict(p.cosines),
                                       "layer_rms": {str(k): v for k, v in p.layer_rms.items()}}
                          for p in sim.pairs.values()},
                "combination_rms": {"+".join(s): float(sim.combination_rms(s)) for s in grid.subsets},
            }
            for job in grid.compositions(seed):
                if job.kind == "hybrid":
                    merged_part = load_adapter(self.paths[(job.sources[0], seed)])
                    cos = module_cosines(merged_part, singles[job.single]).values()
                    parts[(job.name, seed)] = float(rms(cos))
                else:
                    parts[(job.name, seed)] = geometry[seed]["combination_rms"]["+".join(job.domains)]
        return geometry, parts
