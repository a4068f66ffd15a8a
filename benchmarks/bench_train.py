"""Benchmark: LoRA training throughput, lorasum vs Hugging Face Trainer + PEFT. Prints one JSON line.

Same data, model and target modules on both sides, in one run:

* data: synthetic question/answer records over a word-level tokenizer of GPT-2's vocabulary size
  (50,257 words, one token each), 36-126 tokens per example (mean about 81);
* model: GPT-2 Small shape, random init (``GPT2Config()`` defaults), LoRA r=4, lora_alpha=64,
  dropout 0.1 on c_attn, c_proj, c_fc (attn.c_proj and mlp.c_proj both match c_proj);
* baseline: a typical script: ``Trainer`` + ``get_peft_model``, rows right-padded to 128 tokens,
  batch 8, ``TrainingArguments`` defaults (float32), loss on all tokens;
* lorasum: ``train_adapter`` (packed rows, bf16 autocast, fused AdamW, answer-token loss),
  eager and with ``train.compile``, at a larger batch and at the baseline's batch of 8; optionally
  (``--smollm2``) SmolLM2-135M's shape with all 7 projections targeted.

Throughput counts the examples' own tokens (no padding) per second of optimisation, after a
warm-up run (compilation included there). MFU: model FLOPs per token of a frozen-base LoRA step,
``4 * N_body + 4 * V * d * f + 12 * n_layer * d * c`` (forward and input-gradient matmuls of the
N_body non-embedding weights; the LM head at the fraction f of tokens that carry the loss;
causal attention over a mean context c), over the bf16 matmul rate measured in the same run
(8192^3 products). Peak memory: ``torch.cuda.max_memory_allocated`` per variant.

Run (GPU): python benchmarks/bench_train.py [--steps 40] [--smollm2]; --quick: a CPU smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.data.tokenize import encode_record
from lorasum.models import describe_model
from lorasum.train import train_adapter

GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def word_tokenizer(vocab_size: int):
    """A word-level ``PreTrainedTokenizerFast``: words ``w0 .. w{n}`` plus the prompt's words, one token each."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>", "<unk>", "Question", "Answer", ":"] + [f"w{i}" for i in range(vocab_size - 5)]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")


def make_records(n: int, vocab_size: int, seed: int = 0) -> list[Record]:
    """Records of 30-80 question words and 1-40 answer words (36-127 tokens with the template)."""
    rng = random.Random(seed)
    word = lambda: f"w{rng.randrange(vocab_size - 5)}"  # noqa: E731
    return [Record(id=f"r{i}", domain="synthetic", question=" ".join(word() for _ in range(rng.randint(30, 80))),
                   answer=" ".join(word() for _ in range(rng.randint(1, 40)))) for i in range(n)]


def matmul_peak_tflops(n: int = 8192, reps: int = 10) -> float:
    """bf16 matrix-product rate on random data (TFLOP/s), mean of ``reps`` after 3 warm-ups."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def flops_per_token(config, mean_len: float, scored_fraction: float) -> float:
    """Model FLOPs per token of a LoRA step with a frozen base (see the module docstring)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    kv = d * getattr(config, "num_key_value_heads", config.num_attention_heads) // config.num_attention_heads
    mlp = (3 if hasattr(config, "intermediate_size") else 2) * d * inner  # gated (Llama) or not (GPT-2)
    body = layers * (2 * d * d + 2 * d * kv + mlp)
    return 4 * body + 4 * config.vocab_size * d * scored_fraction + 12 * layers * d * (mean_len / 2)


def gpt2_small(vocab_size: int, quick: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab_size) if not quick else GPT2Config(
        vocab_size=vocab_size, n_layer=2, n_embd=64, n_head=2)
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def smollm2_shape(vocab_size: int, quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    size = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3) if not quick else dict(hidden_size=64, intermediate_size=128,
                                                              num_hidden_layers=2, num_attention_heads=4,
                                                              num_key_value_heads=2)
    cfg = LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=True, rope_theta=100000.0, **size)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


