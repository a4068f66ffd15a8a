"""``lorasum similarity``: cosine similarity of adapters' ΔW, exactly from the LoRA factors."""

from __future__ import annotations

import argparse
import csv
import io
import json
from itertools import combinations
from pathlib import Path


def add_parser(sub, common) -> None:
    p = sub.add_parser("similarity", parents=[common], help="cosine similarity of adapters' ΔW per module and RMS",
                       description="For every pair of adapters: cos(ΔWᵢ, ΔWⱼ) = ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖_F ‖ΔWⱼ‖_F) for "
                       "each adapted module, computed from r×r products of the factors (⟨B₁A₁, B₂A₂⟩_F = "
                       "tr((B₁ᵀB₂)(A₂A₁ᵀ))) without forming ΔW, and the RMS over modules (square root of the "
                       "mean squared cosine).")
    p.add_argument("adapters", nargs="+", help="two or more PEFT LoRA adapter folders")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--per-module", action="store_true", help="also print every module's cosine (table format)")
    p.set_defaults(func=run)


def _names(paths: list[str]) -> list[str]:
    names = [Path(p).name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def run(args: argparse.Namespace) -> int:
    from lorasum.adapters import load_adapter
    from lorasum.errors import ConfigError
    from lorasum.geometry import module_cosines, rms

    if len(args.adapters) < 2:
        raise ConfigError("similarity needs at least two adapters")
    names = _names(args.adapters)
    adapters = dict(zip(names, (load_adapter(p) for p in args.adapters), strict=True))
    rows = []
    for a, b in combinations(names, 2):
        cos = module_cosines(adapters[a], adapters[b])
        vals = list(cos.values())
        rows.append({"a": a, "b": b, "rms_cosine": rms(vals), "mean_abs_cosine": sum(abs(v) for v in vals) / len(vals),
                     "max_abs_cosine": max(abs(v) for v in vals), "modules": len(vals), "per_module": cos})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["a", "b", "module", "cosine"])
        for r in rows:
            for m, v in r["per_module"].items():
                w.writerow([r["a"], r["b"], m, f"{v:.8g}"])
        print(buf.getvalue(), end="")
    else:
        width = max(len(f"{r['a']} · {r['b']}") for r in rows)
        print(f"{'pair':<{width}}  {'RMS cos':>9}  {'mean|cos|':>9}  {'max|cos|':>9}  modules")
        for r in rows:
            print(f"{r['a'] + ' · ' + r['b']:<{width}}  {r['rms_cosine']:>9.5f}  {r['mean_abs_cosine']:>9.5f}  "
                  f"{r['max_abs_cosine']:>9.5f}  {r['modules']}")
            if args.per_module:
                for m, v in r["per_module"].items():
                    print(f"    {m}  {v:+.5f}")
    return 0
