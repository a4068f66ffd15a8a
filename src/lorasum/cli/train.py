"""``lorasum train``: one LoRA adapter on one domain, or on the merged data of several."""

from __future__ import annotations

import argparse
import logging

from ._options import add_data_options, add_model_options, add_train_options, build_config, csv_list

log = logging.getLogger("lorasum")


def add_parser(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train one adapter (several domains: merged-data baseline)",
                       description="Train a LoRA adapter on one domain's training set, or with --domain a,b on the "
                       "union of several (the merged-data baseline). Writes a PEFT adapter folder plus lorasum.json.")
    p.add_argument("--domain", required=True, type=csv_list, help="domain(s): math, medicine, finance, pubmedqa")
    p.add_argument("--out", required=True, help="adapter folder to create")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_model_options(p)
    add_data_options(p)
    add_train_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorasum.config import data_root
    from lorasum.data import load_domain
    from lorasum.models import load_model
    from lorasum.storage import check_output
    from lorasum.train import train_adapter

    cfg = build_config(args)
    check_output(args.out, args.overwrite)  # fail before the slow steps
    root, d = data_root(cfg.data), cfg.data
    data = [load_domain(name, root, split_seed=d.split_seed, validation_fraction=d.validation_fraction,
                        test_fraction=d.test_fraction, train_size=d.train_size,
                        validation_size=d.validation_size, test_size=d.test_size) for name in args.domain]
    model, tokenizer, info = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    records = [r for dd in data for r in dd.train]
    validation = [r for dd in data for r in dd.validation]
    meta = {"domains": args.domain,
            "data": {dd.name: {"content_hash": dd.content_hash, "sources": dd.sources} for dd in data}}
    res = train_adapter(model, tokenizer, records, lora=cfg.lora, train=cfg.train, seed=args.seed,
                        out_dir=args.out, max_length=cfg.data.max_length, model_info=info, meta=meta,
                        validation=validation or None, overwrite=args.overwrite, progress=not args.quiet)
    val = f", validation loss {res.val_loss:.4f}" if res.val_loss is not None else ""
    print(f"{args.out}: {res.steps} steps, {res.tokens} tokens in {res.seconds:.1f} s, "
          f"final loss {res.final_loss:.4f}{val}")
    return 0
