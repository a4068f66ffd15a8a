"""Dense ΔW results of the sparsifying merge methods, and their safetensors file.

TIES, DARE and magnitude pruning zero individual entries of ΔW, so their result is no
longer low rank; it is kept as one dense (d_out, d_in) tensor per module, in
``nn.Linear`` orientation like :meth:`lorasum.adapters.LoraFactor.delta`.
:func:`lorasum.compose.merge_into_base` adds it to a base model (transposed for GPT-2's
Conv1D).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasum.adapters import Adapter
from lorasum.errors import AdapterError
from lorasum.storage import atomic_write_bytes, check_output

__all__ = ["DenseDelta", "save_dense_delta", "load_dense_delta", "task_vectors", "dense_result",
           "warn_trimmed_to_zero"]

log = logging.getLogger("lorasum")

_FORMAT = "lorasum.dense_delta.v1"


@dataclass
class DenseDelta:
    """A dense weight update per module.

    Attributes:
        deltas: module path → ΔW, (d_out, d_in) float32 tensor in nn.Linear orientation.
        base_model: the base model's name or path (None if unknown).
        fan_in_fan_out: the source adapters' flag (True for GPT-2 Conv1D modules); kept as
            metadata, merging decides the orientation by the module type.
        meta: free-form JSON-ready description (method, parameters).
    """

    deltas: dict[str, torch.Tensor]
    base_model: str | None = None
    fan_in_fan_out: bool = False
    meta: dict | None = None

    @property
    def modules(self) -> list[str]:
        """Sorted module paths."""
        return sorted(self.deltas)


def task_vectors(adapters: list[Adapter], weights: list[float]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (module, stack) per module of the union, sorted by module path, where
    ``stack[i] = wᵢ · ΔWᵢ`` is (N, d_out, d_in) float64 and is 0 for adapters lacking the module.

    The caller must have checked compatibility (:func:`lorasum.compose.check_compatible`).
    """
    for module in sorted({m for a in adapters for m in a.factors}):
        shape = next(a.factors[module].shape for a in adapters if module in a.factors)
        stack = torch.zeros((len(adapters), *shape), dtype=torch.float64)
        for i, (w, a) in enumerate(zip(weights, adapters)):
            f = a.factors.get(module)
            if f is not None:
                stack[i] = (w * f.scaling) * (f.B.double() @ f.A.double())
        yield module, stack


def dense_result(adapters: list[Adapter], deltas: dict[str, torch.Tensor], meta: dict) -> DenseDelta:
    """Wrap per-module float64 results as a float32 :class:`DenseDelta` carrying the sources' metadata."""
    bases = [a.base_model for a in adapters if a.base_model is not None]
    return DenseDelta(deltas={m: d.float().contiguous() for m, d in deltas.items()},
                      base_model=bases[0] if bases else None,
                      fan_in_fan_out=adapters[0].fan_in_fan_out, meta=meta)


def warn_trimmed_to_zero(method: str, density: float, sizes: dict[str, int]) -> list[str]:
    """Log one warning when ``density`` keeps no entry of some modules (⌊density · n⌋ = 0 for a
    module of n entries, :func:`lorasum.compose.masks.keep_count`): their merged ΔW is 0. A
    legitimate result, so not an error, but rarely what was meant.

    Args:
        method: the method's name, for the message.
        density: the fraction kept.
        sizes: module path → number of entries n = d_out · d_in.

    Returns:
        The modules trimmed to zero, sorted.
    """
    from lorasum.compose.masks import keep_count

    empty = sorted(m for m, n in sizes.items() if keep_count(n, density) == 0)
    if empty:
        which = (f"any of the {len(sizes)} modules" if len(empty) == len(sizes)
                 else f"{len(empty)} of {len(sizes)} modules")
        log.warning("warning: %s: density %g keeps no entry in %s (%s%s: ⌊density·n⌋ = 0 for n up to %d "
                    "entries), so their merged ΔW is 0; a density of at least %.3g keeps one entry in each",
                    method, density, which, ", ".join(empty[:3]), ", …" if len(empty) > 3 else "",
                    max(sizes[m] for m in empty), 1.0 / min(sizes[m] for m in empty))
    return empty


