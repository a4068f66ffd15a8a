"""``lorasum reproduce`` (the whole experiment) and ``lorasum report`` (rebuild a report)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._options import check_out_not_inputs, csv_list, experiment_inputs, int_list, nonempty


def add_parser(sub, common) -> None:
    p = sub.add_parser("reproduce", parents=[common], help="run the whole experiment from a config",
                       description="Train one adapter per domain and a merged-data adapter per combination, sum "
                       "the single adapters (and, per config, build hybrids and other compositions), evaluate "
                       "everything per domain, measure RMS cosines, write a report. "
                       "An existing run folder is continued: finished work is reused.")
    p.add_argument("--config", required=True, type=nonempty, help="experiment YAML (see configs/)")
    p.add_argument("--out", required=True, type=nonempty, help="run folder (created, or continued if it is one)")
    p.add_argument("--seeds", type=int_list, help="override the config's seeds, e.g. 0,1,2")
    p.add_argument("--domains", type=csv_list, help="override the config's domains, e.g. math,medicine")
    p.add_argument("--model", type=nonempty, help="override the config's model")
    p.add_argument("--device", type=nonempty, help="override the config's device")
    p.add_argument("--overwrite", action="store_true", help="recompute everything instead of reusing cached work")
    p.set_defaults(func=run)

    r = sub.add_parser("report", parents=[common], help="rebuild the report of a run folder",
                       description="Rebuild RUN/report/ from RUN/results.json.")
    r.add_argument("run_dir", type=nonempty, help="run folder written by reproduce")
    r.set_defaults(func=run_report)


#: reproduce's flags that replace a key of the config (for messages that name the flag)
_OVERRIDE_FLAGS = {"seeds": "--seeds", "domains": "--domains", "model": "--model", "device": "--device"}


def run(args: argparse.Namespace) -> int:
    from lorasum.config import load_config
    from lorasum.experiment import run_experiment
    from lorasum.storage import check_output_name

    check_output_name(args.out)  # `--out ""` would be the current folder: refused before the config is read
    cfg = load_config(args.config, flags=_OVERRIDE_FLAGS, seeds=args.seeds, domains=args.domains, model=args.model,
                      device=args.device)
    check_out_not_inputs(args.out, *experiment_inputs(args, cfg))  # never the model, the data or the config
    results = run_experiment(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    _print_headline(results)
    print(f"report: {Path(args.out) / 'report' / 'report.md'}")
    return 0


def _print_headline(results: dict) -> None:
    """Every composition (sums, hybrids, other methods) against merged-data fine-tuning, mean ± std over seeds."""
    from lorasum.report.summary import cell, compositions

    rows = [(c.label, c.what, cell(c.rms_cosine, "cos"), cell(c.per_seed("ppl"), "ppl"),
             cell(c.per_seed("ppl_merged"), "ppl"), cell(c.per_seed("change"), "pct")) for c in compositions(results)]
    head = ("combination", "composition", "RMS cos", "PPL composed", "PPL merged", "Δ % (union)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))


def run_report(args: argparse.Namespace) -> int:
    from lorasum.errors import UserError
    from lorasum.report import check_report_dir, load_results, write_report
    from lorasum.storage import check_tree_no_links

    run_dir = Path(args.run_dir)
    if not os.path.lexists(run_dir):
        raise UserError(f"{run_dir}: no such run folder (give the folder that reproduce wrote, with results.json "
                        "in it)")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run folder (give the folder that reproduce wrote, with "
                        "results.json in it)")
    check_tree_no_links(run_dir, ("report",))  # RUN/report a link to a folder of the user's: never written through
    check_report_dir(run_dir / "report")  # RUN/report a file: said before results.json is read
    results = load_results(run_dir / "results.json")
    written = write_report(results, run_dir / "report")
    for path in written.values():
        print(path)
    return 0
