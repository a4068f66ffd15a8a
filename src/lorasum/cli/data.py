"""``lorasum data``: inspect the domains' records, splits and token lengths."""

from __future__ import annotations

import argparse
import json
import logging

from ._options import build_config, csv_list, integer, nonempty

log = logging.getLogger("lorasum")

#: Tokenizer used for the length columns when neither --model nor --config names a model.
DEFAULT_STATS_MODEL = "smollm2-135m"


def add_parser(sub, common) -> None:
    p = sub.add_parser("data", parents=[common], help="inspect domain data (stats)")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    s = dsub.add_parser(
        "stats", parents=[common], help="records, groups, removals and token lengths per domain and split",
        description="Per domain and split: records, split groups, records removed (duplicates, empty, bad rows) "
        "and token-length percentiles p50/p90/p99/max with the share of examples over --max-length.")
    s.add_argument("--config", type=nonempty,
                   help="experiment YAML: its domains (custom_domains too), data settings and model")
    s.add_argument("--domains", type=csv_list, help="domains to show (default: the config's, or math,medicine,finance)")
    s.add_argument("--data-root", type=nonempty, help="data folder (default $LORASUM_DATA_ROOT)")
    s.add_argument("--split-seed", type=integer, help="seed of the train/validation/test split (default 0)")
    s.add_argument("--model", type=nonempty,
                   help=f"tokenizer of this model for the length columns (default {DEFAULT_STATS_MODEL})")
    s.add_argument("--max-length", type=integer, help="token limit for the truncation rate (default 512)")
    s.add_argument("--no-tokens", action="store_true", help="skip tokenising (no length columns; fast)")
    s.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    from lorasum.data import load_domains
    from lorasum.data.lengths import describe_domain

    cfg = build_config(args)
    if args.skip_bad_rows:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"skip_bad_rows": True})})
    names = args.domains or cfg.domains
    model = args.model or (cfg.model if args.config else DEFAULT_STATS_MODEL)
    tokenizer = None
    if not args.no_tokens:
        from lorasum.models import load_tokenizer

        log.info("loading the tokenizer of %s", model)
        tokenizer = load_tokenizer(model)
    data = load_domains(cfg, names, tokenizer=tokenizer)
    if tokenizer is not None:
        log.info("tokenising %d records", sum(len(d.train) + len(d.validation) + len(d.test) for d in data.values()))
    stats = {name: describe_domain(dd, tokenizer, cfg.data.max_length) for name, dd in data.items()}
    if args.format == "json":
        out = {"model": None if tokenizer is None else model, "split_seed": cfg.data.split_seed, "domains": stats}
        print(json.dumps(out, indent=2))
    else:
        print(format_table(stats, with_tokens=tokenizer is not None))
        if tokenizer is not None:
            print(f"token lengths: tokenizer of {model}; trunc = share of examples over the max length")
    return 0


def _cell(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def format_table(stats: dict[str, dict], *, with_tokens: bool) -> str:
    """One row per domain and split (``all`` = the union) of :func:`~lorasum.data.lengths.describe_domain` output.

    ``dups`` and ``other`` (empty rows, bad rows, ...) are removals before splitting, shown on the ``all`` row.
    """
    head = f"{'domain':<10} {'split':<10} {'records':>8} {'groups':>7} {'dups':>5} {'other':>5}"
    if with_tokens:
        head += f" {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} {'limit':>6} {'trunc':>7}"
    lines = [head, "-" * len(head)]
    for name, st in stats.items():
        other = sum(v for k, v in st["removed"].items() if k not in ("exact_duplicates", "normalized_duplicates"))
        for split, row in st["splits"].items():
            first = split == "all"
            line = (f"{name:<10} {split:<10} {row['records']:>8} {row['groups']:>7} "
                    f"{st['duplicates_removed'] if first else '':>5} {other if first else '':>5}")
            if with_tokens:
                t = row["tokens"]
                rate = t["truncation_rate"]
                line += (f" {_cell(t['p50'], '.0f'):>6} {_cell(t['p90'], '.0f'):>6} {_cell(t['p99'], '.0f'):>6}"
                         f" {_cell(t['max']):>6} {_cell(st['max_length']):>6}"
                         f" {'-' if rate is None else format(100 * rate, '.1f') + '%':>7}")
            lines.append(line)
    return "\n".join(lines)
