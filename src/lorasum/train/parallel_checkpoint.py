"""Checkpoints of parallel training (:mod:`lorasum.train.parallel`): a group of adapters continues to the same adapters.

A checkpoint is a folder written atomically after optimiser step ``s`` of the group:

* ``group.safetensors``: per targeted module, the stacked LoRA factors (``<module>.lora_A``
  (d_in, k, r), ``<module>.lora_B`` (d_out, k, r)) and their AdamW moments (``.exp_avg``,
  ``.exp_avg_sq``);
* ``rng.safetensors``: the torch CPU and CUDA generator states (dropout draws);
* ``state.json``: the format, the group's fingerprint, ``s``, AdamW's step count, each adapter's
  per-step losses, tokens so far, seconds so far, the Python and NumPy generator states and the
  SHA-256 of the two tensor files.

The data position needs no state (each adapter's order is a function of its seed; adapter j
has taken ``min(s, steps_j)`` steps). An adapter whose steps ended before ``s`` was saved then and
stays as it is. Only safetensors and JSON are read back: no pickle. Everything is checked before
the model is touched (:func:`load_group_checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lorasum.storage import atomic_dir, atomic_write_json, sha256_file
from lorasum.train.checkpoint import (
    CheckpointError,
    _check_rng_extra,
    _check_sha256,
    _is_int,
    _is_number,
    _Malformed,
    _rng_state,
    _rng_tensors_problem,
    _set_rng_state,
)

__all__ = ["GroupCheckpoint", "save_group_checkpoint", "load_group_checkpoint", "restore_group_checkpoint"]

FORMAT = "lorasum-parallel-checkpoint/1"
_STATE = "state.json"
_FILES = ("group.safetensors", "rng.safetensors")
_SUFFIXES = ("lora_A", "lora_B", "lora_A.exp_avg", "lora_B.exp_avg", "lora_A.exp_avg_sq", "lora_B.exp_avg_sq")


@dataclass
class GroupCheckpoint:
    """A loaded, checked group checkpoint (tensors on the CPU)."""

    path: Path
    step: int
    losses: list[list[float]]
    tokens: list[int]
    seconds: float
    tensors: dict[str, torch.Tensor]
    rng: dict


def _named_tensors(layers: dict, optimizer) -> dict[str, torch.Tensor]:
    """The group's state by name, in the order of ``optimizer.params`` (A, B of each module)."""
    out = {}
    for i, name in enumerate(layers):
        for part, p_idx in (("lora_A", 2 * i), ("lora_B", 2 * i + 1)):
            out[f"{name}.{part}"] = optimizer.params[p_idx]
            out[f"{name}.{part}.exp_avg"] = optimizer.exp_avg[p_idx]
            out[f"{name}.{part}.exp_avg_sq"] = optimizer.exp_avg_sq[p_idx]
    return out


def save_group_checkpoint(path: Path, *, fingerprint: str, step: int, layers: dict, optimizer,
                          losses: list[list[float]], tokens: list[int], seconds: float) -> Path:
    """Write the checkpoint of a group after step ``step`` (atomically, replacing an older one).

    Args:
        layers: module path → parallel LoRA layer (in the optimiser's order).
        optimizer: the group's AdamW (``lorasum.train.parallel._AdamW``).
        losses: per adapter, the per-step losses so far.
        tokens: per adapter, the tokens processed so far.
    """
    rng, rng_extra = _rng_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in _named_tensors(layers, optimizer).items()}
    state = {"format": FORMAT, "fingerprint": fingerprint, "step": step, "adam_steps": optimizer.steps,
             "losses": losses, "tokens": tokens, "seconds": seconds, "rng": rng_extra}
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "group.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        state["sha256"] = {f: sha256_file(tmp / f) for f in _FILES}
        atomic_write_json(tmp / _STATE, state)
    return path


def load_group_checkpoint(path: Path, fingerprint: str, *, layers: dict, optimizer,
                          totals: list[int]) -> GroupCheckpoint:
    """Read and check a group checkpoint against the freshly built group.

    Checks: the format, the fingerprint (same model, data, settings, seeds, adapters in the same
    order), the SHA-256 of the tensor files, a step inside the run (1 ≤ s < the longest adapter's
    steps) with AdamW's step count equal to it, one finite loss per step taken for each adapter,
    non-negative tokens and seconds, and every tensor present, shaped like the group's and finite
    (second moments non-negative).

    Raises:
        CheckpointError: any check fails or a file is unreadable.
    """
    try:
        state = json.loads((path / _STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path / _STATE}: not a lorasum parallel-training checkpoint ({FORMAT})")
        if state.get("fingerprint") != fingerprint:
            raise CheckpointError(f"{path}: checkpoint of another group of adapters (other settings, data, model or "
                                  "seeds)")
        sha = _check_sha256(state, _FILES)
        for f in _FILES:
            if sha256_file(path / f) != sha[f]:
                raise CheckpointError(f"{path / f}: damaged (its SHA-256 differs from the one in {_STATE})")
        step, losses, tokens, seconds = state["step"], state["losses"], state["tokens"], state["seconds"]
        k = len(totals)
        ok = (_is_int(step) and 1 <= step < max(totals)
              and _is_int(state["adam_steps"]) and state["adam_steps"] == step
              and isinstance(losses, list) and len(losses) == k
              and all(isinstance(ls, list) and len(ls) == min(step, n) for ls, n in zip(losses, totals))
              and all(_is_number(x) for ls in losses for x in ls)
              and isinstance(tokens, list) and len(tokens) == k and all(_is_int(t, 0) for t in tokens)
              and _is_number(seconds, 0))
        if not ok:
            raise CheckpointError(f"{path / _STATE}: step, losses, tokens or seconds are not those of this group's run")
        _check_rng_extra(state["rng"])
        tensors = load_file(str(path / "group.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
        problem = _rng_tensors_problem(rng)
        if problem:
            raise _Malformed("rng.safetensors", problem)
    except CheckpointError:
        raise
    except _Malformed as e:
        where = "" if str(e).startswith("rng.safetensors") else f"{_STATE}: "
        raise CheckpointError(f"{path}: unreadable parallel-training checkpoint ({where}{e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable parallel-training checkpoint ({_STATE} is nested too deeply)") \
            from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable parallel-training checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    expected = _named_tensors(layers, optimizer)
    if set(tensors) != set(expected):
        raise CheckpointError(f"{path}: its tensors do not match this group's LoRA modules")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or not bool(torch.isfinite(got).all()) or (
                name.endswith("exp_avg_sq") and bool((got < 0).any())):
            raise CheckpointError(f"{path}: {name} has shape {tuple(got.shape)} or values that this group cannot "
                                  f"have (expected finite, {tuple(want.shape)})")
    return GroupCheckpoint(path=path, step=step, losses=[[float(x) for x in ls] for ls in losses], tokens=tokens,
                           seconds=float(seconds), tensors=tensors, rng={"tensors": rng, "extra": state["rng"]})


def restore_group_checkpoint(ckpt: GroupCheckpoint, layers: dict, optimizer) -> None:
    """Put a checked checkpoint's factors, moments and generator states in place.

    Raises:
        CheckpointError: the generator states cannot be restored.
    """
    with torch.no_grad():
        for name, t in _named_tensors(layers, optimizer).items():
            t.copy_(ckpt.tensors[name].to(t.dtype))
    optimizer.steps = ckpt.step
    try:
        _set_rng_state(ckpt.rng["tensors"], ckpt.rng["extra"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{ckpt.path}: random generator states cannot be restored ({type(e).__name__}: {e})") \
            from None
