"""Put an adapter onto the base model for an evaluation, and take it off exactly afterwards.

Two ways, one per kind of composition result:

* a LoRA folder (trained adapters, sums, hybrids, low-rank methods such as ``svd``) is
  loaded as a PEFT adapter and unloaded again (:func:`peft_adapter`);
* a dense ΔW (:class:`~lorasum.compose.DenseDelta` from ``ties``, ``dare_*``,
  ``magnitude_prune``) is added to the base weights with
  :func:`lorasum.compose.merge_into_base`; the touched weights are copied first and copied
  back afterwards, so the base model is restored bit for bit (:func:`dense_delta`).

For many LoRA folders in a row (``eval.compile``), :func:`merged_slot` compiles the decoder layers once
and adds each folder's ΔW to the base weights in turn (in place: the compiled code sees new values, not new
tensors), so a forward pass is the base model's, without a LoRA branch per module. :func:`hotswap_slot`
does the same with PEFT's hotswapping (one PEFT adapter whose LoRA weights are swapped), for callers that
want PEFT's own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["peft_adapter", "dense_delta", "merged_slot", "hotswap_slot", "hotswap_compatible"]

#: adapter_config.json fields that must agree for a folder to be swapped into the slot of another
#: (which modules carry LoRA and how; a folder that differs is evaluated the ordinary way).
#: lora_dropout may differ (trained adapters keep theirs, composed ones have 0): it does nothing in eval mode.
_SLOT_FIELDS = ("peft_type", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
                "fan_in_fan_out", "bias", "modules_to_save", "use_rslora", "use_dora", "alpha_pattern",
                "rank_pattern", "lora_bias", "trainable_token_indices")


@contextlib.contextmanager
def peft_adapter(model: torch.nn.Module, path: str | Path) -> Iterator[torch.nn.Module]:
    """Yield ``model`` with the PEFT LoRA adapter in ``path`` loaded (eval mode); unload it on exit.

    ``PeftModel.unload`` puts the original modules back into ``model`` (in place), so the caller
    keeps using the same ``model`` object afterwards.

    Raises:
        whatever ``PeftModel.from_pretrained`` raises for a bad folder.
    """
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(path))
    try:
        yield peft_model.eval()
    finally:
        restored = peft_model.unload()
        assert restored is model, "PEFT returned a different base model object"


@contextlib.contextmanager
def dense_delta(model: torch.nn.Module, delta) -> Iterator[torch.nn.Module]:
    """Yield ``model`` with ``delta``'s ΔW added to its weights; restore the exact weights on exit.

    Args:
        model: the plain base model (not a PeftModel).
        delta: a :class:`~lorasum.compose.DenseDelta` or an :class:`~lorasum.adapters.Adapter`
            (module path → ΔW in ``nn.Linear`` orientation; Conv1D handled by ``merge_into_base``).

    A copy of every touched weight is kept (memory: the size of those weights) and copied back
    in the ``finally`` block, also when evaluation fails.

    Raises:
        AdapterError: from :func:`lorasum.compose.merge_into_base` (unknown module, shape
            mismatch); the model is then untouched.
    """
    from lorasum.compose import merge_into_base

    modules = delta.deltas if hasattr(delta, "deltas") else delta.factors
    backup: dict[str, torch.Tensor] = {}
    for path in modules:
        with contextlib.suppress(AttributeError):  # merge_into_base reports unknown modules
            backup[path] = model.get_submodule(path).weight.detach().clone()
    merge_into_base(model, delta)
    try:
        yield model
    finally:
        with torch.no_grad():
            for path, weight in backup.items():
                model.get_submodule(path).weight.copy_(weight)


@contextlib.contextmanager
def merged_slot(model: torch.nn.Module, *, compile: bool = False) -> Iterator:
    """Yield ``merged(path)``, a context manager that yields ``model`` with the LoRA folder ``path``'s ΔW
    added to its weights (:func:`dense_delta`: ΔW = (lora_alpha / r)·B·A formed on the weights' device in
    float64, the touched weights restored bit for bit on exit). With ``compile``, the decoder layers are
    compiled once for the duration (:func:`lorasum.models.compiled_layers`) and serve every adapter
    without recompiling: merging changes the weights' values in place, not the tensors.

    Against :func:`peft_adapter` (and :func:`hotswap_slot`), the forward pass has no LoRA branch (two skinny
    matmuls, a scale and an add per module); the logits differ by the rounding of the merged weights (bf16
    under autocast: ``bf16(W + ΔW)`` instead of ``bf16(W)`` plus the branch). ``tests/experiment/
    test_activate.py`` checks the NLL against PEFT's forward.

    Raises:
        AdapterError: from :func:`lorasum.adapters.load_adapter` (a bad folder) or
            :func:`lorasum.compose.merge_into_base` (a module not in the model, a shape mismatch); the model
            is then untouched.
    """
    from lorasum.adapters import load_adapter
    from lorasum.models import compiled_layers

    def merged(path: str | Path):
        return dense_delta(model, load_adapter(path))

    with compiled_layers(model, compile):
        yield merged


def _slot_config(path: Path) -> dict:
    import json

    with open(Path(path) / "adapter_config.json", encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}/adapter_config.json: not a JSON object")
    return config


def _slot_entry(path: str | Path) -> tuple[tuple, int] | None:
    """(what must agree with the slot, largest rank of the weights) of a LoRA folder, or None where
    :func:`lorasum.adapters.load_adapter` refuses it (config and weights are checked against each
    other there: a config whose r is not the weights' rank would be swapped in with a wrong scaling)."""
    from lorasum.adapters import load_adapter
    from lorasum.errors import AdapterError

    try:
        adapter = load_adapter(path)
        config = _slot_config(path)
    except (AdapterError, OSError, ValueError):
        return None
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        return None
    norm = {k: config.get(k) for k in _SLOT_FIELDS}
    if isinstance(norm["target_modules"], list):
        norm["target_modules"] = sorted(norm["target_modules"])
    # every folder must carry LoRA on the same modules: one lacking some would run with zeros there
    sig = (*(repr(norm[k]) for k in _SLOT_FIELDS), tuple(sorted(adapter.factors)))
    return sig, max(f.A.shape[0] for f in adapter.factors.values())


def hotswap_compatible(paths: list[str | Path]) -> list[bool]:
    """Which LoRA folders can share the slot of the first usable one (:func:`hotswap_slot`): weights
    that :func:`lorasum.adapters.load_adapter` accepts (ranks as the config says), LoRA on the same
    modules, the same kind of LoRA (no DoRA or rsLoRA differences, no rank or alpha patterns, no extra
    modules); ranks and ``lora_alpha`` free. A folder that does not fit is evaluated the ordinary way,
    which reports what is wrong with it."""
    out, first = [], None
    for path in paths:
        entry = _slot_entry(path)
        if entry is not None and first is None:
            first = entry[0]
        out.append(entry is not None and entry[0] == first)
    return out


@contextlib.contextmanager
def hotswap_slot(model: torch.nn.Module, paths: list[str | Path], *, compile: bool = False
                 ) -> Iterator:
    """Yield ``swap(path) -> PeftModel``: ``model`` with one PEFT LoRA slot into which each folder of
    ``paths`` is swapped in turn (``peft.utils.hotswap``); with ``compile``, the decoder layers are
    compiled once (:func:`lorasum.models.compiled_layers`) and serve every adapter without
    recompiling. On exit the slot is unloaded and ``model`` is the plain base model again.

    The slot has the largest rank of ``paths``; a smaller adapter fills its first rows of LoRA A and
    columns of LoRA B and zeros the rest, so B·A, and with it ΔW = (lora_alpha / r)·B·A with the
    adapter's own r and lora_alpha, is exactly the adapter's (PEFT's own padding,
    ``prepare_model_for_compiled_hotswap``). The folders must be :func:`hotswap_compatible`.

    Args:
        model: the plain base model (not a PeftModel), on its device and dtype.
        paths: PEFT LoRA adapter folders, in the order they will be swapped in (the first is loaded).

    Raises:
        ValueError: ``paths`` is empty or the folders are not compatible.
        whatever ``PeftModel.from_pretrained`` or ``hotswap_adapter`` raise for a bad folder.
    """
    from peft import PeftModel
    from peft.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap

    from lorasum.models import compiled_layers

    if not paths:
        raise ValueError("hotswap_slot: no adapter folders")
    entries = [_slot_entry(p) for p in paths]
    for path, entry in zip(paths, entries):
        if entry is None or entry[0] != entries[0][0]:
            raise ValueError(f"{path}: cannot share a hotswap slot with {paths[0]} (unreadable, other target "
                             "modules or LoRA kind)")
    rank = max(entry[1] for entry in entries)
    device = next(model.parameters()).device
    peft_model = PeftModel.from_pretrained(model, str(paths[0]))
    current = [str(paths[0])]
    try:
        # scalings become tensors and every LoRA A / B is padded to `rank`: later swaps change values only
        prepare_model_for_compiled_hotswap(peft_model, target_rank=rank, config=peft_model.peft_config)
        peft_model.eval()

        def swap(path: str | Path):
            if str(path) != current[0]:
                # PEFT refuses to swap between configs of other lora_dropout; dropout is off in eval mode
                peft_model.peft_config["default"].lora_dropout = _slot_config(path).get("lora_dropout", 0.0)
                hotswap_adapter(peft_model, str(path), adapter_name="default", torch_device=str(device))
                current[0] = str(path)
            return peft_model

        with compiled_layers(model, compile):
            yield swap
    finally:
        restored = peft_model.unload()
        assert restored is model, "PEFT returned a different base model object"
