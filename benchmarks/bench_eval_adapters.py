"""Benchmark: evaluation throughput with a LoRA adapter on, four ways, on the test sets of a config. Prints
JSON lines.

The three test sets of ``configs/paper.yaml`` (math, medicine, finance; cut at data.max_length, answer-token NLL)
scored with :func:`lorasum.evaluate.score` (bf16 autocast, inference mode, length-sorted batches of
``eval.batch_size`` examples and ``eval.max_tokens`` tokens), each variant timed after one warm-up pass over the
same sets (the warm-up, compilation included, is printed too):

* ``base-eager``: the base model, eager;
* ``base-compiled``: the base model, decoder layers compiled (:func:`lorasum.models.compiled_layers`);
* ``lora12-compiled``: a PEFT LoRA adapter of rank 12 (the rank of a sum of three r=4 adapters) on all seven
  projections of a Llama-shaped model, its LoRA branch run in the compiled layers (what a PEFT hotswap slot does);
* ``lora12-merged-compiled``: the same adapter merged into the weights (PEFT's ``merge_adapter``: the forward of
  the base layers with W + ΔW, as :func:`lorasum.experiment.activate.merged_slot` gives), compiled layers.

``--profile`` adds a kernel-time breakdown (torch.profiler) of one pass over the medicine set per variant but the
last.

Run (GPU): LORASUM_DATA_ROOT=... python benchmarks/bench_eval_adapters.py MODEL [--profile]
  (MODEL: e.g. smollm2-135m, or a saved model folder)
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import time

import torch

from lorasum.config import load_config
from lorasum.data import load_domains
from lorasum.evaluate import encode_for_eval, score
from lorasum.models import compiled_layers, load_model

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--config", default="configs/paper.yaml")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config).model_copy(update={"model": args.model})
    model, tok, _ = load_model(cfg.model, device="cuda")
    data = load_domains(cfg, tokenizer=tok)
    ev = cfg.eval
    sets = {d: encode_for_eval(tok, data[d].test, max_length=cfg.data.max_length, loss_on=ev.loss_on)
            for d in cfg.domains}
    n_tokens = sum(len(e.input_ids) for s in sets.values() for e in s)
    print(json.dumps({d: {"examples": len(s), "tokens": sum(len(e.input_ids) for e in s)} for d, s in sets.items()}),
          flush=True)
    pad = tok.pad_token_id or 0

    def timed(m, tag):
        torch.cuda.synchronize()
        t = time.perf_counter()
        nll = sum(score(m, s, pad_token_id=pad, batch_size=ev.batch_size, max_tokens=ev.max_tokens).nll_sum
                  for s in sets.values())
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
        print(json.dumps({"variant": tag, "seconds": round(wall, 3), "tokens_per_s": round(n_tokens / wall),
                          "nll": nll, "device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)

    def profiled(m, tag):
        if not args.profile:
            return
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as p:
            score(m, sets["medicine"], pad_token_id=pad, batch_size=ev.batch_size, max_tokens=ev.max_tokens)
            torch.cuda.synchronize()
        cats, top = collections.Counter(), collections.Counter()
        for e in p.events():
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            name = e.name.lower()
            cat = ("gemm" if any(s in name for s in ("gemm", "nvjet", "cutlass_80", "cublas")) else
                   "attention" if any(s in name for s in ("flash", "fmha", "attention")) else
                   "triton" if name.startswith("triton") else "other")
            cats[cat] += e.device_time_total
            top[e.name[:80]] += e.device_time_total
        print(json.dumps({"profile": tag, "gpu_ms": {k: round(v / 1000, 1) for k, v in cats.items()},
                          "top": [(n, round(v / 1000, 1)) for n, v in top.most_common(8)]}), flush=True)

    timed(model, "base-eager-warm")
    timed(model, "base-eager")
    profiled(model, "base-eager")
    with compiled_layers(model, True):
        timed(model, "base-compiled-warm")
        timed(model, "base-compiled")
        profiled(model, "base-compiled")
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=12, lora_alpha=192, target_modules=LLAMA_PROJECTIONS,
                                                  init_lora_weights=False))
    with compiled_layers(peft_model, True):
        timed(peft_model, "lora12-compiled-warm")
        timed(peft_model, "lora12-compiled")
        profiled(peft_model, "lora12-compiled")
    peft_model.merge_adapter()
    with compiled_layers(peft_model, True):
        timed(peft_model, "lora12-merged-compiled-warm")
        timed(peft_model, "lora12-merged-compiled")


if __name__ == "__main__":
    main()
