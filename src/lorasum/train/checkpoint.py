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
import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lorasum.errors import OutputExistsError, UserError
from lorasum.storage import _kind, atomic_dir, describe_json_value, atomic_write_json, sha256_file, sha256_json

__all__ = ["Checkpoint", "CheckpointError", "TrainingDiverged", "TrainingInterrupted", "TrainingStopped", "checkpoint_dir", "fingerprint",
           "save_checkpoint", "load_checkpoint", "restore_checkpoint", "check_checkpoint", "prepare_checkpoint",
           "remove_checkpoint"]

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


def _checkpoint_files() -> dict[str, tuple[str, ...]]:
    """Format → the tensor files of a checkpoint of that format (besides ``state.json``): this module's
    and :mod:`lorasum.train.parallel_checkpoint`'s (whose checkpoints go through :func:`prepare_checkpoint` too)."""
    from lorasum.train.parallel_checkpoint import _FILES as GROUP_FILES
    from lorasum.train.parallel_checkpoint import FORMAT as GROUP_FORMAT

    return {FORMAT: _TENSOR_FILES, GROUP_FORMAT: GROUP_FILES}


def _not_a_checkpoint(path: Path) -> str | None:
    """None where ``path`` is recognisably a checkpoint folder that lorasum wrote, else what is there, in words.

    A checkpoint is a real folder (not a symlink) holding ``state.json`` and nothing but the files a
    checkpoint has (all regular files), with either the tensor files of a checkpoint format or a
    ``state.json`` that names the format: so a damaged checkpoint (a garbled ``state.json``, a lost tensor
    file) is still one, while a file, a link, a pipe, or a folder holding anything else is not.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        return f"something that cannot be examined ({e.strerror or e})"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a file"
    if not stat.S_ISDIR(mode):
        return _kind(mode)
    formats = _checkpoint_files()
    known = {_STATE, *(f for files in formats.values() for f in files)}
    try:
        names = sorted(os.listdir(path))
        irregular = [n for n in names if n in known and not stat.S_ISREG(os.lstat(path / n).st_mode)]
    except OSError as e:
        return f"a folder that cannot be read ({e.strerror or e})"
    other = [n for n in names if n not in known]
    if other:
        shown = ", ".join(n if n.isprintable() else repr(n) for n in other[:3]) + (", ..." if len(other) > 3 else "")
        return f"a folder holding files that a checkpoint does not have: {shown}"
    if irregular:
        return f"a folder whose {irregular[0]} is not a regular file"
    if _STATE not in names:
        return f"a folder without a checkpoint's {_STATE}" if names else "an empty folder"
    if any(set(files) <= set(names) for files in formats.values()):
        return None
    try:
        with open(path / _STATE, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as e:
        return f"a folder whose {_STATE} cannot be read ({e.strerror or e})"
    if any(json.dumps(f).encode() in head for f in formats):
        return None
    return f"a folder whose {_STATE} is not a lorasum checkpoint's"


def check_checkpoint(path: Path, *, resume: bool, overwrite: bool) -> bool:
    """What :func:`prepare_checkpoint` will do, checked without changing anything (for an early error).

    Returns:
        True when ``path`` holds a checkpoint: to continue from (``resume``) or to discard (``overwrite``).

    Raises:
        OutputExistsError: something that is not recognisably a lorasum checkpoint is at ``path`` (whatever
            the flags: only lorasum's own checkpoints are ever deleted), or a checkpoint is there and neither
            ``resume`` nor ``overwrite`` is set.
    """
    if not os.path.lexists(path):
        return False
    what = _not_a_checkpoint(path)
    if what is not None:
        raise OutputExistsError(f"{path}: exists and is not a lorasum training checkpoint ({what}); move it away "
                                "(lorasum deletes only checkpoints it wrote, also with --overwrite)")
    if not (resume or overwrite):
        raise OutputExistsError(f"{path}: a checkpoint of an interrupted training run exists; pass --resume to "
                                "continue it or --overwrite to start over")
    return True


def prepare_checkpoint(path: Path, *, resume: bool, overwrite: bool) -> bool:
    """Decide what to do with an existing checkpoint before training starts: continue it (``resume``),
    delete it (``overwrite``), or refuse.

    Returns:
        True when ``path`` holds a checkpoint to continue from (``resume`` set).

    Raises:
        OutputExistsError: see :func:`check_checkpoint`; nothing is deleted then.
    """
    if not check_checkpoint(path, resume=resume, overwrite=overwrite):
        return False
    if resume:
        return True
    shutil.rmtree(path)
    return False


def remove_checkpoint(path: Path) -> bool:
    """Delete ``path`` if it is recognisably a lorasum checkpoint (see :func:`check_checkpoint`); anything else
    there is left alone.

    Returns:
        True when a checkpoint was deleted.
    """
    if not os.path.lexists(path) or _not_a_checkpoint(path) is not None:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


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


# -- checking what state.json holds ------------------------------------------------------------------------


class _Malformed(ValueError):
    """A field of a checkpoint's state.json is not what a training run writes (``where``: its JSON path)."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")




def _need(ok: bool, v: Any, where: str, expected: str) -> None:
    if not ok:
        raise _Malformed(where, f"expected {expected}, got {describe_json_value(v)}")


def _field(d: dict, key: str, where: str = "") -> Any:
    if key not in d:
        raise _Malformed(f"{where}.{key}" if where else key, "missing")
    return d[key]


def _is_int(v: Any, low: int | None = None, high: int | None = None) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)
            and (high is None or v <= high))


