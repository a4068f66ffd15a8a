"""``lorasum eval``: test perplexity of a model (optionally with an adapter), per domain."""

from __future__ import annotations

import argparse
import json
import logging
import math

from lorasum.errors import DataError

from ._options import (add_data_options, add_model_options, build_config, check_max_length, csv_list, integer,
                       nonempty, truncation_warnings)
from ._options import load_data as _load_data

log = logging.getLogger("lorasum")


def add_parser(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common], help="test perplexity per domain",
                       description="Perplexity = exp(token-weighted mean NLL over answer tokens) on each domain's "
                       "test split, and on their union.")
    add_model_options(p)
    for action in p._actions:  # the shared help names gpt2 as the default, which --adapter changes here
        if action.dest == "model":
            action.help = ("hub id, local folder, .gguf file, or smollm2-135m (default: the config's model; else, "
                           "with --adapter, the base model recorded in the adapter's lorasum.json, else gpt2)")
    add_data_options(p, training=False)  # --train-size / --validation-size: hidden, no effect on the test split
    p.add_argument("--adapter", type=nonempty, help="PEFT LoRA adapter folder to apply (default: the base model "
                   "alone); one trained on another base model (per its lorasum.json) is refused; without --model (and "
                   "no model in --config) its recorded base model is loaded, as compose --merge-into-base does")
    p.add_argument("--domain", required=True, type=csv_list, help="domain(s): math, medicine, finance, pubmedqa")
    p.add_argument("--batch-size", type=integer, help="examples per forward pass (default 8)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default): a line per domain (and their union); json: the same figures "
                   "(perplexity, mean NLL, tokens, examples) as one object")
    p.set_defaults(func=run)


def _model_given(args: argparse.Namespace) -> bool:
    """Whether the model was chosen: by ``--model``, or by a ``model:`` key in the ``--config`` file
    (not by the schema's default)."""
    from lorasum.config import load_config

    return args.model is not None or bool(args.config and "model" in load_config(args.config).model_fields_set)


def run(args: argparse.Namespace) -> int:
    from lorasum.evaluate import perplexity
    from lorasum.models import load_model

    cfg = build_config(args)
    adapter, recorded_note = None, None
    if args.adapter and not _model_given(args):
        # no model chosen: the adapter's own base model (as compose --merge-into-base finds it), not the schema's
        # default; read before the data, which may need the model's tokenizer (data.long_rows: drop)
        from lorasum.adapters import load_adapter

        from .compose import recorded_base_model

        adapter = load_adapter(args.adapter)
        recorded, recorded_note = recorded_base_model([adapter])
        if recorded:
            cfg = cfg.model_copy(update={"model": recorded})
            log.info("base model %s, as recorded by %s (pass --model to choose another)", recorded, args.adapter)
    data = _load_data(cfg, args.domain)  # before the slow model load: data errors come first
    if args.adapter and adapter is None:
        from lorasum.adapters import load_adapter

        adapter = load_adapter(args.adapter)  # a broken folder is reported before the model load
    model, tokenizer, info = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    for dd in data:  # before the adapter is applied and anything is scored
        check_max_length(args, model, dd.max_length or cfg.data.max_length, dd.name if dd.max_length else None)
    if adapter is not None:
        from lorasum.adapters import check_adapter_base, check_adapter_matches_model, peft_from_pretrained

        from .compose import deferred_warnings

        # the adapter must belong to this base model (lorasum.json's config hash and architecture: an
        # AdapterError, exit 2), and its shapes must fit, with a clear error before PEFT sees it; a caveat
        # is shown only when the adapter passes
        with deferred_warnings():
            if recorded_note:  # the recorded source is missing and its typed name was loaded instead
                log.warning("%s", recorded_note)
            note = check_adapter_base(adapter, info)
            if note:
                log.warning("warning: %s", note)
            check_adapter_matches_model(adapter, model)
            model = peft_from_pretrained(model, adapter).eval()  # PEFT's load checked against the files
    # as `lorasum train` does: test examples cut at max_length lose answer tokens from the score (said once the
    # model and adapter are accepted, so that an error before stays the only line)
    for dd in data:
        for message in truncation_warnings([dd], tokenizer, dd.max_length or cfg.data.max_length, splits=("test",),
                                            windows=("test",) if cfg.eval.stride else ()):
            log.warning("%s", message)
    e = cfg.eval
    results = {dd.name: perplexity(model, tokenizer, dd.test, max_length=dd.max_length or cfg.data.max_length,
                                   batch_size=e.batch_size, loss_on=e.loss_on, stride=e.stride,
                                   max_tokens=e.max_tokens, progress=not args.quiet) for dd in data}
    for name, p in results.items():  # no silently wrong numbers: an empty or non-finite score is an error
        if p.n_tokens == 0:
            raise DataError(f"domain {name}: no answer token left to score in its {p.n_examples} test examples "
                            "(examples dropped as too long or answers empty?)")
        if not math.isfinite(p.nll_sum):
            raise DataError(f"domain {name}: the NLL is not finite ({p.nll_sum}): the model"
                            + (f" with adapter {args.adapter}" if args.adapter else "") + " gives non-finite logits")
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
