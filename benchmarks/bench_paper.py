"""Benchmark: the whole experiment of a config on one GPU, wall time and peak memory. Prints one JSON line.

Runs ``run_experiment`` in this process (as ``lorasum reproduce`` does: model load, data,
training of every adapter, composition, every perplexity, report), from an empty output
folder, and reports the wall time, the summed training seconds and tokens, peak GPU memory
(``torch.cuda.max_memory_allocated``) and, with ``--compare``, the largest relative difference
of each (model, seed, domain) perplexity from an earlier results.json (training draws other
dropout masks when examples are packed, so the numbers agree closely but not exactly).

Run: LORASUM_DATA_ROOT=... python benchmarks/bench_paper.py --config configs/gpu-smollm2.yaml
         --out runs/bench-paper [--compare results/gpu-smollm2/results.json] [--compile] [--eval-compile] [--resume [--fresh-evals]]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from lorasum.config import load_config
from lorasum.experiment import run_experiment


def _ppl_rows(results: dict) -> dict[tuple, float]:
    return {(e["model"], e["seed"], e["eval_domain"]): e["ppl"] for e in results["evaluations"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", help="comma-separated; default the config's")
    ap.add_argument("--compare", help="an earlier results.json of the same config")
    ap.add_argument("--compile", action="store_true", help="set train.compile (torch.compile the decoder layers)")
    ap.add_argument("--model", help="override the config's model (e.g. smollm2-135m where GPT-2 is unavailable)")
    ap.add_argument("--parallel", type=int, help="set train.parallel_adapters (0: all adapters in one pass)")
    ap.add_argument("--eval-compile", action="store_true", help="set eval.compile (adapters swapped into one "
                    "compiled PEFT slot)")
    ap.add_argument("--fresh-evals", action="store_true",
                    help="with --resume: forget the cached evaluations of --out first, so that only they are redone "
                         "(A/B of evaluation settings on the same adapters)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out (e.g. one stopped by SIGTERM at a call's time limit) instead of "
                         "starting it over; wall_seconds and timings are then this process's part")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    cfg = load_config(args.config, seeds=seeds)
    train = {"compile": True} if args.compile else {}
    if args.parallel is not None:
        train["parallel_adapters"] = args.parallel
    update = {"train": cfg.train.model_copy(update=train)} | ({"model": args.model} if args.model else {})
    if args.eval_compile:
        update["eval"] = cfg.eval.model_copy(update={"compile": True})
    cfg = cfg.model_copy(update=update)
    resumed = args.resume and (Path(args.out) / "run.json").is_file()  # else run_experiment starts the run
    if args.fresh_evals:
        if not args.resume:
            ap.error("--fresh-evals needs --resume (a finished run folder)")
        if not resumed:
            ap.error(f"--fresh-evals: {args.out} is not a lorasum run folder (no run.json); nothing deleted")
        shutil.rmtree(Path(args.out) / "cache" / "evals", ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    results = run_experiment(cfg, args.out, overwrite=not args.resume, progress=False)
    wall = time.perf_counter() - t
    trained = [a["train"] for a in results["adapters"] if a.get("train")]
    out = {
        "benchmark": "full_experiment", "config": args.config, "seeds": cfg.seeds, "model": cfg.model, "compile": cfg.train.compile,
        "eval_compile": cfg.eval.compile,
        "parallel_adapters": cfg.train.parallel_adapters,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "wall_seconds": round(wall, 1), "resumed": resumed, "timings": results.get("timings"),
        # a continued run: the adapters' figures below are of the whole run (every process that trained them)
        "adapter_figures": "whole run" if resumed else "this process",
        "adapters_trained": len(trained),
        # adapters trained together share one loop: its time is the longest of theirs, not the sum
        "train_seconds": round(max(a["seconds"] for a in trained) if cfg.train.parallel_adapters != 1
                               else sum(a["seconds"] for a in trained), 1),
        "train_tokens": sum(a["tokens"] for a in trained),
        "evaluations": len(results["evaluations"]),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    out["train_tokens_per_s"] = round(out["train_tokens"] / max(out["train_seconds"], 1e-9))
    if args.compare:
        with open(args.compare, encoding="utf-8") as f:
            old = _ppl_rows(json.load(f))
        new = _ppl_rows(results)
        common = [k for k in new if k in old]
        out["compared_ppl"] = len(common)
        out["max_rel_ppl_diff"] = max((abs(new[k] - old[k]) / old[k] for k in common), default=None)
    try:  # where torch.compile spent its time (dynamo, AOT autograd, Inductor), seconds summed per phase
        from torch._dynamo.utils import compile_times

        logging.info("torch.compile phases (seconds, summed):\n%s", compile_times(repr="str", aggregate=True))
    except Exception as e:  # noqa: BLE001 - a private API: never fail the benchmark because of it
        logging.info("torch.compile phases unavailable: %s", e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