def _is_number(v: Any, low: float | None = None) -> bool:
    """A real, finite number (not a bool), at least ``low``; False for an int too large for a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and (low is None or v >= low)
    except OverflowError:
        return False


def _check_number_list(v: Any, where: str, low: float | None = None) -> list:
    _need(isinstance(v, list), v, where, "a list")
    for i, x in enumerate(v):
        _need(_is_number(x, low), x, f"{where}[{i}]", "a finite number" + (f" >= {low}" if low is not None else ""))
    return v


def _check_sha256(state: dict, files: tuple[str, ...]) -> dict:
    sha = _field(state, "sha256")
    _need(isinstance(sha, dict), sha, "sha256", "an object")
    for f in files:
        _need(isinstance(sha.get(f), str), sha.get(f), f'sha256["{f}"]', "a string")
    return sha


def _check_rng_extra(extra: Any, where: str = "rng") -> None:
    """The Python and NumPy generator states of :func:`_rng_state`, as JSON gives them back."""
    _need(isinstance(extra, dict), extra, where, "an object")
    python = _field(extra, "python", where)
    _need(isinstance(python, list) and len(python) == 3, python, f"{where}.python",
          "a list [version, state, gauss] (Python's random.getstate())")
    version, words, gauss = python
    _need(_is_int(version), version, f"{where}.python[0]", "an integer")
    _need(isinstance(words, list) and len(words) == 625, words, f"{where}.python[1]", "a list of 625 integers")
    for i, w in enumerate(words):
        _need(_is_int(w, 0, 624 if i == 624 else 2**32 - 1), w, f"{where}.python[1][{i}]",
              "an integer from 0 to 624" if i == 624 else "an integer from 0 to 2**32 - 1")
    _need(gauss is None or _is_number(gauss), gauss, f"{where}.python[2]", "null or a finite number")
    numpy = _field(extra, "numpy", where)
    _need(isinstance(numpy, list) and len(numpy) == 4, numpy, f"{where}.numpy",
          "a list [kind, pos, has_gauss, cached_gaussian] (NumPy's random.get_state())")
    kind, pos, has_gauss, cached = numpy
    _need(kind == "MT19937", kind, f"{where}.numpy[0]", 'the string "MT19937"')
    _need(_is_int(pos, 0, 624), pos, f"{where}.numpy[1]", "an integer from 0 to 624")
    _need(_is_int(has_gauss, 0, 1), has_gauss, f"{where}.numpy[2]", "0 or 1")
    _need(_is_number(cached), cached, f"{where}.numpy[3]", "a finite number")


def _rng_tensors_problem(rng: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with the generator tensors of :func:`_rng_state` (None: nothing)."""
    cpu, keys = rng.get("torch_cpu"), rng.get("numpy_keys")
    if cpu is None or cpu.dtype != torch.uint8 or cpu.shape != torch.get_rng_state().shape:
        return "torch_cpu is missing or not a torch CPU generator state"
    if any(v.dtype != torch.uint8 or v.dim() != 1 for k, v in rng.items() if k.startswith("torch_cuda_")):
        return "a torch_cuda_<i> tensor is not a CUDA generator state"
    if keys is None or keys.dtype != torch.int64 or tuple(keys.shape) != (624,) \
            or bool((keys < 0).any()) or bool((keys >= 2**32).any()):
        return "numpy_keys is missing or not 624 integers from 0 to 2**32 - 1"
    return None


