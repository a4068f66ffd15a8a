"""``lorasum data``: inspect the domains' records and splits."""

from __future__ import annotations

import argparse
import json

from ._options import csv_list


def add_parser(sub, common) -> None:
    p = sub.add_parser("data", parents=[common], help="inspect domain data (stats)")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    s = dsub.add_parser("stats", parents=[common], help="records and split sizes per domain")
    s.add_argument("--domains", type=csv_list, default=["math", "medicine", "finance"])
    s.add_argument("--data-root", help="data folder (default $LORASUM_DATA_ROOT)")
    s.add_argument("--split-seed", type=int, default=0)
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    from lorasum.config import DataSpec, data_root
    from lorasum.data import load_domain

    root = data_root(DataSpec(root=args.data_root))
    rows = {}
    for name in args.domains:
        dd = load_domain(name, root, split_seed=args.split_seed)
        rows[name] = {"train": len(dd.train), "validation": len(dd.validation), "test": len(dd.test),
                      "groups": len({r.split_key for r in dd.train + dd.validation + dd.test}),
                      "content_hash": dd.content_hash[:12], "report": dd.report}
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'domain':<10} {'train':>7} {'valid':>7} {'test':>7} {'groups':>7}  content")
    for name, r in rows.items():
        print(f"{name:<10} {r['train']:>7} {r['validation']:>7} {r['test']:>7} {r['groups']:>7}  {r['content_hash']}")
    return 0
