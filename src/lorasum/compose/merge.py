"""Merge a LoRA ΔW (or a dense ΔW) into a base model's weights in place."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from lorasum.adapters import Adapter
from lorasum.compose.dense import DenseDelta
from lorasum.errors import AdapterError

__all__ = ["merge_into_base"]

log = logging.getLogger("lorasum")


def _is_conv1d(module: torch.nn.Module) -> bool:
    """True for ``transformers.pytorch_utils.Conv1D`` (imported lazily; False without transformers)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


def _updates(delta: Adapter | DenseDelta) -> tuple[str, dict[str, tuple[tuple[int, int], Callable]]]:
    """(label, module → ((d_out, d_in), device -> float64 ΔW in nn.Linear orientation on that device)).

    ΔW = scaling · B · A is formed on the weight's device from the factors (r·(d_out + d_in) numbers moved,
    not d_out·d_in)."""
    if isinstance(delta, DenseDelta):
        return "dense delta", {m: (tuple(d.shape), lambda device, d=d: d.to(device).double())
                               for m, d in delta.deltas.items()}
    label = str(delta.path) if delta.path is not None else "adapter"
    return label, {m: (f.shape, lambda device, f=f: f.scaling * (f.B.to(device, torch.float64)
                                                                   @ f.A.to(device, torch.float64)))
                   for m, f in delta.factors.items()}


def merge_into_base(model: torch.nn.Module, adapter: Adapter | DenseDelta) -> torch.nn.Module:
    """Add each module's ΔW to the matching base weight, in place.

    ``adapter`` is a LoRA :class:`Adapter` (ΔW = scaling · B · A) or a
    :class:`~lorasum.compose.dense.DenseDelta` (ΔW given densely, (d_out, d_in)).
    ``model`` is the plain base model (not a PeftModel); module paths are those of
    ``model.named_modules()``. Orientation is decided by the module's type, not by the
    ``fan_in_fan_out`` flag: an ``nn.Linear`` weight (d_out, d_in) gets ΔW, a
    GPT-2 ``Conv1D`` weight (d_in, d_out) gets ΔWᵀ (Conv1D is detected with isinstance,
    importing transformers lazily). The sum is formed in float64 and cast to the weight's
    dtype. All modules are checked before any weight changes, so on error the model is
    untouched. A weight shared with another parameter (an LM head tied to the input embeddings,
    as in GPT-2 and SmolLM2) is untied first, with a warning: only the adapted module gets ΔW, as
    in the adapter's own forward pass, and ``model.config.tie_word_embeddings`` is set to False so
    that a saved copy keeps both weights.

    Returns:
        ``model`` (modified in place).

    Raises:
        AdapterError: a module path is not in the model, the module is neither nn.Linear
            nor Conv1D, or its weight shape does not match ΔW.
    """
    label, updates = _updates(adapter)
    plan: list[tuple[torch.Tensor, Callable, bool]] = []
    for path in sorted(updates):
        shape, make = updates[path]
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise AdapterError(f"{label}: module {path} is not in the base model") from None
        conv1d = _is_conv1d(module)
        if not (conv1d or isinstance(module, torch.nn.Linear)):
            raise AdapterError(f"{label}: module {path} is a {type(module).__name__}, "
                               "not nn.Linear or Conv1D; cannot merge")
        expected = (shape[1], shape[0]) if conv1d else tuple(shape)
        if tuple(module.weight.shape) != expected:
            raise AdapterError(f"{label}: module {path} has weight shape "
                               f"{tuple(module.weight.shape)} but ΔW needs {expected}")
        plan.append((module, make, conv1d))
    _untie([m for m, _, _ in plan], model, label)
    with torch.no_grad():
        for module, make, conv1d in plan:
            weight = module.weight
            delta = make(weight.device)
            if conv1d:
                delta = delta.T
            weight.copy_((weight.double() + delta).to(weight.dtype))
    return model


def _untie(modules: list[torch.nn.Module], model: torch.nn.Module, label: str) -> None:
    """Give each of ``modules`` a weight of its own where it shares one with another module of ``model``."""
    owners: dict[int, list[str]] = {}  # id of a weight -> the modules holding it
    names: dict[int, str] = {}  # id of a module -> its name
    for name, module in model.named_modules(remove_duplicate=False):
        names[id(module)] = name
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(name)
    for module in modules:
        sharing = [n for n in owners.get(id(module.weight), []) if n != names[id(module)]]
        if not sharing:
            continue
        module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=module.weight.requires_grad)
        config = getattr(model, "config", None)
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
        log.warning("%s: %s shares its weight with %s; untied, so that only %s gets the ΔW (the merged model keeps "
                    "both weights, tie_word_embeddings false)", label, names[id(module)], ", ".join(sharing),
                    names[id(module)])