def _check_state(state: dict) -> None:
    """The fields of a training checkpoint's state.json beyond format, fingerprint and sha256: counters
    (an int step >= 1, one finite loss per step, non-negative tokens and seconds), optimiser, scheduler
    and generator states, each of the kind that :func:`save_checkpoint` writes."""
    step, losses = _field(state, "step"), _field(state, "losses")
    _need(_is_int(step, 1), step, "step", "an integer >= 1")
    _check_number_list(losses, "losses")
    if len(losses) != step:
        raise _Malformed("losses", f"{len(losses)} values for {step} steps (one loss per step)")
    tokens, seconds = _field(state, "tokens"), _field(state, "seconds")
    _need(_is_int(tokens, 0), tokens, "tokens", "an integer >= 0")
    _need(_is_number(seconds, 0), seconds, "seconds", "a finite number >= 0")
    opt = _field(state, "optimizer")
    _need(isinstance(opt, dict), opt, "optimizer", "an object")
    groups = _field(opt, "param_groups", "optimizer")
    _need(isinstance(groups, list) and len(groups) > 0, groups, "optimizer.param_groups", "a non-empty list")
    for i, g in enumerate(groups):
        where = f"optimizer.param_groups[{i}]"
        _need(isinstance(g, dict), g, where, "an object")
        params = _field(g, "params", where)
        _need(isinstance(params, list) and all(_is_int(x, 0) for x in params), params, f"{where}.params",
              "a list of parameter indices (integers >= 0)")
        _need(_is_number(_field(g, "lr", where), 0), g["lr"], f"{where}.lr", "a finite number >= 0")
        if "initial_lr" in g:
            _need(_is_number(g["initial_lr"], 0), g["initial_lr"], f"{where}.initial_lr", "a finite number >= 0")
    scalars = _field(opt, "scalars", "optimizer")
    _need(isinstance(scalars, dict), scalars, "optimizer.scalars", "an object")
    for name, value in scalars.items():
        idx, _, key = name.partition(".")
        if not (idx.isascii() and idx.isdigit() and key):
            raise _Malformed(f'optimizer.scalars["{name[:40]}"]', "the key is not <parameter index>.<name>")
        _need(value is None or isinstance(value, (bool, str)) or _is_number(value), value,
              f'optimizer.scalars["{name[:40]}"]', "a number, string, boolean or null")
    sched = _field(state, "scheduler")
    _need(isinstance(sched, dict), sched, "scheduler", "an object")
    lambdas = _field(sched, "lr_lambdas", "scheduler")
    _need(isinstance(lambdas, list) and all(f is None or f == {} for f in lambdas), lambdas, "scheduler.lr_lambdas",
          "a list of null or {} (one per parameter group)")
    _check_number_list(_field(sched, "base_lrs", "scheduler"), "scheduler.base_lrs", 0)
    _need(_is_int(_field(sched, "last_epoch", "scheduler")), sched["last_epoch"], "scheduler.last_epoch",
          "an integer")
    _check_rng_extra(_field(state, "rng"))


