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
import math
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
from lorasum.storage import atomic_dir, atomic_write_json, sha256_file, sha256_json

__all__ = ["Checkpoint", "CheckpointError", "TrainingDiverged", "TrainingInterrupted", "TrainingStopped", "checkpoint_dir", "fingerprint",
           "save_checkpoint", "load_checkpoint", "restore_checkpoint", "prepare_checkpoint"]

FORMAT = "lorasum-train-checkpoint/1"
_STATE = "state.json"
_TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")


class CheckpointError(UserError):
    """A checkpoint folder is unreadable or belongs to another run."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite (usually a learning rate or lora_alpha far too high);
    nothing is saved."""


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


class TrainingStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during the last step of training: the adapter was finished, validated and
    saved (no checkpoint is needed), then the command stops rather than going on to other work.

    Attributes:
        signum: the signal number.
        out_dir: the saved adapter folder.
        complete: True (the adapter is complete; nothing is to be resumed).
    """

    complete = True
    checkpoint = None

    def __init__(self, signum: int, out_dir: Path):
        import signal

        self.signum, self.out_dir = signum, out_dir
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        super().__init__(f"training stopped by {name} during its last step; the adapter is complete and was saved "
                         f"in {out_dir}")


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
    if not path.exists() and not path.is_symlink():
        return False
    if resume:
        return True
    if not overwrite:
        raise OutputExistsError(f"{path}: a checkpoint of an interrupted training run exists; pass --resume to "
                                "continue it or --overwrite to start over")
    if path.is_symlink() or not path.is_dir():
        path.unlink()  # a link is removed, not what it points to
    else:
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
        state["sha256"] = {f: sha256_file(tmp / f) for f in _TENSOR_FILES}  # bit rot or a partial copy shows
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
        for f in _TENSOR_FILES:
            if sha256_file(path / f) != state["sha256"][f]:
                raise CheckpointError(f"{path / f}: damaged (its SHA-256 differs from the one in {_STATE}); "
                                      "delete the checkpoint or pass --overwrite to start over")
        _check_counters(path, state)
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
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); delete it or pass --overwrite to "
                              "start over") from None


def _check_counters(path: Path, state: dict) -> None:
    """The JSON counters must be what a run writes: an int step >= 1, one finite loss per step,
    non-negative tokens and seconds."""
    step, losses, tokens, seconds = state["step"], state["losses"], state["tokens"], state["seconds"]
    ok = (isinstance(step, int) and not isinstance(step, bool) and step >= 1 and isinstance(losses, list)
          and len(losses) == step and all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses)
          and isinstance(tokens, int) and tokens >= 0 and isinstance(seconds, (int, float))
          and math.isfinite(seconds) and seconds >= 0)
    if not ok:
        raise CheckpointError(f"{path / _STATE}: step, losses, tokens or seconds are not those of a training run; "
                              "delete the checkpoint or pass --overwrite to start over")


def restore_checkpoint(
    ckpt: Checkpoint, trainable: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler: Any,
    total_steps: int,
) -> None:
    """Put a checkpoint's parameters, optimiser, scheduler and generator states back in place.

    Everything is checked against the freshly built run before the model is touched: the step lies
    inside the run (``1 <= step < total_steps``), the tensors are finite and shaped like the LoRA
    parameters, the optimiser's hyper-parameters equal the run's, and the scheduler stands at
    ``step`` with the run's base learning rates.

    Raises:
        CheckpointError: any of these checks fails, or a state cannot be restored.
    """
    where = ckpt.path
    if not 1 <= ckpt.step < total_steps:
        raise CheckpointError(f"{where}: saved after step {ckpt.step}, outside this run of {total_steps} steps")
    if set(ckpt.trainable) != set(trainable):
        raise CheckpointError(f"{where}: its parameters do not match the model's LoRA parameters")
    for name, p in trainable.items():
        saved = ckpt.trainable[name]
        if saved.shape != p.shape or not bool(torch.isfinite(saved).all()):
            raise CheckpointError(f"{where}: {name} has shape {tuple(saved.shape)} or non-finite values "
                                  f"(expected finite, {tuple(p.shape)})")
    _check_optimizer_state(where, ckpt.optimizer, list(trainable.values()))
    run_groups, run_base_lrs = _hyper_parameters(optimizer), list(scheduler.base_lrs)
    try:
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: optimizer or scheduler state does not fit ({type(e).__name__}: {e})") from None
    expected_lr = [base * fn(ckpt.step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    if _hyper_parameters(optimizer) != run_groups or list(scheduler.base_lrs) != run_base_lrs \
            or scheduler.last_epoch != ckpt.step \
            or any(not math.isclose(g["lr"], lr, rel_tol=1e-9, abs_tol=1e-15)
                   for g, lr in zip(optimizer.param_groups, expected_lr, strict=True)):
        raise CheckpointError(f"{where}: optimizer or learning-rate schedule differ from this run's settings")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(ckpt.trainable[name].to(p.dtype))
    try:
        _set_rng_state(ckpt.rng["tensors"], ckpt.rng["extra"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"{where}: random generator states cannot be restored ({type(e).__name__}: {e})") \
            from None


def _hyper_parameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each param group's settings but the parameters and the scheduled learning rate, tuples as
    lists (as they come back from JSON)."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()
             if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]


def _check_optimizer_state(where: Path, saved: dict, params: list) -> None:
    """AdamW state: per parameter a scalar ``step`` and finite moments shaped like the parameter,
    ``exp_avg_sq`` non-negative."""
    state = saved.get("state")
    if not isinstance(state, dict) or set(state) != set(range(len(params))):
        raise CheckpointError(f"{where}: optimizer state does not cover the {len(params)} LoRA parameters")
    for idx, p in enumerate(params):
        st = state[idx]
        step = st.get("step")
        moments = [st.get("exp_avg"), st.get("exp_avg_sq")]
        if not isinstance(step, torch.Tensor) or step.numel() != 1 or not bool(torch.isfinite(step).all()) \
                or any(not isinstance(m, torch.Tensor) or m.shape != p.shape or not bool(torch.isfinite(m).all())
                       for m in moments) or bool((moments[1] < 0).any()):
            raise CheckpointError(f"{where}: optimizer state of parameter {idx} is damaged (step, moments' shape, "
                                  "finiteness or sign)")