@contextlib.contextmanager
def peak_memory():
    """Yields a dict that receives ``peak_gib`` (CUDA only)."""
    out: dict = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield out
    if torch.cuda.is_available():
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def hf_baseline(model, tok, records, targets, steps: int, warm: int, batch: int = 8, width: int = 128) -> dict:
    """HF Trainer + PEFT, right-padded rows of ``width`` tokens, TrainingArguments defaults."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    rows = []
    for r in records:  # the usual tokenise-pad-truncate, labels = inputs with padding masked
        ids = (tok(f"Question: {r.question}\nAnswer: {r.answer}")["input_ids"] + [tok.eos_token_id])[:width]
        pad = width - len(ids)
        rows.append({"input_ids": ids + [tok.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
                     "labels": ids + [-100] * pad})
    real = sum(sum(r["attention_mask"]) for r in rows) / len(rows)
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warm, steps):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, lora_dropout=0.1, target_modules=targets,
                                                  fan_in_fan_out=True, task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=3e-4, logging_steps=10_000, save_strategy="no", report_to=[],
                                 disable_tqdm=True)
        Trainer(model=peft_model, args=args, train_dataset=rows, data_collator=default_data_collator,
                callbacks=[Clock()]).train()
    peft_model.unload()
    seconds = marks[steps] - marks[warm]
    n = (steps - warm) * batch
    return {"tokens_per_s": n * real / seconds, "padded_tokens_per_s": n * width / seconds,
            "steps": steps - warm, "batch": batch, "seconds": seconds, "mean_tokens": real,
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"}


def lorasum_run(model, tok, records, targets, *, batch: int, steps: int, compile: bool, max_length: int) -> dict:
    """``train_adapter``: a warm-up run (compilation), then the timed run."""
    info = describe_model(model, name="bench")
    lora = LoraSpec(r=4, lora_alpha=64, lora_dropout=0.1, target_modules=targets)
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate((max(3, steps // 8), steps)):
            train = TrainSpec(batch_size=batch, max_steps=n, learning_rate=3e-4, compile=compile)
            res = train_adapter(model, tok, records, lora=lora, train=train, seed=i, out_dir=Path(tmp) / str(i),
                                max_length=max_length, model_info=info, progress=False)
            if i == 0:
                warm_s = res.seconds
        packed = json.loads((Path(tmp) / "1" / "lorasum.json").read_text())["packed"]
    return {"tokens_per_s": res.tokens / res.seconds, "steps": res.steps, "batch": batch, "seconds": res.seconds,
            "warmup_seconds": warm_s, "compile": compile, "packed": packed, "tokens": res.tokens}


def variant(name: str, fn, results: dict, flops: float | None = None, peak: float | None = None) -> None:
    """Run one variant, keep its numbers (or its error) under ``results[name]``."""
    try:
        with peak_memory() as mem:
            out = fn()
        out |= mem
        if flops and peak:
            out["tflops"] = out["tokens_per_s"] * flops / 1e12
            out["mfu"] = out["tflops"] / peak
        results[name] = out
    except Exception as e:  # a failing variant must not hide the others
        results[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        traceback.print_exc(file=sys.stderr)
    print(name, json.dumps(results[name]), file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed optimiser steps per lorasum variant")
    ap.add_argument("--batch", type=int, default=256, help="lorasum examples per step (the fast setting)")
    ap.add_argument("--hf-steps", type=int, default=80, help="HF Trainer steps (the first 20 %% are warm-up)")
    ap.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M's shape, all projections")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny models, few steps (a CPU smoke test)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    vocab = 50257
    tok = word_tokenizer(vocab)
    records = make_records(512 if args.quick else 4096, vocab)
    encoded = [encode_record(tok, r, 128) for r in records[:2000]]
    mean_len = sum(len(e.input_ids) for e in encoded) / len(encoded)
    answer_frac = sum(e.n_answer_tokens for e in encoded) / sum(len(e.input_ids) for e in encoded)
    results: dict = {"benchmark": "train_throughput", "device": torch.cuda.get_device_name() if cuda else "cpu",
                     "torch": torch.__version__, "mean_example_tokens": round(mean_len, 1),
                     "answer_token_fraction": round(answer_frac, 3)}
    import transformers

    results["transformers"] = transformers.__version__
    peak = matmul_peak_tflops() if cuda else None
    results["bf16_matmul_peak_tflops"] = peak
    steps, hf_steps = (4, 10) if args.quick else (args.steps, args.hf_steps)
    batch = 16 if args.quick else args.batch
    compiles = [False] if (args.no_compile or not cuda) else [False, True]

    model = gpt2_small(vocab, args.quick).to(device)  # float32, as a typical script leaves it
    cfg = model.config
    variant("gpt2_hf_trainer_peft", lambda: hf_baseline(model, tok, records, GPT2_TARGETS, hf_steps, hf_steps // 5),
            results, flops_per_token(cfg, mean_len, 1.0), peak)
    if cuda:
        model = model.to(torch.bfloat16)  # lorasum's load_model: bfloat16 weights on CUDA
    for comp in compiles:
        variant(f"gpt2_lorasum{'_compiled' if comp else ''}",
                lambda: lorasum_run(model, tok, records, GPT2_TARGETS, batch=batch, steps=steps, compile=comp,
                                    max_length=128), results, flops_per_token(cfg, mean_len, answer_frac), peak)
    variant("gpt2_lorasum_batch8", lambda: lorasum_run(model, tok, records, GPT2_TARGETS, batch=8, steps=steps * 2,
                                                       compile=False, max_length=128),
            results, flops_per_token(cfg, mean_len, answer_frac), peak)
    del model
    if args.smollm2:
        small = smollm2_shape(49152, args.quick).to(device, torch.bfloat16 if cuda else torch.float32)
        tok_s = word_tokenizer(49152)
        recs_s = make_records(len(records), 49152)
        for comp in compiles:
            variant(f"smollm2_lorasum{'_compiled' if comp else ''}",
                    lambda: lorasum_run(small, tok_s, recs_s, LLAMA_TARGETS, batch=batch, steps=steps,
                                        compile=comp, max_length=128),
                    results, flops_per_token(small.config, mean_len, answer_frac), peak)
    base = results["gpt2_hf_trainer_peft"].get("tokens_per_s")
    for k, v in list(results.items()):
        if isinstance(v, dict) and base and "tokens_per_s" in v and k.startswith("gpt2_lorasum"):
            v["ratio_vs_hf"] = round(v["tokens_per_s"] / base, 2)
    print(json.dumps(results, default=lambda x: round(x, 4) if isinstance(x, float) else str(x)))


if __name__ == "__main__":
    main()