def load_checkpoint(path: Path, expected_fingerprint: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors and JSON only).

    Every field of ``state.json`` is checked to be of the kind a training run writes (see
    :func:`_check_state`), so that a damaged or edited one is refused here, not found out half-way
    through restoring it.

    Raises:
        CheckpointError: a file is missing or unreadable, the format is unknown, a field of ``state.json``
            is missing or of the wrong type or range (the message gives its JSON path), or the
            checkpoint belongs to a run with other settings, data, model or seed.
    """
    try:
        state = json.loads((path / _STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path / _STATE}: not a lorasum training checkpoint ({FORMAT})")
        if state.get("fingerprint") != expected_fingerprint:
            raise CheckpointError(
                f"{path}: checkpoint of a run with other settings, data, model or seed; delete it or pass "
                "--overwrite to start over")
        sha = _check_sha256(state, _TENSOR_FILES)
        for f in _TENSOR_FILES:
            if sha256_file(path / f) != sha[f]:
                raise CheckpointError(f"{path / f}: damaged (its SHA-256 differs from the one in {_STATE}); "
                                      "delete the checkpoint or pass --overwrite to start over")
        _check_state(state)
        trainable = load_file(str(path / "trainable.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
        problem = _rng_tensors_problem(rng)
        if problem:
            raise _Malformed("rng.safetensors", problem)
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
    except _Malformed as e:
        where = "" if str(e).startswith("rng.safetensors") else f"{_STATE}: "
        raise CheckpointError(f"{path}: unreadable training checkpoint ({where}{e}); delete it or pass --overwrite "
                              "to start over") from None
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({_STATE} is nested too deeply); delete it "
                              "or pass --overwrite to start over") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); delete it or pass --overwrite to "
                              "start over") from None


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
    saved_groups = ckpt.optimizer["param_groups"]
    if [g.get("params") for g in saved_groups] != [g["params"] for g in optimizer.state_dict()["param_groups"]] \
            or [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in saved_groups] \
            != run_groups:  # checked before anything is loaded: the optimiser takes whatever it is given
        raise CheckpointError(f"{where}: optimizer settings or parameter groups differ from this run's; delete the "
                              "checkpoint or pass --overwrite to start over")
    run_schedule = scheduler.state_dict()
    unlike = next((k for k, v in ckpt.scheduler.items() if k in run_schedule and not _same_kind(v, run_schedule[k])),
                  None)
    if unlike is not None:
        raise CheckpointError(f"{where}: learning-rate scheduler state {unlike!r} is not of the kind this run's is; "
                              "delete the checkpoint or pass --overwrite to start over")
    # keys this torch's scheduler does not have would become attributes of it: left out
    schedule = {k: v for k, v in ckpt.scheduler.items() if k in run_schedule}
    try:
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(schedule)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, IndexError) as e:
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
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{where}: random generator states cannot be restored ({type(e).__name__}: {e})") \
            from None


def _same_kind(saved: Any, run: Any) -> bool:
    """``saved`` (from JSON) has the structure and types of ``run`` (a fresh state's value): the same keys,
    list lengths and scalar types (an int may stand for a float; numbers finite)."""
    if isinstance(run, bool) or run is None or isinstance(run, str):
        return type(saved) is type(run)
    if isinstance(run, int):
        return _is_int(saved)
    if isinstance(run, float):
        return _is_number(saved)
    if isinstance(run, (list, tuple)):
        return isinstance(saved, list) and len(saved) == len(run) and all(map(_same_kind, saved, run))
    if isinstance(run, dict):
        return isinstance(saved, dict) and saved.keys() == run.keys() and all(
            _same_kind(saved[k], run[k]) for k in run)
    return False


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

