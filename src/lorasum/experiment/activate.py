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
tensors), so a forward pass is the base model's, without a LoRA branch per module. It replaced a PEFT
hotswap slot (one PEFT adapter whose LoRA weights were swapped, ranks padded): 1.49× the evaluation
throughput on an H100 (BENCHMARKS.md), and no constraint that all folders target the same modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["peft_adapter", "dense_delta", "merged_slot"]


@contextlib.contextmanager
def peft_adapter(model: torch.nn.Module, path: str | Path) -> Iterator[torch.nn.Module]:
    """Yield ``model`` with the PEFT LoRA adapter in ``path`` loaded (eval mode); unload it on exit.

    ``PeftModel.unload`` puts the original modules back into ``model`` (in place), so the caller
    keeps using the same ``model`` object afterwards.

    Raises:
        AdapterError: the folder cannot be read, or PEFT loads other factors than its files hold
            (:func:`lorasum.adapters.peft_from_pretrained`).
    """
    from lorasum.adapters import load_adapter, peft_from_pretrained

    peft_model = peft_from_pretrained(model, load_adapter(path))
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

    Against :func:`peft_adapter`, the forward pass has no LoRA branch (two skinny
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
