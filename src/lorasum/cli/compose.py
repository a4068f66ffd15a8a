"""``lorasum compose``: add adapters' ΔW exactly, as a PEFT adapter or a merged model."""

from __future__ import annotations

import argparse


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(sub, common) -> None:
    p = sub.add_parser("compose", parents=[common], help="compose adapters without training (exact ΔW sum)",
                       description="Write Σ wᵢ ΔWᵢ (ΔWᵢ = scalingᵢ·Bᵢ·Aᵢ) of the given PEFT LoRA adapters as one PEFT "
                       "adapter whose rank is the sum of theirs, exact to float rounding; or, with "
                       "--merge-into-base, a full model with the sum added to its weights.")
    p.add_argument("adapters", nargs="+", help="PEFT LoRA adapter folders")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--method", default="sum", help="composition method: sum (default), mean")
    p.add_argument("--weights", type=_floats, help="one weight per adapter (default 1 each)")
    p.add_argument("--merge-into-base", action="store_true", help="write a merged full model instead of an adapter")
    p.add_argument("--model", help="base model for --merge-into-base (default: the adapters' base model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorasum.adapters import load_adapter, save_adapter
    from lorasum.compose import compose, merge_into_base
    from lorasum.errors import ConfigError
    from lorasum.storage import atomic_dir, check_output

    check_output(args.out, args.overwrite)
    if args.weights is not None and len(args.weights) != len(args.adapters):
        raise ConfigError(f"--weights has {len(args.weights)} values for {len(args.adapters)} adapters")
    adapters = [load_adapter(a) for a in args.adapters]
    params = {"weights": args.weights} if args.weights is not None else {}
    result = compose(adapters, method=args.method, **params)
    if not args.merge_into_base:
        save_adapter(result, args.out, overwrite=args.overwrite)
        ranks = sorted({f.rank for f in result.factors.values()})
        print(f"{args.out}: {args.method} of {len(adapters)} adapters, {len(result.factors)} modules, "
              f"rank {'/'.join(map(str, ranks))}")
        return 0
    from lorasum.models import load_model

    name = args.model or result.base_model
    if not name:
        raise ConfigError("--merge-into-base needs --model: the adapters do not record their base model")
    model, tokenizer, _ = load_model(name, device="cpu", dtype="float32")
    merge_into_base(model, result)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"{args.out}: {name} with the {args.method} of {len(adapters)} adapters merged into its weights")
    return 0
