"""Benchmark: perplexity throughput, lorasum vs a plain padded loop. Prints one JSON line.

Same model (GPT-2 Small shape, random init), the same tokenised examples (lorasum's prompt
layout, answer-only labels, 36-127 tokens; see bench_train.py) and the same NLL on both sides:

* baseline: the plain Hugging Face loop: float32 weights, batches of 8 in the data's order,
  right-padded to the longest, ``torch.no_grad``, full (B, T, V) logits, cross-entropy on the
  answer tokens;
* lorasum: :func:`lorasum.evaluate.perplexity` (bfloat16 weights as loaded on CUDA, bf16
  autocast, inference mode, length-sorted batches, the LM head only at answer positions).

Reported: tokens per second (the examples' own tokens), the summed NLLs and their relative
difference (bf16 against float32), peak GPU memory of each.

Run (GPU): python benchmarks/bench_eval.py [--n 4000]; --quick: a CPU smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import gpt2_small, make_records, peak_memory, word_tokenizer  # noqa: E402

from lorasum.data.tokenize import collate, encode_record  # noqa: E402
from lorasum.evaluate import perplexity  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_loop(model, tok, records, max_length: int, batch: int = 8) -> tuple[float, int]:
    """Summed answer-token NLL the plain way (see the module docstring)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch):
            b = collate([encode_record(tok, r, max_length) for r in records[start : start + batch]],
                        tok.pad_token_id)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            labels = b["labels"][:, 1:].to(device)
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total, count


def timed(fn):
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="examples")
    ap.add_argument("--batch", type=int, default=128, help="lorasum examples per batch at most")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    vocab = 50257
    tok = word_tokenizer(vocab)
    records = make_records(64 if args.quick else args.n, vocab, seed=1)
    n_tokens = sum(len(encode_record(tok, r, 128).input_ids) for r in records)
    model = gpt2_small(vocab, args.quick).to(device)
    out = {"benchmark": "eval_throughput", "device": torch.cuda.get_device_name() if cuda else "cpu",
           "examples": len(records), "tokens": n_tokens}

    plain_loop(model, tok, records[:16], 128)  # warm-up
    with peak_memory() as mem:
        (ref, ref_n), secs = timed(lambda: plain_loop(model, tok, records, 128))
    out["plain_fp32_batch8"] = {"tokens_per_s": n_tokens / secs, "seconds": secs, "nll_sum": ref, **mem}

    if cuda:
        model = model.to(torch.bfloat16)
    run = lambda recs: perplexity(model, tok, recs, max_length=128, batch_size=args.batch)  # noqa: E731
    run(records[: args.batch])  # warm-up
    with peak_memory() as mem:
        got, secs = timed(lambda: run(records))
    out["lorasum"] = {"tokens_per_s": n_tokens / secs, "seconds": secs, "nll_sum": got.nll_sum,
                      "batch_size": args.batch, **mem}
    assert got.n_tokens == ref_n, (got.n_tokens, ref_n)
    out["nll_rel_diff"] = abs(got.nll_sum - ref) / abs(ref)
    out["ratio"] = out["lorasum"]["tokens_per_s"] / out["plain_fp32_batch8"]["tokens_per_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
