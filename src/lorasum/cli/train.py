"""``lorasum train``: one LoRA adapter on one domain, or on the merged data of several."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._options import (add_data_options, add_model_options, add_train_options, build_config, check_max_length,
                       check_out_not_inputs, csv_list, experiment_inputs, nonempty, seed, truncation_warnings)
from ._options import load_data as _load_data

log = logging.getLogger("lorasum")


def add_parser(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train one adapter (several domains: merged-data baseline)",
                       description="Train a LoRA adapter on one domain's training set, or with --domain a,b on the "
                       "union of several (the merged-data baseline). Writes a PEFT adapter folder plus lorasum.json.")
    p.add_argument("--domain", required=True, type=csv_list, help="domain(s): math, medicine, finance, pubmedqa")
    p.add_argument("--out", required=True, type=nonempty, help="adapter folder to create")
    p.add_argument("--seed", type=seed, default=0, help="training seed, 0 to 2**63 - 1 (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out when the new adapter is saved; "
                   "without --resume, also start over from step 0, discarding a checkpoint in OUT.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.ckpt (left by an "
                   "interrupted run with the same settings); without one, start from step 0. An interrupted "
                   "--overwrite run is continued with --resume --overwrite (its old --out is still there)")
    add_model_options(p)
    add_data_options(p)
    add_train_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorasum.models import load_model
    from lorasum.storage import check_output, write_manifest
    from lorasum.train import train_adapter
    from lorasum.train.checkpoint import check_checkpoint, checkpoint_dir

    cfg = build_config(args)
    if cfg.train.parallel_adapters != 1:
        logging.getLogger("lorasum").warning(
            "train.parallel_adapters applies to `lorasum reproduce`; `lorasum train` trains one adapter")
    check_output(args.out, args.overwrite)  # fail before the slow steps
    check_out_not_inputs(args.out, *experiment_inputs(args, cfg))  # never the model, the data or the config
    # something in the checkpoint's place that is not one (kept whatever the flags), or a checkpoint without
    # --resume / --overwrite: said before loading anything
    check_checkpoint(checkpoint_dir(args.out), resume=args.resume, overwrite=args.overwrite)
    data = _load_data(cfg, args.domain)  # before the slow model load: data errors come first
    model, tokenizer, info = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    max_length = _max_length(cfg, data)
    check_max_length(args, model, max_length, data[0].name if _own_max_length(data) else None)  # before tokenising
    _show(truncation_warnings(data, tokenizer, max_length))  # before training: a long run is not wasted unawares
    records = [r for dd in data for r in dd.train]
    validation = [r for dd in data for r in dd.validation]
    meta = {"domains": args.domain,
            "data": {dd.name: {"content_hash": dd.content_hash, "sources": dd.sources} for dd in data}}
    res = train_adapter(model, tokenizer, records, lora=cfg.lora, train=cfg.train, seed=args.seed,
                        out_dir=args.out, max_length=max_length, model_info=info, meta=meta,
                        validation=validation or None, overwrite=args.overwrite, progress=not args.quiet,
                        resume=args.resume)
    write_manifest(args.out, config=cfg.model_dump(mode="json") | {"domains": args.domain, "seed": args.seed},
                   inputs=_inputs(cfg, data), outputs=[Path(args.out)])
    val = f", validation loss {res.val_loss:.4f}" if res.val_loss is not None else ""
    print(f"{args.out}: {res.steps} step{'' if res.steps == 1 else 's'}, {res.tokens} tokens in {res.seconds:.1f} s, "
          f"final loss {res.final_loss:.4f}{val}")
    return 0


def _inputs(cfg, data) -> dict[str, Path]:
    """Data files behind the training records, for the manifest (paths relative to the data root)."""
    from lorasum.config import data_root

    root = data_root(cfg.data)
    return {f"data/{dd.name}/{s['path']}": root / s["path"] for dd in data for s in dd.sources
            if (root / s["path"]).exists()}


def _show(warnings: list[str]) -> None:
    for message in warnings:
        log.warning("%s", message)


def _own_max_length(data) -> int | None:
    """A single custom domain's own max_length, if it sets one (several domains share ``data.max_length``)."""
    return getattr(data[0], "max_length", None) if len(data) == 1 else None


def _max_length(cfg, data) -> int:
    """A single custom domain's own max_length if it sets one, else ``data.max_length``."""
    return _own_max_length(data) or cfg.data.max_length
