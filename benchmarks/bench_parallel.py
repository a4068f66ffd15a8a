"""Benchmark: training the adapters of an experiment one after the other vs together. Prints JSON lines.

Takes a config's trained adapters (every seed: singles and merged sets) on the real data and trains each
for ``--steps`` optimiser steps (the config's batch size and LoRA settings):

* ``sequential``: :func:`lorasum.train.train_adapter`, one adapter (the first), the per-step cost of
  training them one after the other;
* ``parallel``: :func:`lorasum.train.train_adapters`, all of them in one pass over the base model,
  with the masked-SDPA attention of packed rows and with variable-length attention
  (``--compile`` adds a run with ``train.compile``).

Each variant runs once for ``--warmup`` steps first (CUDA kernels, allocator). Each adapter gets a
random sample of its training set large enough for the steps (tokenising whole sets would dominate a
short run). Times are those of the training loops (``TrainResult.seconds``: for the parallel run, until
the last adapter is saved; set-up before the loop, PEFT's initialisation of the k adapters and
tokenisation, is not counted). Throughput counts the examples' own tokens (no padding);
``ms_per_step`` is per optimiser step of the whole group.

Run: LORASUM_DATA_ROOT=... python benchmarks/bench_parallel.py --config configs/paper.yaml --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from lorasum.config import load_config
from lorasum.data import load_domains
from lorasum.experiment.grid import plan
from lorasum.models import load_model
from lorasum.train import AdapterTask, train_adapter, train_adapters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--model", help="override the config's model")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--variants", default="sequential,parallel_sdpa_mask,parallel_varlen,parallel_varlen_graphs",
                    help="comma-separated, of: sequential, parallel_sdpa_mask, parallel_varlen (eager passes), "
                    "parallel_varlen_graphs (CUDA graphs); with --compile also the compiled graphs variant")
    ap.add_argument("--tail", action="store_true",
                    help="also time the parallel variants on the adapters with the most steps only (the end of a "
                    "run, when the others have finished: each seed's merged math+medicine and triple)")
    args = ap.parse_args()
    known = {"sequential", "parallel_sdpa_mask", "parallel_varlen", "parallel_varlen_graphs"}
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not wanted or set(wanted) - known:
        ap.error(f"--variants: choose from {', '.join(sorted(known))} (got {args.variants!r})")
    cfg = load_config(args.config)
    if args.model:
        cfg = cfg.model_copy(update={"model": args.model})
    model, tok, info = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    data = load_domains(cfg, tokenizer=tok)
    jobs = [j for j in plan(cfg.domains, cfg.seeds).adapters if j.trained]
    need = (args.steps + 1) * cfg.train.batch_size * cfg.train.grad_accum
    rng = random.Random(0)
    records = [rng.sample(pool, min(need, len(pool))) for j in jobs
               for pool in [[r for d in j.domains for r in data[d].train]]]
    device = next(model.parameters()).device
    base = {"config": args.config, "model": cfg.model, "adapters": len(jobs), "batch_size": cfg.train.batch_size,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__}
    tmp = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the adapters trained here are not kept

    def measure(name, fn, n_adapters):
        for steps in (args.warmup, args.steps):
            train = cfg.train.model_copy(update={"max_steps": steps})
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            tokens, dt = fn(train, tmp / f"{name}-{steps}")
        row = base | {"variant": name, "adapters_in_pass": n_adapters, "steps": args.steps,
                      "ms_per_step": round(1000 * dt / args.steps, 1), "tokens_per_s": round(tokens / dt),
                      "seconds": round(dt, 2)}
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps(row), flush=True)

    def sequential(train, out):
        r = train_adapter(model, tok, records[0], lora=cfg.lora, train=train, seed=jobs[0].seed, out_dir=out,
                          max_length=cfg.data.max_length, model_info=info, progress=False)
        return r.tokens, r.seconds

    def parallel(varlen, graphs, subset):
        def run(train, out):
            tasks = [AdapterTask(records=r, seed=j.seed, out_dir=out / f"{j.name}-{j.seed}", meta={"domains": list(j.domains)})
                     for i, (j, r) in enumerate(zip(jobs, records)) if i in subset]
            res = train_adapters(model, tok, tasks, lora=cfg.lora, train=train.model_copy(update={"cuda_graphs": graphs}),
                                 max_length=cfg.data.max_length, model_info=info, progress=False, varlen=varlen)
            return sum(r.tokens for r in res), max(r.seconds for r in res)
        return run

    every = set(range(len(jobs)))
    longest = max(sum(len(data[d].train) for d in j.domains) for j in jobs)
    tail = {i for i, j in enumerate(jobs) if sum(len(data[d].train) for d in j.domains) >= 0.75 * longest}
    variants = {"sequential": lambda: measure("sequential", sequential, 1)}
    for name, varlen, graphs in (("parallel_sdpa_mask", False, False), ("parallel_varlen", None, False),
                                 ("parallel_varlen_graphs", None, True)):
        variants[name] = (lambda name=name, varlen=varlen, graphs=graphs: [
            measure(name + suffix, parallel(varlen, graphs, subset), len(subset))
            for suffix, subset in [("", every)] + ([("_tail", tail)] if args.tail else [])])
    for name in wanted:
        variants[name]()
    if args.compile:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": True})})
        measure("parallel_varlen_graphs_compiled", parallel(None, True, every), len(every))


if __name__ == "__main__":
    main()
