"""``lorasum similarity``: cosine similarity of adapters' ΔW, exactly from the LoRA factors."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from pathlib import Path

from ._options import check_distinct_adapters, nonempty


def add_parser(sub, common) -> None:
    p = sub.add_parser("similarity", parents=[common], help="cosine similarity of adapters' ΔW per module and RMS",
                       description="For every pair of adapters: cos(ΔWᵢ, ΔWⱼ) = ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖_F ‖ΔWⱼ‖_F) for "
                       "each adapted module, computed from r×r products of the factors (⟨B₁A₁, B₂A₂⟩_F = "
                       "tr((B₁ᵀB₂)(A₂A₁ᵀ))) without forming ΔW, and the RMS over modules (square root of the "
                       "mean squared cosine), next to the RMS expected for independent random matrices of "
                       "the same shapes.")
    p.add_argument("adapters", nargs="+", type=nonempty, help="two or more PEFT LoRA adapter folders")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="table (default); json (everything); csv: one row per pair (RMS cosine, random baseline, "
                   "mean and max |cos|, modules), or with --per-module one row per pair and module")
    p.add_argument("--per-module", action="store_true", help="table: every module's cosine and subspace overlaps; "
                   "csv: one row per pair and module (modules in natural order: layer 2 before layer 10)")
    p.add_argument("--per-layer", action="store_true", help="table: RMS cosine per layer")
    p.add_argument("--plot", metavar="FILE", type=_plot_file, help="write a heatmap of the N×N RMS-cosine matrix; "
                   "the format is the extension's: .png, .pdf or .svg (the folder must exist and lie outside the "
                   "adapters)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.set_defaults(func=run)


def _plot_file(text: str) -> str:
    """``--plot``: a file name whose extension is a figure format (argparse type, so that a bad one is
    refused before anything is read: ``argument --plot: sim has no extension; use .png, .pdf or .svg``)."""
    from lorasum.geometry.export import figure_format

    try:
        figure_format(nonempty(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _names(paths: list[str]) -> list[str]:
    """Folder names, or the paths as given when two folders share a name.

    Raises:
        ConfigError: the same adapter folder is given twice.
    """
    check_distinct_adapters(paths)
    names = [Path(p).name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def _check_plot_path(plot: str, adapters: list[str]) -> str:
    """Refuse a ``--plot`` file with an extension other than .png, .pdf, .svg, whose folder does not
    exist (or is not a folder), or that is, holds or lies inside an input adapter, before any work.

    Returns:
        The figure format (``png``, ``pdf`` or ``svg``).

    Raises:
        ConfigError: naming ``--plot`` and the extension or the folder.
        OutputExistsError: the file overlaps an input adapter (named in the message).
    """
    from lorasum.errors import ConfigError, OutputExistsError
    from lorasum.geometry.export import figure_format
    from lorasum.storage import check_not_inputs

    try:
        fmt = figure_format(plot)
    except ValueError as e:
        raise ConfigError(f"--plot: {e}") from None  # the parser's type checks it first: for other callers
    folder = Path(plot).parent
    if not folder.is_dir():
        what = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise ConfigError(f"--plot {plot}: folder {folder} {what}; create it first or choose another path")
    try:
        check_not_inputs(plot, adapters)  # the README's rule: outputs never touch what the command reads
    except OutputExistsError as e:
        raise OutputExistsError(f"--plot {e}") from None
    return fmt


def run(args: argparse.Namespace) -> int:
    from lorasum.adapters import load_adapter
    from lorasum.errors import ConfigError
    from lorasum.geometry import similarity
    from lorasum.geometry.export import (CSV_COLUMNS, PAIR_CSV_COLUMNS, matrix_heatmap, pair_rows, similarity_rows,
                                        write_figure)
    from lorasum.storage import check_output

    from .compose import deferred_warnings

    if len(args.adapters) < 2:
        raise ConfigError("similarity needs at least two adapters")
    if args.plot:
        fmt = _check_plot_path(args.plot, args.adapters)
        check_output(args.plot, args.overwrite)
    names = _names(args.adapters)
    # similarity() refuses adapters of different base models (check_same_base_model) before any math; its
    # caveats (same config, other source) are shown once it succeeds
    with deferred_warnings():
        sim = similarity(dict(zip(names, (load_adapter(p) for p in args.adapters), strict=True)))
    if args.plot:
        write_figure(matrix_heatmap(sim, fmt), args.plot, overwrite=args.overwrite)
    if args.format == "json":
        # undefined numbers (a ΔW of zero norm) are null: to_dict() maps NaN/inf to None
        print(json.dumps(sim.to_dict(), indent=2, allow_nan=False))
    elif args.format == "csv":
        buf = io.StringIO()
        columns, rows = (CSV_COLUMNS, similarity_rows(sim)) if args.per_module else (PAIR_CSV_COLUMNS, pair_rows(sim))
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        _print_table(sim, args)
    return 0


def _num(v: float, spec: str, width: int = 0) -> str:
    """``v`` formatted with ``spec``, or ``n/a`` (right-aligned to ``width``) when it is NaN or inf."""
    return format(v, spec) if math.isfinite(v) else format("n/a", f">{width}")


def _print_table(sim, args) -> None:
    from lorasum.geometry.layers import natural_key

    pairs = list(sim.pairs.values())
    width = max(len(f"{p.a} · {p.b}") for p in pairs)
    print(f"{'pair':<{width}}  {'RMS cos':>9}  {'random':>9}  {'mean|cos|':>9}  {'max|cos|':>9}  modules")
    undefined = {}
    for p in pairs:
        print(f"{p.a + ' · ' + p.b:<{width}}  {_num(p.rms, '>9.5f', 9)}  {_num(p.baseline_rms, '>9.5f', 9)}  "
              f"{_num(p.mean_abs, '>9.5f', 9)}  {_num(p.max_abs, '>9.5f', 9)}  {len(p.cosines)}")
        if p.undefined:
            undefined[f"{p.a} · {p.b}"] = p.undefined
        if args.per_layer:
            for layer, v in sorted(p.layer_rms.items()):
                print(f"    layer {layer:>3}  RMS cos {_num(v, '+.5f')}")
        if args.per_module:
            for m in sorted(p.cosines, key=natural_key):
                c = p.cosines[m]
                print(f"    {m}  cos {_num(c, '+.5f', 8)}  col-overlap {_num(p.column_overlap.get(m, math.nan), '.3f')}  "
                      f"row-overlap {_num(p.row_overlap.get(m, math.nan), '.3f')}")
    print("random: RMS cosine expected for independent random matrices of the same shapes "
          "(E[cos²] = 1/(d_out·d_in)).")
    for pair, modules in undefined.items():
        more = f" and {len(modules) - 3} more" if len(modules) > 3 else ""
        print(f"n/a: {pair}: the cosine is undefined in {len(modules)} module{'s' if len(modules) != 1 else ''} "
              f"where a ΔW is zero ({', '.join(modules[:3])}{more}), so the pair's summaries are too.")
