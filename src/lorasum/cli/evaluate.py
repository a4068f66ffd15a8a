"""``lorasum eval``: test perplexity of a model (optionally with an adapter), per domain."""

from __future__ import annotations

import argparse
import json

from ._options import add_data_options, add_model_options, build_config, csv_list


def add_parser(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common], help="test perplexity per domain",
                       description="Perplexity = exp(token-weighted mean NLL over answer tokens) on each domain's "
                       "test split, and on their union.")
    add_model_options(p)
    add_data_options(p)
    p.add_argument("--adapter", help="PEFT LoRA adapter folder to apply (default: the base model alone)")
    p.add_argument("--domain", required=True, type=csv_list, help="domain(s): math, medicine, finance, pubmedqa")
    p.add_argument("--batch-size", type=int, help="examples per forward pass (default 8)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorasum.config import data_root
    from lorasum.data import load_domain
    from lorasum.evaluate import perplexity
    from lorasum.models import load_model

    cfg = build_config(args)
    root, d = data_root(cfg.data), cfg.data
    data = [load_domain(name, root, split_seed=d.split_seed, validation_fraction=d.validation_fraction,
                        test_fraction=d.test_fraction, test_size=d.test_size) for name in args.domain]
    model, tokenizer, _ = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if args.adapter:
        from lorasum.adapters import load_adapter
        from peft import PeftModel

        load_adapter(args.adapter)  # validates the folder with a clear error before PEFT sees it
        model = PeftModel.from_pretrained(model, args.adapter).eval()
    results = {dd.name: perplexity(model, tokenizer, dd.test, max_length=cfg.data.max_length,
                                   batch_size=cfg.eval.batch_size, progress=not args.quiet) for dd in data}
    if len(results) > 1:
        total = None
        for p in results.values():
            total = p if total is None else total + p
        results["union"] = total
    if args.format == "json":
        print(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2))
        return 0
    print(f"{'domain':<10} {'perplexity':>11} {'mean NLL':>9} {'tokens':>8} {'examples':>8}")
    for name, p in results.items():
        print(f"{name:<10} {p.ppl:>11.4f} {p.mean_nll:>9.4f} {p.n_tokens:>8} {p.n_examples:>8}")
    return 0
