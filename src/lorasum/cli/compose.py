"""``lorasum compose``: combine adapters without training (exact sum by default)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from pathlib import Path

from lorasum.errors import ConfigError

from ._options import NO_UNDERSCORES, check_distinct_adapters, check_out_not_inputs, nonempty, seed

log = logging.getLogger("lorasum")

# flag → keyword parameter of the composition methods (lorasum.compose.METHODS[...].params)
_FLAGS = {"--weights": "weights", "--rank": "rank", "--density": "density", "--drop-prob": "drop_prob",
          "--scale": "scale", "--seed": "seed"}
COMPOSED_FORMAT = "lorasum-composed/1"  # the ``format`` of lorasum.json in folders written by compose


def add_parser(sub, common) -> None:
    from lorasum.compose import METHODS

    methods = ", ".join(f"{n}{'' if m.low_rank else ' (dense)'}" for n, m in METHODS.items())
    p = sub.add_parser("compose", parents=[common], help="compose adapters without training (exact ΔW sum)",
                       description="Combine PEFT LoRA adapters. The default method, sum, writes Σ wᵢ ΔWᵢ "
                       "(ΔWᵢ = scalingᵢ·Bᵢ·Aᵢ) as one PEFT adapter whose rank is the sum of theirs, exact to float "
                       "rounding. Low-rank results are PEFT adapters; dense ones (ties, dare_*, magnitude_prune) "
                       "are written as dense_delta.safetensors. --merge-into-base writes a full model instead. "
                       f"Methods: {methods}.")
    p.add_argument("adapters", nargs="+", type=nonempty, help="PEFT LoRA adapter folders")
    p.add_argument("--out", required=True, type=nonempty, help="folder to create")
    p.add_argument("--method", default="sum", choices=sorted(METHODS), metavar="METHOD",
                   help="composition method (default sum)")
    # numbers are parsed in run(), so that a bad value is one line naming the flag (exit 2)
    p.add_argument("--weights", help="one weight wᵢ per adapter, comma-separated finite numbers (default 1 each; "
                   "write --weights=-1,1 when the first is negative)")
    p.add_argument("--rank", help="svd: target rank k per module (a positive integer); a module whose summed rank "
                   "Σ rᵢ is lower keeps that (the exact sum), with a warning")
    p.add_argument("--density", help="ties, magnitude_prune: fraction of entries kept (0, 1]; default 0.2")
    p.add_argument("--drop-prob", help="dare_linear, dare_ties: drop probability p in [0, 1); default 0.9")
    p.add_argument("--scale", help="task_arithmetic: scale λ, a finite number; default 1.0")
    p.add_argument("--seed", type=seed, help="dare_*: seed of the random drop mask (0 to 2**63 - 1); default 0")
    p.add_argument("--merge-into-base", action="store_true", help="write a merged full model instead")
    p.add_argument("--model", type=nonempty, help="base model for --merge-into-base, and only with it (default: the "
                   "base model recorded in the adapters' lorasum.json, else their base_model_name_or_path)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def _count(adapters: list) -> str:
    return f"{len(adapters)} adapter{'s' if len(adapters) != 1 else ''}"


def _number(flag: str, text: str) -> float:
    """``text`` as a finite float, else a ConfigError naming ``flag`` (``1_0`` too, which float() reads as 10)."""
    if "_" in text:
        raise ConfigError(f"{flag}: {text!r} is not a number ({NO_UNDERSCORES})")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{flag}: {text!r} is not a finite number")
    return value


def _weights(text: str) -> list[float]:
    """``--weights``: comma-separated finite numbers, none of them empty."""
    items = text.split(",")
    for i, item in enumerate(items, 1):
        if not item.strip():
            raise ConfigError(f"--weights {text!r}: item {i} of {len(items)} is empty; give one number per "
                              "adapter, e.g. --weights 1,0.5")
    return [_number("--weights", item.strip()) for item in items]


def _params(args: argparse.Namespace) -> dict:
    """The method's keyword parameters from the flags given, each parsed and checked.

    Raises:
        ConfigError: a flag that ``--method`` does not take; a value that is not a number, not
            finite or out of range; ``--weights`` with an empty item or a count other than the
            number of adapters. The message names the flag.
    """
    from lorasum.compose import METHODS
    from lorasum.compose.masks import check_fraction

    method = METHODS[args.method]
    given = {flag: getattr(args, key) for flag, key in _FLAGS.items() if getattr(args, key) is not None}
    takes = [flag for flag, key in _FLAGS.items() if key in method.params]
    for flag in given:
        if _FLAGS[flag] not in method.params:
            raise ConfigError(f"{flag} does not apply to --method {args.method} (it takes "
                              f"{', '.join(takes) if takes else 'no parameters'})")
    params: dict = {}
    if "--weights" in given:
        params["weights"] = _weights(given["--weights"])
        if len(params["weights"]) != len(args.adapters):
            raise ConfigError(f"--weights has {len(params['weights'])} values for {len(args.adapters)} adapters")
    if "--rank" in given:
        if "_" in given["--rank"]:
            raise ConfigError(f"--rank: {given['--rank']!r} is not an integer ({NO_UNDERSCORES})")
        try:
            params["rank"] = int(given["--rank"])
        except ValueError:
            raise ConfigError(f"--rank: {given['--rank']!r} is not an integer") from None
        if params["rank"] < 1:
            raise ConfigError(f"--rank must be a positive integer, got {params['rank']}")
    if "--density" in given:
        params["density"] = check_fraction("--density", _number("--density", given["--density"]))
    if "--drop-prob" in given:
        params["drop_prob"] = check_fraction("--drop-prob", _number("--drop-prob", given["--drop-prob"]),
                                             allow_zero=True, allow_one=False)
    if "--scale" in given:
        params["scale"] = _number("--scale", given["--scale"])
    if "--seed" in given:
        params["seed"] = given["--seed"]
    if args.method == "svd" and "rank" not in params:
        raise ConfigError("--method svd needs --rank K (the target rank per module)")
    return params


_F32_MAX = 3.4028234663852886e38  # the largest float32: composed factors and ΔW are float32


def check_weighted_range(args: argparse.Namespace, adapters: list, params: dict) -> None:
    """Refuse ``--weights`` / ``--scale`` that make the composition overflow float32, before any work:
    each weighted factor wᵢ·scaling·Bᵢ and (a bound of) each module's weighted ΔW sum Σᵢ |wᵢ|·scaling·
    max|Bᵢ|·max|Aᵢ|·rᵢ must stay within float32's range (3.4e38). Otherwise the result would hold Inf or
    NaN, refused only when it is written, blaming the output.

    Raises:
        ConfigError: naming the flag, its value, the module and the size reached.
    """
    if "scale" in params:
        flag, text, weights = "--scale", args.scale, [params["scale"]] * len(adapters)
    elif "weights" in params:
        flag, text, weights = "--weights", args.weights, params["weights"]
    else:
        return
    bounds: dict[str, float] = {}
    for w, adapter in zip(weights, adapters, strict=True):
        for module, f in adapter.factors.items():
            if f.A.numel() == 0 or f.B.numel() == 0:
                continue
            b = abs(w) * abs(f.scaling) * float(f.B.detach().double().abs().max())
            if not b <= _F32_MAX:
                raise ConfigError(f"{flag} {text}: too large for {adapter.path or 'an adapter'}: its weighted "
                                  f"factor B of module {module} reaches {b:.3g}, beyond float32's {_F32_MAX:.3g}; "
                                  "use smaller values")
            bounds[module] = bounds.get(module, 0.0) + b * float(f.A.detach().double().abs().max()) * f.rank
    for module, bound in sorted(bounds.items()):
        if not bound <= _F32_MAX:
            raise ConfigError(f"{flag} {text}: too large: the weighted ΔW of module {module} can reach {bound:.3g}, "
                              f"beyond float32's {_F32_MAX:.3g}; use smaller values")


@contextlib.contextmanager
def deferred_warnings():
    """Hold back the warnings logged on the ``lorasum`` logger inside the block; when the block
    ends normally, show each distinct one once; when it raises, drop them, so that a user error
    is the one line the CLI promises (a caveat about a model that is refused anyway is noise).

    The base-model checks run before the slow model load and again inside the composition; this
    also keeps their warnings from showing twice.
    """
    held: dict[str, logging.LogRecord] = {}

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            held.setdefault(record.getMessage(), record)
            return False
        return True

    log.addFilter(hold)
    try:
        yield
    finally:
        log.removeFilter(hold)
    for record in held.values():  # only reached when the block did not raise
        log.handle(record)


def _meta(args: argparse.Namespace, adapters: list, params: dict) -> dict:
    """The ``lorasum.json`` of a composed folder (its ``base_model`` record is added by
    :func:`lorasum.adapters.save_adapter` from the result, the first source's record)."""
    sources = []
    for path, a in zip(args.adapters, adapters, strict=True):
        rec = a.base_record.to_dict() if a.base_record is not None else None
        sources.append({"path": os.path.abspath(path), "base_model": rec, "base_model_name_or_path": a.base_model})
    return {"format": COMPOSED_FORMAT, "composed": {"method": args.method, "params": params, "sources": sources}}


def run(args: argparse.Namespace) -> int:
    from lorasum.adapters import META_NAME, load_adapter, save_adapter
    from lorasum.compose import (METHODS, check_compatible, compose, compose_svd_report, merge_into_base,
                                 save_dense_delta)
    from lorasum.storage import atomic_dir, atomic_write_json, check_not_inputs, check_output, write_manifest

    if args.model is not None and not args.merge_into_base:
        raise ConfigError("--model applies only with --merge-into-base (it names the base model to merge into); "
                          "add --merge-into-base or drop --model")
    params = _params(args)  # a flag that does not apply is the error, not an existing --out
    # allowed (a sum with shared directions is a fair input, e.g. for svd), but rarely meant
    check_distinct_adapters(args.adapters, ": its ΔW is counted each time (to scale one adapter, give it once "
                            "with --weights)", refuse=False)
    check_output(args.out, args.overwrite)  # before the adapters are read (large ones take a while)
    check_not_inputs(args.out, args.adapters)
    adapters = [load_adapter(a) for a in args.adapters]
    check_weighted_range(args, adapters, params)  # before the model load and the math, naming the flag
    with deferred_warnings():
        check_compatible(adapters)  # base models and shapes, before the slow model load
        base = _load_base(args, adapters) if args.merge_into_base else None  # checked before any math
        report = None
        if args.method == "svd" and not args.merge_into_base:
            result, report = compose_svd_report(adapters, **params)
        else:
            result = compose(adapters, method=args.method, **params)
    out = Path(args.out)
    meta = _meta(args, adapters, params)
    if args.merge_into_base:
        _write_merged(args, result, adapters, base, merge_into_base, atomic_dir)
    elif METHODS[args.method].low_rank:
        extra = {"svd_report.json": {m: r.to_dict() for m, r in report.items()}} if report is not None else None
        save_adapter(result, out, overwrite=args.overwrite, base_model=adapters[0].base_model, extra_json=extra,
                     meta=meta)
        ranks = sorted({f.rank for f in result.factors.values()})
        print(f"{out}: {args.method} of {_count(adapters)}, {len(result.factors)} modules, "
              f"rank {'/'.join(map(str, ranks))}")
    else:
        records = [a.base_record for a in adapters if a.base_record is not None]
        dense_meta = ({"base_model": records[0].to_dict()} if records else {}) | meta
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            save_dense_delta(result, tmp / "dense_delta.safetensors")
            atomic_write_json(tmp / META_NAME, dense_meta)
        print(f"{out}: {args.method} of {_count(adapters)} as a dense ΔW over {len(result.deltas)} modules "
              f"(dense_delta.safetensors: not a PEFT adapter, so lorasum eval cannot load it; to evaluate, "
              f"compose with --merge-into-base and run lorasum eval --model on that folder)")
    write_manifest(out, config={"command": "compose", "method": args.method, "params": params,
                                "merge_into_base": args.merge_into_base, "model": args.model},
                   inputs={f"adapter{i}": Path(a) for i, a in enumerate(args.adapters)}, outputs=[out])
    return 0


def _looks_local(ref: str) -> bool:
    """Whether a recorded model source names a local path (absolute, ``~``, ``.``-relative or a
    ``.gguf`` file) rather than a hub id."""
    return os.path.isabs(ref) or ref.startswith(("~", ".")) or ref.endswith(".gguf")


def recorded_base_model(adapters: list) -> tuple[str | None, str | None]:
    """The base model the adapters record, as (model to load, warning or None): the ``source``
    recorded in the first adapter's ``lorasum.json`` that has one (what the model resolved to when it
    was trained: a folder, ``.gguf`` file or hub id); else, or when that recorded path is not on this
    machine (then with a warning that says so), the first ``base_model_name_or_path``; (None, None)
    when neither is recorded. Used by ``compose --merge-into-base`` and ``eval --adapter`` without
    ``--model``.

    Raises:
        ConfigError: the recorded path is not on this machine and no base_model_name_or_path is
            recorded to fall back to.
    """
    typed = next((a.base_model for a in adapters if a.base_model), None)
    for a in adapters:
        rec = a.base_record
        if rec is None or not rec.source:
            continue
        if not _looks_local(rec.source) or os.path.exists(os.path.expanduser(rec.source)):
            return rec.source, None
        if typed:
            return typed, (f"warning: {a.path} records base model {rec.source}, which is not on this machine; "
                           f"loading {typed} (base_model_name_or_path) instead; pass --model to choose")
        raise ConfigError(f"{a.path}: the base model recorded in its lorasum.json ({rec.source}) is not on this "
                          "machine; pass --model with the base model")
    return typed, None


def _base_name(args: argparse.Namespace, adapters: list) -> str:
    """The base model to load for --merge-into-base: ``--model``, else :func:`recorded_base_model`
    (its warning is logged).

    Raises:
        ConfigError: no model is given or recorded; the recorded one is missing (see
            :func:`recorded_base_model`).
    """
    if args.model:
        return args.model
    name, note = recorded_base_model(adapters)
    if note:
        log.warning("%s", note)
    if name:
        return name
    raise ConfigError("--merge-into-base needs --model: the adapters do not record their base model")


def _load_base(args, adapters):
    """(model, tokenizer, info) for --merge-into-base, after checking that every adapter belongs to
    that model (:func:`lorasum.adapters.check_adapter_base`: a different config hash or architecture
    is an error, another source with the same config a warning), its shapes, and the free disk space
    for the merged copy."""
    from lorasum.adapters import check_adapter_base, check_adapter_matches_model
    from lorasum.models import estimate_model_bytes, load_model
    from lorasum.storage import check_free_space

    name = _base_name(args, adapters)
    check_out_not_inputs(args.out, name)  # --overwrite would replace the model the merge reads
    model, tokenizer, info = load_model(name, device="cpu", dtype="float32")
    check_out_not_inputs(args.out, info.source)  # an alias's file, or a folder reached by another spelling
    for adapter in adapters:
        note = check_adapter_base(adapter, info)
        if note:
            log.warning("warning: %s", note)
        check_adapter_matches_model(adapter, model)
    check_free_space(args.out, estimate_model_bytes(model), what="the merged model")
    return model, tokenizer, info


def _write_merged(args, result, adapters, base, merge_into_base, atomic_dir) -> None:
    model, tokenizer, info = base
    merge_into_base(model, result)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"{args.out}: {info.source} with the {args.method} of {_count(adapters)} merged into its weights")