def save_dense_delta(dd: DenseDelta, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``dd`` as one safetensors file, atomically.

    Tensor keys are the module paths; the header metadata holds ``format``
    (``lorasum.dense_delta.v1``), ``base_model``, ``fan_in_fan_out``, ``orientation``
    ("nn.Linear (d_out, d_in)") and ``meta`` (JSON).

    Raises:
        AdapterError: no modules, or a tensor is not 2-D or holds NaN/Inf.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from safetensors.torch import save

    if not dd.deltas:
        raise AdapterError(f"{path}: refusing to save a dense delta with no modules")
    for m, d in dd.deltas.items():
        if d.dim() != 2 or not torch.isfinite(d).all():
            raise AdapterError(f"{path}: module {m} must be a finite 2-D ΔW, got shape {tuple(d.shape)}")
    check_output(path, overwrite)
    metadata = {"format": _FORMAT, "base_model": dd.base_model or "", "fan_in_fan_out": str(dd.fan_in_fan_out),
                "orientation": "nn.Linear (d_out, d_in)", "meta": json.dumps(dd.meta or {}, sort_keys=True)}
    tensors = {m: d.detach().float().cpu().contiguous() for m, d in sorted(dd.deltas.items())}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def _dense_header(fh, path: Path) -> None:
    """Refuse non-2-D or non-float tensors from the header, before any tensor data is read."""
    for key in fh.keys():
        sl = fh.get_slice(key)
        shape, dtype = sl.get_shape(), sl.get_dtype()
        if len(shape) != 2 or dtype not in ("F16", "BF16", "F32", "F64"):
            raise AdapterError(f"{path}: tensor {key} must be a 2-D float ΔW, got shape {tuple(shape)} {dtype}")


def _dense_meta(metadata: dict, path: Path) -> dict:
    """The ``meta`` JSON of the header: a JSON object, else AdapterError."""
    if metadata.get("fan_in_fan_out", "False") not in ("True", "False"):
        raise AdapterError(f"{path}: fan_in_fan_out must be 'True' or 'False', got {metadata['fan_in_fan_out']!r}")
    try:
        meta = json.loads(metadata.get("meta") or "{}")
    except (json.JSONDecodeError, RecursionError) as exc:
        raise AdapterError(f"{path}: header field meta is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise AdapterError(f"{path}: header field meta must be a JSON object")
    return meta


def load_dense_delta(path: str | Path) -> DenseDelta:
    """Read a file written by :func:`save_dense_delta`.

    The header is checked before any tensor is read (format tag, 2-D float tensors,
    ``fan_in_fan_out``, ``meta`` JSON); the values are then checked to be finite.

    Raises:
        AdapterError: the file is missing, a folder, unreadable, truncated or corrupt, not a
            lorasum dense delta, holds no modules, a tensor is not a 2-D float ΔW, or a value
            is NaN/Inf.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        what = "expected a file, found a folder" if path.is_dir() else "dense delta file not found"
        raise AdapterError(f"{path}: {what}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise AdapterError(f"{path}: not a lorasum dense delta (format {metadata.get('format')!r})")
            _dense_header(fh, path)
            deltas = {k: fh.get_tensor(k).float() for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: cannot read safetensors ({str(exc).splitlines()[0]})") from exc
    if not deltas:
        raise AdapterError(f"{path}: holds no modules")
    for m, d in deltas.items():
        if not torch.isfinite(d).all():
            raise AdapterError(f"{path}: module {m} holds NaN or Inf values")
    return DenseDelta(deltas=deltas, base_model=metadata.get("base_model") or None,
                      fan_in_fan_out=metadata.get("fan_in_fan_out") == "True", meta=_dense_meta(metadata, path))
