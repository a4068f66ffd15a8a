"""``lorasum compose``: combine adapters without training (exact sum by default)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(sub, common) -> None:
    from lorasum.compose import METHODS

    methods = ", ".join(f"{n}{'' if m.low_rank else ' (dense)'}" for n, m in METHODS.items())
    p = sub.add_parser("compose", parents=[common], help="compose adapters without training (exact ΔW sum)",
                       description="Combine PEFT LoRA adapters. The default method, sum, writes Σ wᵢ ΔWᵢ "
                       "(ΔWᵢ = scalingᵢ·Bᵢ·Aᵢ) as one PEFT adapter whose rank is the sum of theirs, exact to float "
                       "rounding. Low-rank results are PEFT adapters; dense ones (ties, dare_*, magnitude_prune) "
                       "are written as dense_delta.safetensors. --merge-into-base writes a full model instead. "
                       f"Methods: {methods}.")
    p.add_argument("adapters", nargs="+", help="PEFT LoRA adapter folders")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--method", default="sum", choices=sorted(METHODS), metavar="METHOD",
                   help="composition method (default sum)")
    p.add_argument("--weights", type=_floats, help="one weight wᵢ per adapter, comma-separated (default 1 each; write "
                   "--weights=-1,1 when the first is negative)")
    p.add_argument("--rank", type=int, help="svd: target rank k per module")
    p.add_argument("--density", type=float, help="ties, magnitude_prune: fraction of entries kept (0, 1]; default 0.2")
    p.add_argument("--drop-prob", type=float, help="dare_linear, dare_ties: drop probability p in [0, 1); default 0.9")
    p.add_argument("--scale", type=float, help="task_arithmetic: scale λ; default 1.0")
    p.add_argument("--seed", type=_seed, help="dare_*: seed of the random drop mask (0 to 2**63 - 1); default 0")
    p.add_argument("--merge-into-base", action="store_true", help="write a merged full model instead")
    p.add_argument("--model", help="base model for --merge-into-base (default: the adapters' base model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def _seed(text: str) -> int:
    """A seed torch.Generator.manual_seed takes: an integer in [0, 2**63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2**63)")
    return value


def _count(adapters: list) -> str:
    return f"{len(adapters)} adapter{'s' if len(adapters) != 1 else ''}"


def _params(args: argparse.Namespace) -> dict:
    names = {"weights": "weights", "rank": "rank", "density": "density", "drop_prob": "drop_prob",
             "scale": "scale", "seed": "seed"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}


def run(args: argparse.Namespace) -> int:
    from lorasum.adapters import load_adapter, save_adapter
    from lorasum.compose import METHODS, compose, compose_svd_report, merge_into_base, save_dense_delta
    from lorasum.errors import ConfigError
    from lorasum.storage import atomic_dir, check_not_inputs, check_output, write_manifest

    check_output(args.out, args.overwrite)
    check_not_inputs(args.out, args.adapters)
    if args.weights is not None and len(args.weights) != len(args.adapters):
        raise ConfigError(f"--weights has {len(args.weights)} values for {len(args.adapters)} adapters")
    adapters = [load_adapter(a) for a in args.adapters]
    base = _load_base(args, adapters) if args.merge_into_base else None  # checked before any math
    params = _params(args)
    report = None
    if args.method == "svd" and "rank" not in params:
        raise ConfigError("--method svd needs --rank K (the target rank per module)")
    if args.method == "svd" and not args.merge_into_base:
        result, report = compose_svd_report(adapters, **params)
    else:
        result = compose(adapters, method=args.method, **params)
    out = Path(args.out)
    if args.merge_into_base:
        _write_merged(args, result, adapters, base, merge_into_base, atomic_dir)
    elif METHODS[args.method].low_rank:
        extra = {"svd_report.json": {m: r.to_dict() for m, r in report.items()}} if report is not None else None
        save_adapter(result, out, overwrite=args.overwrite, base_model=adapters[0].base_model, extra_json=extra)
        ranks = sorted({f.rank for f in result.factors.values()})
        print(f"{out}: {args.method} of {_count(adapters)}, {len(result.factors)} modules, "
              f"rank {'/'.join(map(str, ranks))}")
    else:
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            save_dense_delta(result, tmp / "dense_delta.safetensors")
        print(f"{out}: {args.method} of {_count(adapters)} as a dense ΔW over {len(result.deltas)} modules "
              f"(dense_delta.safetensors: not a PEFT adapter, so lorasum eval cannot load it; to evaluate, "
              f"compose with --merge-into-base and run lorasum eval --model on that folder)")
    write_manifest(out, config={"command": "compose", "method": args.method, "params": params,
                                "merge_into_base": args.merge_into_base, "model": args.model},
                   inputs={f"adapter{i}": Path(a) for i, a in enumerate(args.adapters)}, outputs=[out])
    return 0


def _load_base(args, adapters):
    """(model, tokenizer, name) for --merge-into-base, after checking every adapter's shapes
    against the model and the free disk space for the merged copy."""
    from lorasum.adapters import check_adapter_matches_model
    from lorasum.errors import ConfigError
    from lorasum.models import estimate_model_bytes, load_model
    from lorasum.storage import check_free_space

    name = args.model or adapters[0].base_model
    if not name:
        raise ConfigError("--merge-into-base needs --model: the adapters do not record their base model")
    model, tokenizer, _ = load_model(name, device="cpu", dtype="float32")
    for adapter in adapters:
        check_adapter_matches_model(adapter, model)
    check_free_space(args.out, estimate_model_bytes(model), what="the merged model")
    return model, tokenizer, name


def _write_merged(args, result, adapters, base, merge_into_base, atomic_dir) -> None:
    model, tokenizer, name = base
    merge_into_base(model, result)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"{args.out}: {name} with the {args.method} of {_count(adapters)} merged into its weights")
