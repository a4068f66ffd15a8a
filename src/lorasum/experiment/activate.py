"""Put an adapter onto the base model for an evaluation, and take it off exactly afterwards.

Two ways, one per kind of composition result:

* a LoRA folder (trained adapters, sums, hybrids, low-rank methods such as ``svd``) is
  loaded as a PEFT adapter and unloaded again (:func:`peft_adapter`);
* a dense ΔW (:class:`~lorasum.compose.DenseDelta` from ``ties``, ``dare_*``,
  ``magnitude_prune``) is added to the base weights with
  :func:`lorasum.compose.merge_into_base`; the touched weights are copied first and copied
  back afterwards, so the base model is restored bit for bit (:func:`dense_delta`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["peft_adapter", "dense_delta"]


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
