"""Train one LoRA adapter with an explicit loop (no HF Trainer).

Recipe (LoRA: Hu et al. 2021; hyper-parameters of arXiv 2508.11985 by default):

1. seed Python, NumPy and torch; tokenise the records (answer-only labels);
2. wrap the base model with PEFT LoRA on the target modules (A random, B = 0, so ΔW = 0);
3. for each optimiser step, take ``grad_accum`` shuffled micro-batches and minimise the
   token-weighted mean answer-token NLL (:func:`lorasum.evaluate.answer_token_nll`; every
   token with ``loss_on="all"``) with AdamW over the LoRA A and B only (fused on CUDA),
   linear warm-up then linear decay, gradient clipping. The examples of a micro-batch are
   packed into rows of ``pack_length`` tokens (:mod:`lorasum.train.packing`: no attention or
   loss across examples, so the loss is that of the padded batch) when the model keeps packed
   examples apart, else right-padded; bfloat16 autocast on CUDA, float32 on the CPU; SDPA
   attention (as loaded by :func:`lorasum.models.load_model`); optionally ``torch.compile``
   of the decoder layers;
4. optionally score a validation set;
5. save the adapter (PEFT format + ``lorasum.json``) atomically;
6. remove the LoRA layers, so the caller's model is the untouched base model again.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
import math
import re
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.data.tokenize import IGNORE_INDEX, Encoded, collate, encode_records
from lorasum.errors import ConfigError, DataError
from lorasum.evaluate.nll import answer_token_nll, perplexity
from lorasum.train.checkpoint import (
    Checkpoint,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingStopped,
    checkpoint_dir,
    fingerprint,
    load_checkpoint,
    prepare_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from lorasum.train.packing import pack, packing_is_exact
from lorasum.models import ModelInfo, check_context, compiled_layers, weights_digest
from lorasum.storage import atomic_dir, atomic_write_json, check_output
from lorasum.train.varlen import attention_dropout

__all__ = ["TrainResult", "train_adapter", "ADAPTER_META_FILE", "TrainingInterrupted", "TrainingStopped"]

log = logging.getLogger("lorasum")

#: lorasum's own metadata file inside an adapter folder.
ADAPTER_META_FILE = "lorasum.json"
_LOG_TAIL = 0.1  # final_loss averages the last 10 % of the logged steps
#: validation batches: at most this many examples and padded tokens (length-sorted; speed only, the NLL sums
#: do not depend on the batch). The training batch (8 in the paper's setting) made validation launch-bound:
#: 12 s for 1,198 examples of SmolLM2 on an H200.
_VAL_BATCH, _VAL_MAX_TOKENS = 64, 16384


@dataclass
class TrainResult:
    """Outcome of :func:`train_adapter`.

    Attributes:
        out_dir: the adapter folder.
        steps: optimiser steps taken.
        tokens: input tokens of the examples processed (prompt + answer; no padding).
        seconds: wall-clock seconds of the optimisation loop.
        losses: mean answer-token NLL (nats) of each optimiser step.
        final_loss: mean of the last 10 % of ``losses`` (at least one step).
        val_loss: mean answer-token NLL on the validation records after training, or None.
        parallel_adapters: how many adapters were trained in the same passes (1: alone;
            :func:`lorasum.train.train_adapters`).
    """

    out_dir: Path
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(repr=False)
    final_loss: float
    val_loss: float | None
    parallel_adapters: int = 1


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peft_error_line(e: BaseException) -> str:
    """PEFT's error message on one line: a module's multi-line repr (``Target module GPT2Attention(\n ... \n) is
    not supported``) shortened to its type, whitespace collapsed, at most 300 characters."""
    text = re.sub(r"Target module (\w+)\(.*?\n\) is", r"Target module \1 is", str(e), flags=re.S)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:299] + "…"


def _total_steps(n_examples: int, train: TrainSpec) -> int:
    """Optimiser steps: ``max_steps`` if set, else ``ceil(epochs * steps per epoch)``."""
    if train.max_steps is not None:
        return train.max_steps
    micro_per_epoch = math.ceil(n_examples / train.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / train.grad_accum)
    return max(1, math.ceil(train.epochs * steps_per_epoch))


def _micro_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless index lists: each epoch a fresh permutation from ``generator``, cut into batches."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def _lora_config(lora: LoraSpec, model_info: ModelInfo) -> LoraConfig:
    targets = list(lora.target_modules or model_info.target_modules)
    if not targets:
        raise ConfigError(
            f"{model_info.name}: no default LoRA target modules for {model_info.arch}; set lora.target_modules"
        )
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=model_info.fan_in_fan_out,
        task_type="CAUSAL_LM",
    )


def _check_linear_targets(peft_model: PeftModel, config: LoraConfig) -> None:
    """Refuse LoRA layers whose base layer is not a linear projection (``nn.Linear`` or GPT-2's ``Conv1D``).

    Composition, geometry and evaluation take ΔW = scaling · B A of linear projections; an adapter of an
    embedding (PEFT's ``lora_embedding_A``/``B``) or a convolution would be trained and then refused by all of them.

    Raises:
        ConfigError: naming ``lora.target_modules`` and the first such modules with their type.
    """
    from peft.tuners.lora import LoraLayer
    from transformers.pytorch_utils import Conv1D

    others = [f"{name} ({type(m.get_base_layer()).__name__})" for name, m in peft_model.base_model.model.named_modules()
              if isinstance(m, LoraLayer) and not isinstance(m.get_base_layer(), (torch.nn.Linear, Conv1D))]
    if others:
        raise ConfigError(
            f"lora.target_modules {sorted(config.target_modules)}: lorasum trains LoRA on linear projections (Linear, "
            f"GPT-2's Conv1D) only, not {', '.join(others[:3])}{' …' if len(others) > 3 else ''}")


def _batches(
    encoded: list[Encoded], train: TrainSpec, seed: int, pad_id: int, packed: bool, skip: int = 0
) -> Iterator[list[tuple[dict[str, torch.Tensor], int]]]:
    """Endless optimiser steps: ``grad_accum`` micro-batches of (tensors, real tokens) each.

    The examples of a micro-batch are the same whether packed (:func:`lorasum.train.packing.pack`)
    or padded (:func:`lorasum.data.tokenize.collate`), so packing does not change the loss.
    ``skip``: micro-batches of the stream to pass over first (those of steps already taken).
    """
    stream = _micro_batches(len(encoded), train.batch_size, torch.Generator().manual_seed(seed))
    for _ in range(skip):
        next(stream)
    while True:
        group = []
        for _ in range(train.grad_accum):
            examples = [encoded[i] for i in next(stream)]
            batch = pack(examples, train.pack_length, pad_id) if packed else collate(examples, pad_id)
            group.append((batch, sum(len(e.input_ids) for e in examples)))
        yield group


@dataclass
class _Checkpointing:
    """Where and when :func:`_optimise` saves checkpoints, and the one to continue from."""

    path: Path
    every: int | None
    fingerprint: str
    resume_from: Checkpoint | None = None


class _StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: training stopped at once (``signum``: the signal, for the exit code)."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}; the last checkpoint saved "
                         "(if any) is kept")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, int]]:
    """Turn the first SIGINT / SIGTERM into a request to stop after the current step.

    Yields a dict that receives ``"signum"``; a second signal interrupts at once (the previous
    handler runs). Outside the main thread (where handlers cannot be set) nothing is changed.
    """
    import signal
    import threading

    request: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if "signum" in request:  # asked twice: stop now
            prev = previous[signum]
            if callable(prev):
                prev(signum, frame)
            raise _StoppedAtOnce(signum)
        request["signum"] = signum
        log.warning("%s received: stopping after this step and saving a checkpoint (again: stop at once)",
                    signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def _optimise(
    peft_model: PeftModel, encoded: list[Encoded], train: TrainSpec, seed: int, pad_id: int, progress: bool,
    packed: bool, ckpt: _Checkpointing | None = None, stop: dict | None = None,
) -> tuple[list[float], int, float]:
    """The training loop. Returns (per-step losses, input tokens processed, seconds).

    Nothing in a step waits for the GPU (labels are counted on the CPU, losses stay on the
    device until the end), so the CPU prepares and launches step k+1 while the GPU runs step k.
    With ``ckpt``, a checkpoint is saved every ``ckpt.every`` steps and when SIGINT / SIGTERM
    arrives (then :class:`TrainingInterrupted` is raised), and ``ckpt.resume_from`` is
    continued: its state is restored and its steps are skipped in the data stream.
    """
    named = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    params = list(named.values())
    device = params[0].device
    optimizer = torch.optim.AdamW(
        params, lr=train.learning_rate, weight_decay=train.weight_decay, fused=device.type == "cuda"
    )
    total = _total_steps(len(encoded), train)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(train.warmup_ratio * total), total)
    first, done_losses, tokens, before = 0, [], 0, 0.0
    if ckpt is not None and ckpt.resume_from is not None:
        saved = ckpt.resume_from
        restore_checkpoint(saved, named, optimizer, scheduler, total)
        first, done_losses, tokens, before = saved.step, saved.losses, saved.tokens, saved.seconds
        log.info("resuming from %s at step %d of %d", saved.path, first, total)
    steps = _batches(encoded, train, seed, pad_id, packed, skip=first * train.grad_accum)
    losses: list[torch.Tensor] = []
    peft_model.train()  # LoRA dropout and the base model's own dropout on, as in HF Trainer
    start = time.perf_counter()

    def elapsed() -> float:
        return before + time.perf_counter() - start

    def so_far() -> list[float]:
        values = done_losses + (torch.stack(losses).tolist() if losses else [])  # waits for the GPU
        bad = next((k for k, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise TrainingDiverged(f"training diverged: the loss is {values[bad]} at step {bad + 1} of {total} "
                                   f"(learning rate {train.learning_rate}); nothing was saved")
        return values

    def save(step_done: int) -> Path:
        assert ckpt is not None
        return save_checkpoint(ckpt.path, fingerprint=ckpt.fingerprint, step=step_done, losses=so_far(),
                               tokens=tokens, seconds=elapsed(), trainable=named, optimizer=optimizer,
                               scheduler=scheduler)

    bar = tqdm(range(first, total), desc="train", unit="step", disable=not progress, leave=False,
               initial=first, total=total)
    stop = {} if stop is None else stop  # receives "signum" from _stop_on_signals (set up by the caller)
    for step in bar:
        group = next(steps)
        # token-weighted mean over the whole accumulation window
        n_answer = max(1, sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b, _ in group))
        step_nll = torch.zeros((), device=device)
        for batch, n_real in group:
            nll, _ = answer_token_nll(peft_model, batch)
            (nll / n_answer).backward()
            step_nll += nll.detach()
            tokens += n_real
        if train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_nll / n_answer)
        # reading the loss waits for an accelerator (every 20 steps there); on the CPU it costs nothing
        if progress and (step % 20 == 0 or step == total - 1 or losses[-1].device.type == "cpu"):
            bar.set_postfix(loss=f"{float(losses[-1]):.3f} (step {step + 1})", tok_s=f"{tokens / elapsed():.0f}")
        if step + 1 < total and "signum" in stop:
            raise TrainingInterrupted(stop["signum"], step + 1, total, save(step + 1))
        if ckpt is not None and ckpt.every and (step + 1) % ckpt.every == 0 and step + 1 < total:
            save(step + 1)
    values = so_far()  # waits for the last step
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise TrainingDiverged(f"training diverged: LoRA weights became NaN or infinite (learning rate "
                               f"{train.learning_rate}); nothing was saved")
    return values, tokens, elapsed()


def _init_seed(seed: int, domains: list[str] | None) -> int:
    """The LoRA init seed of an adapter with ``lora.init_per_adapter``: 31 bits of
    SHA-256("<seed>:<sorted domains joined by +>")."""
    import hashlib

    if not domains:
        raise ConfigError("lora.init_per_adapter needs the adapter's domains (meta['domains'])")
    text = f"{seed}:{'+'.join(sorted(domains))}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") & 0x7FFFFFFF


def _examples_hash(encoded: list[Encoded], memo: dict[int, bytes] | None = None) -> str:
    """SHA-256 over the SHA-256 of each training example's token ids and labels, in order.

    ``memo`` (example ``id`` → its digest) lets tasks that share :class:`Encoded` objects hash each once;
    the caller keeps the examples alive while it is used."""
    import hashlib

    h = hashlib.sha256()
    for e in encoded:
        digest = memo.get(id(e)) if memo is not None else None
        if digest is None:
            one = hashlib.sha256(np.asarray(e.input_ids, dtype=np.int64).tobytes())
            one.update(b"|")
            one.update(np.asarray(e.labels, dtype=np.int64).tobytes())
            digest = one.digest()
            if memo is not None:
                memo[id(e)] = digest
        h.update(digest)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("lorasum", "torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _metadata(
    model_info: ModelInfo, config: LoraConfig, train: TrainSpec, seed: int, max_length: int,
    meta: dict | None, n_examples: int, n_truncated: int, losses: list[float], result: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": "lorasum-adapter/1",
        "base_model": {
            "name": model_info.name,
            "source": model_info.source,
            "arch": model_info.arch,
            "config_hash": model_info.config_hash,
        },
        "meta": meta or {},
        "lora": {
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules),
            "fan_in_fan_out": config.fan_in_fan_out,
        },
        "train": train.model_dump(),
        "seed": seed,
        "max_length": max_length,
        "n_examples": n_examples,
        "n_truncated": n_truncated,
        "losses": losses,
        **result,
        "versions": _versions(),
    }


def _fingerprint_train(train: TrainSpec) -> dict:
    """The training settings a checkpoint's fingerprint holds: not those of speed or memory only, and
    ``attention_dropout`` only when set, so that fingerprints made before the field existed stay valid."""
    exclude = {"checkpoint_every", "parallel_adapters", "parallel_max_tokens"}
    return train.model_dump(mode="json", exclude=exclude | ({"attention_dropout"} if train.attention_dropout is None
                                                            else set()))


@contextlib.contextmanager
def training_attention_dropout(model: torch.nn.Module, train: TrainSpec) -> Iterator[None]:
    """:func:`lorasum.train.varlen.attention_dropout` with ``train.attention_dropout``, for the duration.

    Raises:
        ConfigError: ``model`` has no attention dropout that can be set.
    """
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(attention_dropout(model, train.attention_dropout))
    except ValueError as e:
        raise ConfigError(f"train.attention_dropout: {e}") from None
    with stack:
        yield


def train_adapter(
    model: torch.nn.Module,
    tokenizer,
    records: list[Record],
    *,
    lora: LoraSpec,
    train: TrainSpec,
    seed: int,
    out_dir: str | Path,
    max_length: int,
    model_info: ModelInfo,
    meta: dict | None = None,
    validation: list[Record] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> TrainResult:
    """Train one LoRA adapter on ``records`` and save it to ``out_dir``.

    The folder holds PEFT's ``adapter_model.safetensors`` and ``adapter_config.json``
    (``base_model_name_or_path = model_info.name``) plus ``lorasum.json`` (base model
    identity, ``meta``, LoRA and training hyper-parameters, seed, losses, steps, tokens,
    seconds, package versions). The same seed gives the same adapter. On return (or on an
    error) the LoRA layers are removed and ``model`` is the unchanged base model, with its
    ``requires_grad`` flags and train/eval mode restored.

    Checkpoints (:mod:`lorasum.train.checkpoint`) go to ``<out_dir>.ckpt``: every
    ``train.checkpoint_every`` steps and when SIGINT or SIGTERM arrives (training then stops
    after the current step and :class:`TrainingInterrupted` is raised). With ``resume``, an
    existing checkpoint of the same run is continued, and the adapter equals that of an
    uninterrupted run (bit for bit on the CPU; tested to 1e-6). The checkpoint is removed
    once the adapter is saved.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False (checked before training);
            a checkpoint exists and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: ``resume`` and the checkpoint is unreadable or from another run.
        TrainingInterrupted: SIGINT / SIGTERM arrived before the last step (the checkpoint is saved).
        TrainingStopped: SIGINT / SIGTERM arrived during the last step, validation or saving: the adapter
            was finished and saved first.
        DataError: ``records`` is empty.
        ConfigError: no target modules, or target modules not found in the model.
    """
    out_dir = check_output(out_dir, overwrite)
    if not records:
        raise DataError(f"{out_dir}: no training records")
    ckpt_path = checkpoint_dir(out_dir)
    continuing = prepare_checkpoint(ckpt_path, resume=resume, overwrite=overwrite)
    _seed_everything(seed)
    config = _lora_config(lora, model_info)
    encoded = encode_records(tokenizer, records, max_length, loss_on=train.loss_on)
    check_context(model, max(len(e.input_ids) for e in encoded))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    run_id = fingerprint(model=[model_info.name, model_info.config_hash, weights_digest(model)], examples=_examples_hash(encoded),
                         lora=lora.model_dump(mode="json"), train=_fingerprint_train(train), seed=seed, max_length=max_length)
    ckpt = _Checkpointing(ckpt_path, train.checkpoint_every, run_id,
                          load_checkpoint(ckpt_path, run_id) if continuing else None)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    init_seed = _init_seed(seed, (meta or {}).get("domains")) if lora.init_per_adapter else None
    try:
        if init_seed is not None:
            torch.manual_seed(init_seed)  # LoRA A is drawn from the adapter's own seed ...
        peft_model = get_peft_model(model, config)
        if init_seed is not None:
            _seed_everything(seed)  # ... dropout and data order from the run seed, as without
    except ValueError as e:
        raise ConfigError(f"lora.target_modules {config.target_modules}: {peft_error_line(e)}") from None
    signals: dict[str, int] = {}
    stack_signals = contextlib.ExitStack()
    try:
        _check_linear_targets(peft_model, config)
        packed = train.packing and packing_is_exact(model)
        # a signal during the last step is kept until the adapter is saved, then stops the command
        signals = stack_signals.enter_context(_stop_on_signals())
        with training_attention_dropout(model, train), \
                compiled_layers(model, train.compile and next(model.parameters()).is_cuda,
                                training=True):
            try:
                losses, tokens, seconds = _optimise(peft_model, encoded, train, seed, pad_id, progress, packed, ckpt,
                                                    signals)
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{out_dir}: {e}") from None
        val_loss = None
        if validation:
            log.info("validation: scoring %d examples", len(validation))
            val_loss = perplexity(peft_model, tokenizer, validation, max_length=max_length, batch_size=_VAL_BATCH,
                                  max_tokens=_VAL_MAX_TOKENS, loss_on=train.loss_on, progress=progress).mean_nll
        n_tail = max(1, round(_LOG_TAIL * len(losses)))
        final_loss = sum(losses[-n_tail:]) / n_tail
        summary = {"steps": len(losses), "tokens": tokens, "seconds": seconds,
                   "final_loss": final_loss, "val_loss": val_loss, "packed": packed}
        info = _metadata(model_info, config, train, seed, max_length, meta, len(encoded),
                         sum(e.truncated for e in encoded), losses, summary)
        with atomic_dir(out_dir, overwrite) as tmp:
            peft_model.peft_config["default"].base_model_name_or_path = model_info.name
            peft_model.save_pretrained(tmp, save_embedding_layers=False)
            atomic_write_json(tmp / ADAPTER_META_FILE, info)
        shutil.rmtree(ckpt_path, ignore_errors=True)  # the adapter is safe: the checkpoint has served
    finally:
        stack_signals.close()  # the previous SIGINT / SIGTERM handlers back
        peft_model.unload()  # removes the LoRA layers from the caller's model
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))
        model.train(was_training)
    if "signum" in signals:  # asked to stop during the last step: the adapter is saved, the command stops
        raise TrainingStopped(signals["signum"], out_dir)
    return TrainResult(out_dir=out_dir, steps=len(losses), tokens=tokens, seconds=seconds,
                       losses=losses, final_loss=final_loss, val_loss=val_loss)
