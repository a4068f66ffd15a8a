"""Training checkpoints: everything needed to continue a run to the same adapter.

A checkpoint is a folder written atomically (:func:`lorasum.storage.atomic_dir`) beside the
adapter folder, ``<out>.ckpt/``, after optimiser step ``k``:

* ``trainable.safetensors``: the LoRA A and B matrices (the trainable parameters), by name;
* ``optimizer.safetensors``: the AdamW state tensors (``step``, ``exp_avg``, ``exp_avg_sq``
  of each parameter, named ``state.<i>.<key>``);
* ``rng.safetensors``: the torch CPU and CUDA generator states (dropout draws);
* ``state.json``: the format, the run's fingerprint, the step ``k``, the per-step losses so
  far, tokens and seconds so far, the optimiser's hyper-parameter groups, the learning-rate
  scheduler's state and the Python and NumPy generator states.

The data position needs no state of its own: the order of examples is a pure function of
the seed (:func:`lorasum.train.loop._micro_batches`), and resuming skips the ``k × grad_accum``
micro-batches already taken. Only safetensors and JSON are read back: no pickle.

The fingerprint (:func:`fingerprint`) hashes everything that decides the adapter (base model,
records, LoRA and training settings but ``checkpoint_every``, seed, ``max_length``), so a
checkpoint is never continued with other settings or data.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lorasum.errors import OutputExistsError, UserError
from lorasum.storage import atomic_dir, atomic_write_json, sha256_json

__all__ = ["Checkpoint", "CheckpointError", "TrainingInterrupted", "checkpoint_dir", "fingerprint",
           "save_checkpoint", "load_checkpoint", "restore_checkpoint", "prepare_checkpoint"]

FORMAT = "lorasum-train-checkpoint/1"
_STATE = "state.json"


class CheckpointError(UserError):
    """A checkpoint folder is unreadable or belongs to another run."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint.

    Attributes:
        signum: the signal number (``signal.SIGINT`` = 2, ``signal.SIGTERM`` = 15).
        step: optimiser steps completed (and saved).
        total: optimiser steps of the whole run.
        checkpoint: the checkpoint folder.
    """

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path):
        import signal

        self.signum, self.step, self.total, self.checkpoint = signum, step, total, checkpoint
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        super().__init__(f"training stopped by {name} after step {step} of {total}; checkpoint saved in {checkpoint}")


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module docstring); tensors on the CPU."""

    path: Path
    step: int
    losses: list[float]
    tokens: int
    seconds: float
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def checkpoint_dir(out_dir: str | Path) -> Path:
    """The checkpoint folder of an adapter folder: ``<out_dir>.ckpt`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".ckpt")


def fingerprint(**parts: Any) -> str:
    """SHA-256 of the JSON of ``parts`` (everything that decides the trained adapter)."""
    return sha256_json({"format": FORMAT, **parts})


def prepare_checkpoint(path: Path, *, resume: bool, overwrite: bool) -> bool:
    """Decide what to do with an existing checkpoint before training starts.

    Returns:
        True when ``path`` holds a checkpoint to continue from (``resume`` set).

    Raises:
        OutputExistsError: a checkpoint exists and neither ``resume`` nor ``overwrite`` is set.
    """
    if not path.exists():
        return False
    if resume:
        return True
    if not overwrite:
        raise OutputExistsError(f"{path}: a checkpoint of an interrupted training run exists; pass --resume to "
                                "continue it or --overwrite to start over")
    shutil.rmtree(path)
    return False


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    extra = {"python": [version, list(state), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return tensors, extra


def _set_rng_state(tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    version, state, gauss = extra["python"]
    random.setstate((version, tuple(state), gauss))
    kind, pos, has_gauss, cached = extra["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    path: Path,
    *,
    fingerprint: str,
    step: int,
    losses: list[float],
    tokens: int,
    seconds: float,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> Path:
    """Write a checkpoint after optimiser step ``step`` (atomically, replacing an older one).

    Args:
        trainable: the trainable parameters by name (LoRA A and B).
        optimizer, scheduler: their ``state_dict()`` is saved (tensors to safetensors).
    """
    opt = optimizer.state_dict()
    opt_tensors, opt_scalars = {}, {}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                opt_tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars[f"{idx}.{key}"] = value
    rng, rng_extra = _rng_state()
    sched = scheduler.state_dict()  # LambdaLR: lr_lambdas holds None or the (empty) __dict__ of a partial
    sched["lr_lambdas"] = [f if isinstance(f, dict) and not f else None for f in sched.get("lr_lambdas", [])]
    state = {
        "format": FORMAT, "fingerprint": fingerprint, "step": step, "losses": losses, "tokens": tokens,
        "seconds": seconds, "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
        "scheduler": sched, "rng": rng_extra,
    }
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_file(opt_tensors or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / _STATE, state)
    return path


def load_checkpoint(path: Path, expected_fingerprint: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors and JSON only).

    Raises:
        CheckpointError: a file is missing or unreadable, the format is unknown, or the
            checkpoint belongs to a run with other settings, data, model or seed.
    """
    try:
        state = json.loads((path / _STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path / _STATE}: not a lorasum training checkpoint ({FORMAT})")
        if state["fingerprint"] != expected_fingerprint:
            raise CheckpointError(
                f"{path}: checkpoint of a run with other settings, data, model or seed; delete it or pass "
                "--overwrite to start over")
        trainable = load_file(str(path / "trainable.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
        opt_state: dict[int, dict[str, Any]] = {}
        for name, value in opt_tensors.items():
            if name == "_empty":
                continue
            _, idx, key = name.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = value
        for name, value in state["optimizer"]["scalars"].items():
            idx, key = name.split(".", 1)
            opt_state.setdefault(int(idx), {})[key] = value
        return Checkpoint(
            path=path, step=int(state["step"]), losses=[float(x) for x in state["losses"]],
            tokens=int(state["tokens"]), seconds=float(state["seconds"]), trainable=trainable,
            optimizer={"state": opt_state, "param_groups": state["optimizer"]["param_groups"]},
            scheduler=state["scheduler"], rng={"tensors": rng, "extra": state["rng"]})
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); delete it or pass --overwrite to "
                              "start over") from None


def restore_checkpoint(
    ckpt: Checkpoint, trainable: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """Put a checkpoint's parameters, optimiser, scheduler and generator states back in place.

    Raises:
        CheckpointError: the saved parameters do not match the model's trainable parameters.
    """
    if set(ckpt.trainable) != set(trainable):
        raise CheckpointError(f"{ckpt.path}: its parameters do not match the model's LoRA parameters")
    with torch.no_grad():
        for name, p in trainable.items():
            saved = ckpt.trainable[name]
            if saved.shape != p.shape:
                raise CheckpointError(f"{ckpt.path}: {name} has shape {tuple(saved.shape)}, expected {tuple(p.shape)}")
            p.copy_(saved.to(p.dtype))
    try:
        optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: optimizer state does not fit ({e})") from None
    scheduler.load_state_dict(ckpt.scheduler)
    _set_rng_state(ckpt.rng["tensors"], ckpt.rng["extra"])

