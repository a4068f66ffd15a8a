"""Benchmark: loading a GGUF model (default ``smollm2-135m``), each variant in a fresh process. Prints one JSON line.

Variants, timed around ``load_model`` alone (imports done before the clock starts):

* ``convert``: the first load, the model cache off: transformers parses the file and de-quantises it, with
  lorasum parsing the file once (``lorasum.models._gguf_parsed_once``);
* ``convert_reparse``: the same with that memo turned off, so transformers parses the file for the config, the
  tokenizer and the weights (the baseline: what ``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)``
  plus ``AutoTokenizer`` do on their own);
* ``cached``: a later load from the float32 copy kept in the model cache (a fresh temporary cache, filled first).

Each variant runs ``--repeat`` times (a new process each); the JSON has the best and the median seconds.
Run: python benchmarks/bench_load_model.py [--model smollm2-135m] [--repeat 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

_CHILD = r"""
import contextlib, json, os, sys, time
import torch, transformers, gguf  # imports before the clock
import lorasum.models as models
if sys.argv[2] == "convert_reparse":
    models._gguf_parsed_once = contextlib.nullcontext
t = time.perf_counter()
model, tok, info = models.load_model(sys.argv[1], device=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "n_params": info.n_params}))
"""


def _run(variant: str, model: str, device: str, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, model, variant, device], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="an alias or a .gguf file")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for variant in ("convert", "convert_reparse", "cached"):
            env = dict(os.environ, LORASUM_MODEL_CACHE="off" if variant != "cached" else cache)
            if variant == "cached":
                _run("convert", args.model, args.device, env)  # fills the cache
            times = [_run(variant, args.model, args.device, env) for _ in range(args.repeat)]
            results[variant] = {"best_s": round(min(times), 2), "median_s": round(statistics.median(times), 2)}
    print(json.dumps({
        "benchmark": "load_model", "model": args.model, "device": args.device, **results,
        "speedup_convert": round(results["convert_reparse"]["best_s"] / results["convert"]["best_s"], 2),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
