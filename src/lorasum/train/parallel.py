"""Train several LoRA adapters in one pass over a shared frozen base model.

The adapters of an experiment (one per domain, per merged data set and per seed) all sit on the
same frozen base model, and a LoRA step on a 135M-parameter model with batches of 8 examples is
bound by the host: about 5,000 kernel launches for 44 ms of GPU work in a 200 ms step
(BENCHMARKS.md). Here k adapters train together: each optimiser step packs the next
micro-batch of *every* adapter into the same rows, runs the decoder once, and routes every
token through its own adapter's LoRA factors. The kernel count of a step is that of one
adapter; the GPU gets k times the work.

Routing (exact, no gather): each targeted module holds the k adapters' factors and computes, for
input x (tokens × d_in),

    ΔW x = scaling · B_cat · (M ⊙ (A_cat x)),   A_cat = [A_1; …; A_k] (k·r × d_in),
                                                B_cat = [B_1 … B_k]   (d_out × k·r),

where the mask M (tokens × k·r) is 1 on the r rows of the token's own adapter and 0 elsewhere
(0 everywhere on padding). For a token of adapter j this is scaling · B_j A_j x, LoRA's update
(Hu et al. 2021, eq. 3), and no gradient reaches another adapter's A or B. Packed examples do
not attend to each other (:mod:`lorasum.train.packing`), so an adapter's loss and gradients
are those of training it alone on the same micro-batches.

Each adapter keeps what :func:`lorasum.train.train_adapter` gives it: the same LoRA
initialisation (drawn by PEFT from the adapter's seed), the same data order (its own seed's
permutations), its own AdamW state, learning-rate schedule (warm-up and decay over its own
number of steps) and gradient-norm clip, and its own token-weighted loss. An adapter that has
taken all its steps is saved at once, in PEFT's format, and leaves the batch. With
``lora_dropout`` (and the base model's dropout) the dropout masks are other draws than in
sequential training: same distribution, different numbers, and they depend on which adapters
share the passes (each adapter's ``lorasum.json`` lists them under ``trained_with``): the same
group gives the same adapters, also across a stop and resume, while an adapter retrained in another
group is another draw. Without
dropout the adapters equal those of sequential training up to float rounding
(``tests/train/test_train_parallel.py``).

Isolation: tokens are routed with a select, not a product, so a NaN or inf in one adapter's
factors does not reach another adapter's tokens in the forward pass (on CUDA, with
variable-length attention, rows mix adapters; with the masked attention of packed rows, each row
holds one adapter's examples, since a masked position still multiplies its value by 0). The
gradients of a pass are shared, so when one adapter diverges the error names it and no adapter
of the group that is not yet saved is saved.

Checkpoints (:mod:`lorasum.train.parallel_checkpoint`): the group's stacked factors, AdamW
moments, generator states, losses and tokens, every ``train.checkpoint_every`` steps and on SIGINT /
SIGTERM (the step is finished, the checkpoint saved, :class:`ParallelInterrupted` raised);
``resume`` continues it to the adapters of an uninterrupted run (tested bit for bit on the CPU,
with dropout). Not supported here (use :func:`lorasum.train.train_adapter`): LoRA on embeddings
or on the LM head, and models that do not keep packed examples apart
(:class:`ParallelUnsupported`, raised before any training).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D
from tqdm.auto import tqdm

from lorasum.adapters import LoraFactor, _PREFIX, _SUFFIX_A, _SUFFIX_B
from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.data.tokenize import IGNORE_INDEX, encode_record_lists
from lorasum.errors import ConfigError, DataError
from lorasum.evaluate.nll import _to, perplexity, token_nll
from lorasum.models import ModelInfo, check_context
from lorasum.storage import atomic_dir, atomic_write_json, check_output
from lorasum.train.checkpoint import TrainingDiverged, fingerprint, prepare_checkpoint
from lorasum.train.parallel_checkpoint import load_group_checkpoint, restore_group_checkpoint, save_group_checkpoint
from lorasum.models import compiled_layers, weights_digest
from lorasum.train.loop import (ADAPTER_META_FILE, _LOG_TAIL, _VAL_BATCH, _VAL_MAX_TOKENS, TrainResult,
                                _examples_hash, _fingerprint_train, _init_seed, peft_error_line, training_attention_dropout, _lora_config, _metadata, _micro_batches, _seed_everything, _total_steps)
from lorasum.train.packing import pack, packing_is_exact
from lorasum.train.varlen import (attention_implementation, has_attention_dropout, varlen_attention, varlen_kwargs,
                                  varlen_supported)

__all__ = ["AdapterTask", "train_adapters", "linear_schedule", "ParallelUnsupported", "ParallelInterrupted"]

log = logging.getLogger("lorasum")
_CHECK_EVERY = 20  # steps between checks of the losses for NaN / inf (a check waits for the GPU)


class ParallelUnsupported(ConfigError):
    """The model or the LoRA settings do not allow training adapters together (raised before any training)."""


class ParallelInterrupted(KeyboardInterrupt):
    """Parallel training stopped on SIGINT or SIGTERM after a step.

    Attributes:
        signum: the signal number.
        step: optimiser steps completed.
        total: steps of the longest adapter.
        saved: adapter folders saved before the signal.
        checkpoint: the group's checkpoint folder, or None when training ran without one.
    """

    def __init__(self, signum: int, step: int, total: int, saved: list[Path], checkpoint: Path | None):
        import signal

        self.signum, self.step, self.total, self.saved, self.checkpoint = signum, step, total, saved, checkpoint
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        where = (f"checkpoint saved in {checkpoint}" if checkpoint else "every adapter is saved" if step == total
                 else "no checkpoint, the unfinished adapters are lost")
        super().__init__(f"training stopped by {name} after step {step} of {total}; {where} ({len(saved)} adapter(s) "
                         "of the group had finished and are saved)")


@dataclass
class AdapterTask:
    """One adapter to train with :func:`train_adapters`.

    Attributes:
        records: its training records (non-empty).
        seed: its seed (LoRA initialisation, data order), as for :func:`train_adapter`.
        out_dir: the folder to write.
        meta: free-form metadata for ``lorasum.json`` (``meta["domains"]`` is needed with
            ``lora.init_per_adapter``).
        validation: records scored with the trained adapter (``val_loss``), or None.
    """

    records: list[Record]
    seed: int
    out_dir: Path
    meta: dict = field(default_factory=dict)
    validation: list[Record] | None = None


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: ``s / warmup`` during warm-up, then linear decay to 0
    at ``total`` (the schedule of ``transformers.get_linear_schedule_with_warmup``)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class _Router:
    """Which adapter each token of the current forward pass belongs to, as the mask M."""

    def __init__(self, k: int, r: int, scaling: float):
        self.k, self.r, self.scaling = k, r, scaling
        self.varlen = False  # whether the passes use variable-length attention (recorded in lorasum.json)
        self.cuda_graphs = False  # whether the passes were replayed as CUDA graphs (recorded in lorasum.json)
        self._groups: torch.Tensor | int | None = None
        self._mask: torch.Tensor | None = None  # M of a tensor routing, on the routing's device
        self._masks: dict[torch.device, torch.Tensor] = {}  # M on other devices (int routing, split models)

    def route(self, groups: torch.Tensor | int) -> None:
        """``groups``: (rows, width) adapter index of each token (-1: padding), or one index for all.

        The mask of a tensor is built here, on its device, before the layers run: built lazily inside the
        first layer instead, a compiled layer took one graph for the first layer (mask missing) and
        another for the rest (mask cached), which doubled the compilation of a training run."""
        self._groups, self._masks = groups, {}
        self._mask = self._build(groups, groups.device) if isinstance(groups, torch.Tensor) else None

    def clear(self) -> None:
        """Forget the routing (and the masks built from it)."""
        self._groups, self._masks, self._mask = None, {}, None

    def _build(self, g: torch.Tensor | int, device: torch.device) -> torch.Tensor:
        if isinstance(g, int):
            m = torch.zeros(self.k * self.r, dtype=torch.bool, device=device)
            m[g * self.r:(g + 1) * self.r] = True
            return m
        return F.one_hot(g.to(device) + 1, self.k + 1)[..., 1:].bool().repeat_interleave(self.r, -1)

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """M as booleans, broadcastable to ``like`` (…, k·r), on its device."""
        m = self._mask
        if m is None or m.device != like.device:  # one index for all, or a layer on another device
            if self._groups is None:
                raise RuntimeError("parallel LoRA layers called before the tokens were routed")
            key = like.device
            if key not in self._masks:
                self._masks[key] = self._build(self._groups, key)
            m = self._masks[key]
        return m if m.dim() == 1 else m.reshape(like.shape)  # tokens in the layout the layer sees


class _ParallelLoRA(torch.nn.Module):
    """A frozen base layer (Linear or GPT-2's Conv1D) plus k LoRA adapters, routed per token.

    Parameters: ``lora_A`` (d_in, k, r), holding A_catᵀ, and ``lora_B`` (d_out, k, r), holding B_cat, float32:
    A_cat and B_cat of the module docstring are views (no copy in the forward pass), and both factors have
    the adapter on axis 1 and the same trailing (k, r), so that the optimiser keeps all of them in one
    buffer of contiguous slices (:class:`_AdamW`). Adapter j's factors are ``lora_A[:, j].T`` and
    ``lora_B[:, j]``.
    """

    def __init__(self, base: torch.nn.Module, factors: list[tuple[torch.Tensor, torch.Tensor]], dropout: float,
                 router: _Router):
        super().__init__()
        self.base = base
        device = next(base.parameters()).device
        self.lora_A = torch.nn.Parameter(torch.stack([a.detach().float().T for a, _ in factors], dim=1).to(device))
        self.lora_B = torch.nn.Parameter(torch.stack([b.detach().float() for _, b in factors], dim=1).to(device))
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.router = router

    def factors(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter ``j``'s (A (r, d_in), B (d_out, r)) (views)."""
        return self.lora_A[:, j].T, self.lora_B[:, j]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        # in the activations' dtype when they are bf16/fp16 (as PEFT's LoRA layers under the bf16 autocast of
        # train_adapter), else in the factors' float32
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else self.lora_A.dtype
        A = self.lora_A.flatten(1, 2).to(dtype).T  # (k·r, d_in), a transposed view
        B = self.lora_B.flatten(1, 2).to(dtype)  # (d_out, k·r)
        h = F.linear(self.dropout(x.to(dtype)), A)  # (…, k·r)
        # select, not multiply: a NaN or inf in one adapter must not reach another one's tokens (0 · inf = NaN)
        h = torch.where(self.router.mask(h), h * self.router.scaling, 0.0)
        return out + F.linear(h, B).to(out.dtype)


class _AdamW:
    """AdamW (Loshchilov & Hutter 2019, decoupled weight decay) over stacked adapters, each with its own
    learning rate, and the gradient-norm clip of each adapter alone.

    The update of adapter j's slice is that of ``torch.optim.AdamW`` (same order of operations:
    decay, moments, bias corrections, ``addcdiv``) on adapter j's parameters alone, with learning
    rate ``lr[j]``; ``clip`` is ``torch.nn.utils.clip_grad_norm_`` on adapter j's gradients alone.
    ``tests/train/test_train_parallel.py`` checks both against torch. One optimiser over k
    adapters instead of k optimisers (or k parameter groups).

    The parameters are moved into a few flat buffers: those with the same adapter axis, device, dtype and
    shape but for the first (all ``lora_A`` (d_in, k, r) and ``lora_B`` (d_out, k, r) of a run) become
    contiguous slices of one buffer, and so do their gradients (``.grad`` attached here; autograd
    accumulates into it in place) and moments. The clip and the step then take about twenty kernels
    whatever the number of modules: per parameter they took about 3,000 of a step's 7,500 kernels for
    SmolLM2 (210 LoRA modules; an H100 trace, 2026-12-05), because per-adapter rates broadcast along an
    axis send ``torch._foreach_*`` to its per-tensor path.

    Args:
        params: the stacked parameters (their storage is replaced by views of the flat buffers, values kept).
        axes: each parameter's adapter dimension (1 for the factors of :class:`_ParallelLoRA`).
        k: number of adapters.
    """

    def __init__(self, params: list[torch.Tensor], axes: list[int], k: int, *, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.01):
        self.params, self.axes, self.k = params, axes, k
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        # groups of parameters concatenated along one dimension (the last for axis 0, else the first)
        groups: dict[tuple, list[int]] = {}
        for i, (p, axis) in enumerate(zip(params, axes)):
            dim = p.dim() - 1 if axis == 0 else 0
            if dim == axis:  # (k,) or an adapter axis at the end: a group of its own
                key = ("alone", i)
            else:
                key = (axis, dim, p.device, p.dtype, tuple(n for d, n in enumerate(p.shape) if d != dim))
            groups.setdefault(key, []).append(i)
        self._flat: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self._grad_views: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
        self.exp_avg: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
        self.exp_avg_sq: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
        with torch.no_grad():
            for key, members in groups.items():
                axis = axes[members[0]]
                dim = key[1] if key[0] != "alone" else 0
                flat = torch.cat([params[i].detach() for i in members], dim=dim)
                tensors = [flat, torch.zeros_like(flat), torch.zeros_like(flat), torch.zeros_like(flat)]
                offset = 0
                for i in members:
                    n = params[i].shape[dim]
                    views = [t.narrow(dim, offset, n) for t in tensors]
                    params[i].data = views[0]
                    self._grad_views[i], self.exp_avg[i], self.exp_avg_sq[i] = views[1:]
                    offset += n
                self._flat.append((*tensors, axis))
        self.steps = 0
        self._attach()

    def _attach(self) -> None:
        """Each parameter's ``.grad`` is its view of the flat gradient buffer; one that autograd or a caller
        replaced (or set to None) is copied in (or zeroed) and the view put back."""
        for p, view in zip(self.params, self._grad_views):
            if p.grad is not view:
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view

    @staticmethod
    def _along(values: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
        """(k,) values shaped to broadcast along ``like``'s adapter dimension ``axis``."""
        return values.view([-1 if d == axis else 1 for d in range(like.dim())])

    def clip(self, max_norm: float) -> torch.Tensor:
        """Scale each adapter's gradients to a total 2-norm of at most ``max_norm``; returns the (k,) norms."""
        self._attach()
        squares = torch.stack([grad.float().square().sum([d for d in range(grad.dim()) if d != axis])
                               for _, grad, _, _, axis in self._flat]).sum(0)
        norms = squares.sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for _, grad, _, _, axis in self._flat:
            grad.mul_(self._along(coef, grad, axis))
        return norms

    @torch.no_grad()
    def step(self, lr: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """One step with learning rates ``lr`` (k,) float32 on the parameters' device (0: frozen).

        ``bias``: None (the step count is advanced here), or the caller's (2,) device tensor
        ``(1 - beta1^t, sqrt(1 - beta2^t))`` for step t (the caller advances ``steps``; no host
        value enters the computation, so the step can be captured in a CUDA graph)."""
        if bias is None:
            self.steps += 1
            bias1, bias2_sqrt = 1 - self.beta1 ** self.steps, math.sqrt(1 - self.beta2 ** self.steps)
        else:
            bias1, bias2_sqrt = bias[0], bias[1]
        self._attach()
        for param, grad, exp_avg, exp_avg_sq, axis in self._flat:
            param.mul_(self._along(1 - lr * self.weight_decay, param, axis))
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = exp_avg_sq.sqrt().div_(bias2_sqrt).add_(self.eps)
            param.add_(exp_avg.div(denom).mul_(self._along(-lr / bias1, param, axis)))

    def zero_grad(self) -> None:
        """Zero the gradients in place (they stay attached to the parameters)."""
        for _, grad, _, _, _ in self._flat:
            grad.zero_()
        self._attach()


def _fill(lengths: list[int], capacity: int) -> list[int]:
    """Start indices of the passes when each is filled in order as far as ``capacity`` tokens allow (an
    example longer than that alone)."""
    starts, size = [0], 0
    for i, n in enumerate(lengths):
        if size and size + n > capacity:
            starts.append(i)
            size = 0
        size += n
    return starts


def _passes(examples: list, max_tokens: int) -> list[list]:
    """Cut (example, adapter) pairs, in order, into the fewest forward passes of at most ``max_tokens`` tokens
    (an example longer than that gets a pass of its own), as even as that count allows: each cut at the
    example boundary nearest to its share of the tokens, so that every pass is within one example of the
    mean; where such cuts would overrun ``max_tokens``, the least capacity whose in-order filling still needs
    no more passes (bisection: the largest pass as small as it can be). A step of 2.05 × ``max_tokens`` takes
    three passes of 0.68, not two full ones and a small third: each pass costs a launch of every layer, and
    each distinct size a CUDA graph (and a small one a recompilation of the layers)."""
    lengths = [len(item[0].input_ids) for item in examples]
    fewest = len(_fill(lengths, max_tokens))
    prefix = [0]
    for n in lengths:
        prefix.append(prefix[-1] + n)
    cuts = [0] + [min(range(len(lengths) + 1), key=lambda at: (abs(prefix[at] - prefix[-1] * i / fewest), at))
                  for i in range(1, fewest)] + [len(lengths)]
    if all(a < b and (prefix[b] - prefix[a] <= max_tokens or b - a == 1) for a, b in zip(cuts, cuts[1:])):
        return [examples[a:b] for a, b in zip(cuts, cuts[1:])]
    low, high = 1, max(1, max_tokens)
    while low < high:  # the least capacity that keeps the fewest passes
        mid = (low + high) // 2
        if len(_fill(lengths, mid)) <= fewest:
            high = mid
        else:
            low = mid + 1
    starts = _fill(lengths, low) + [len(examples)]
    return [examples[a:b] for a, b in zip(starts, starts[1:])]


def _pack_by_adapter(part: list, row_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pack (example, adapter) pairs into rows that each hold one adapter's examples
    (:func:`lorasum.train.packing.pack` per adapter, rows padded to the widest)."""
    owners = list(dict.fromkeys(j for _, j in part))
    packs = [pack([e for e, o in part if o == j], row_length, pad_id, groups=[j] * sum(1 for _, o in part if o == j))
             for j in owners]
    width = max(b["input_ids"].shape[1] for b in packs)

    def widen(t: torch.Tensor, fill) -> torch.Tensor:
        extra = width - t.shape[1]
        if not extra:
            return t
        tail = torch.arange(extra).expand(t.shape[0], -1) if fill is None else torch.full((t.shape[0], extra), fill)
        return torch.cat([t, tail], dim=1)  # padding columns: a segment of their own (positions from 0)

    fills = {"input_ids": pad_id, "position_ids": None, "labels": IGNORE_INDEX, "groups": -1}
    return {key: torch.cat([widen(b[key], fill) for b in packs]) for key, fill in fills.items()}


def _peft_init(model: torch.nn.Module, config, seed: int, init_seed: int | None) -> dict[str, tuple]:
    """LoRA A and B as PEFT initialises them for ``seed`` (as in :func:`train_adapter`):
    module path → (A (r, d_in), B (d_out, r), scaling)."""
    _seed_everything(seed)
    if init_seed is not None:
        torch.manual_seed(init_seed)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules {config.target_modules}: {peft_error_line(e)}") from None
    try:
        inner = peft_model.base_model.model
        head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        out, unsupported = {}, []
        for name, m in inner.named_modules():
            if not isinstance(m, LoraLayer):
                continue
            base = m.get_base_layer()
            if "default" not in m.lora_A or not isinstance(base, (torch.nn.Linear, Conv1D)) or head in (m, base):
                unsupported.append(name)
                continue
            out[name] = (m.lora_A["default"].weight.detach().cpu().clone(),
                         m.lora_B["default"].weight.detach().cpu().clone(), float(m.scaling["default"]))
        if unsupported:
            raise ParallelUnsupported(
                f"lora.target_modules: parallel training takes linear projections inside the model only, not "
                f"{', '.join(unsupported[:3])}{' …' if len(unsupported) > 3 else ''} (embeddings or the LM head)")
        return out
    finally:
        peft_model.unload()


def _save(out_dir: Path, factors: dict[str, LoraFactor], config, model_info: ModelInfo, info: dict,
          overwrite: bool) -> None:
    """Write a PEFT adapter folder (the keys and ``adapter_config.json`` PEFT's ``save_pretrained``
    writes) plus ``lorasum.json``, atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for module, f in sorted(factors.items()):
        tensors[f"{_PREFIX}{module}{_SUFFIX_A}"] = f.A.contiguous()
        tensors[f"{_PREFIX}{module}{_SUFFIX_B}"] = f.B.contiguous()
    config = type(config)(**config.to_dict())
    config.base_model_name_or_path = model_info.name
    config.inference_mode = True
    with atomic_dir(out_dir, overwrite) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        atomic_write_json(tmp / ADAPTER_META_FILE, info)


def train_adapters(
    model: torch.nn.Module,
    tokenizer,
    tasks: list[AdapterTask],
    *,
    lora: LoraSpec,
    train: TrainSpec,
    max_length: int,
    model_info: ModelInfo,
    overwrite: bool = False,
    progress: bool = True,
    on_saved: Callable[[int, TrainResult], None] | None = None,
    varlen: bool | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    graphs: bool | None = None,
) -> list[TrainResult | None]:
    """Train the adapters of ``tasks`` together (see the module docstring) and save each one.

    Each adapter folder is what :func:`lorasum.train.train_adapter` writes (PEFT's
    ``adapter_model.safetensors`` and ``adapter_config.json``, plus ``lorasum.json`` with
    ``"parallel_adapters": k``); its ``seconds`` are the wall-clock seconds of the shared loop
    until it was saved. An adapter is saved as soon as it has taken its steps, then
    ``on_saved(index in tasks, result)`` is called. On return (or on an error) ``model`` is the
    unchanged base model, with its ``requires_grad`` flags and train/eval mode restored.

    Args:
        model: a transformers causal LM whose attention keeps packed examples apart.
        tokenizer: its tokenizer.
        tasks: the adapters (at least one).
        lora, train, max_length, model_info: as for :func:`train_adapter`, shared by all.
        overwrite: replace existing adapter folders.
        progress: show a progress bar.
        on_saved: called after each adapter is saved.
        varlen: compute attention per example (:mod:`lorasum.train.varlen`); None: where
            :func:`~lorasum.train.varlen.varlen_supported` (CUDA, SDPA; attention dropout through
            FlashAttention-2's kernels).
        checkpoint: the group's checkpoint folder (:mod:`lorasum.train.parallel_checkpoint`),
            written every ``train.checkpoint_every`` steps and on SIGINT / SIGTERM (then
            :class:`ParallelInterrupted` is raised) and removed when the group is done; None: no
            checkpoints.
        resume: continue from ``checkpoint`` if it exists (the same adapters in the same order,
            same settings and data: checked); the adapters equal those of an uninterrupted run.
        graphs: lay each pass out in static buffers and replay it as a CUDA graph
            (:mod:`lorasum.train.parallel_graphs`); None: ``train.cuda_graphs`` on a CUDA model
            with variable-length attention. True on the CPU runs the same static layout eagerly.

    Returns:
        One :class:`TrainResult` per task, in order; None for an adapter saved before the
        checkpoint that was resumed.

    Raises:
        OutputExistsError: an output folder exists and ``overwrite`` is False (checked first).
        DataError: a task has no records.
        ConfigError: no target modules, or the model does not keep packed examples apart
            (``train.packing`` off, or the check of :func:`packing_is_exact` fails).
        TrainingDiverged: an adapter's loss or weights became NaN or infinite.
        CheckpointError: ``resume`` and the checkpoint is unreadable or of another group.
        OutputExistsError: a checkpoint exists and neither ``resume`` nor ``overwrite`` is set.
        ParallelInterrupted: SIGINT / SIGTERM arrived (the checkpoint, if any, is saved).
    """
    if not tasks:
        raise ConfigError("train_adapters: no adapters to train")
    # continuing a checkpoint: the adapters saved before the stop are expected to exist
    continuing = resume and checkpoint is not None and (Path(checkpoint).exists() or Path(checkpoint).is_symlink())
    outs = [check_output(t.out_dir, overwrite or continuing) for t in tasks]
    for t, out in zip(tasks, outs):
        if not t.records:
            raise DataError(f"{out}: no training records")
    if not (train.packing and packing_is_exact(model)):
        raise ParallelUnsupported("training adapters in parallel needs packed rows (train.packing: true, and a model "
                          "whose attention keeps packed examples apart); set train.parallel_adapters: 1")
    config = _lora_config(lora, model_info)
    # each record once: the merged-data adapters hold the single-domain adapters' records
    encoded = encode_record_lists(tokenizer, [t.records for t in tasks], max_length, loss_on=train.loss_on)
    check_context(model, max(len(e.input_ids) for enc in encoded for e in enc))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ckpt = None
    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
        memo: dict[int, bytes] = {}
        group_id = fingerprint(
            model=[model_info.name, model_info.config_hash, weights_digest(model)], max_length=max_length,
            lora=lora.model_dump(mode="json"),
            train=_fingerprint_train(train),
            adapters=[[t.seed, _examples_hash(enc, memo), (t.meta or {}).get("domains")] for t, enc in zip(tasks, encoded)])
        ckpt = (ckpt_path, group_id, prepare_checkpoint(ckpt_path, resume=resume, overwrite=overwrite))
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    previous_attention = model.config._attn_implementation
    originals: dict[str, torch.nn.Module] = {}
    try:  # PEFT's initialisation changes requires_grad flags: restored in `finally`, also on a refusal
        # adapters of one seed start from the same factors (as train_adapter gives them): PEFT's
        # initialisation runs once per (seed, init seed), not once per adapter (0.4 s each for SmolLM2)
        init_of: dict[tuple, dict[str, tuple]] = {}
        inits = []
        for t in tasks:
            key = (t.seed, _init_seed(t.seed, t.meta.get("domains")) if lora.init_per_adapter else None)
            if key not in init_of:
                init_of[key] = _peft_init(model, config, *key)
            inits.append(init_of[key])
        modules = sorted(inits[0])
        router = _Router(len(tasks), lora.r, inits[0][modules[0]][2])
        for p in model.parameters():
            p.requires_grad_(False)
        layers = {}
        for name in modules:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            originals[name] = getattr(parent, attr)
            layers[name] = _ParallelLoRA(originals[name], [(init[name][0], init[name][1]) for init in inits],
                                         lora.lora_dropout, router)
            setattr(parent, attr, layers[name])
        with training_attention_dropout(model, train):
            use_varlen = varlen_supported(model) if varlen is None else varlen
            is_cuda = next(model.parameters()).is_cuda
            use_graphs = (train.cuda_graphs and is_cuda) if graphs is None else graphs
            if use_graphs and not use_varlen:
                if graphs:
                    raise ConfigError("train_adapters: graphs=True needs variable-length attention (varlen)")
                use_graphs = False
            if is_cuda and not use_varlen and varlen is None:
                log.info("variable-length attention and CUDA graphs off: %s", "the model has attention dropout "
                         "and this torch has no FlashAttention-2 operators (train.attention_dropout: 0 turns it "
                         "off)" if has_attention_dropout(model) else
                         "the model's attention is not SDPA or this torch has no varlen_attn")
            compile_layers = train.compile and is_cuda
            with varlen_attention(model, use_varlen), compiled_layers(model, compile_layers, training=True):
                return _loop(model, tokenizer, tasks, outs, encoded, layers, router, config, lora, train, max_length,
                             model_info, pad_id, overwrite, progress, on_saved, use_varlen, previous_attention, ckpt,
                             use_graphs)
    finally:
        for name, original in originals.items():
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, original)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))
        model.train(was_training)


def _eager():
    """Compiled code off for the duration (``torch.compiler.set_stance("force_eager")``; a no-op on an older torch)."""
    import contextlib

    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _diverged(losses: list[torch.Tensor], outs: list[Path], learning_rate: float,
              since: int = 0) -> TrainingDiverged | None:
    """The error naming the adapter whose loss first became NaN or infinite at step ``since`` or later, or None
    (the steps before ``since`` were checked already)."""
    values = torch.stack(losses[since:])  # (steps, k); waits for the GPU
    bad = ~torch.isfinite(values)
    if not bool(bad.any()):
        return None
    step, j = (int(v) for v in bad.nonzero()[0])  # earliest step, then lowest adapter index
    return TrainingDiverged(
        f"{outs[j]}: training diverged: the loss is {float(values[step, j])} at step {since + step + 1} (learning rate "
        f"{learning_rate}); the adapters trained in the same passes and not yet saved are not saved either "
        "(their gradients share the passes)")


def _loop(model, tokenizer, tasks, outs, encoded, layers, router, config, lora, train, max_length, model_info,
          pad_id, overwrite, progress, on_saved, use_varlen, previous_attention, ckpt,
          use_graphs=False) -> list[TrainResult | None]:
    import shutil

    from lorasum.train.parallel_graphs import GraphedPasses

    from lorasum.train.loop import _stop_on_signals

    k = len(tasks)
    router.varlen = use_varlen
    device = next(model.parameters()).device
    params = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    totals = [_total_steps(len(enc), train) for enc in encoded]
    optimizer = _AdamW(params, [1] * len(params), k, weight_decay=train.weight_decay)
    schedules = [linear_schedule(round(train.warmup_ratio * n), n) for n in totals]
    streams = [_micro_batches(len(enc), train.batch_size, torch.Generator().manual_seed(t.seed))
               for t, enc in zip(tasks, encoded)]
    labelled: dict[int, int] = {}  # per Encoded object: tasks share them
    for enc in encoded:
        for e in enc:
            if id(e) not in labelled:
                labelled[id(e)] = sum(1 for v in e.labels[1:] if v != IGNORE_INDEX)
    n_labelled = [[labelled[id(e)] for e in enc] for enc in encoded]
    _seed_everything(tasks[0].seed)  # dropout masks of the shared passes
    losses: list[torch.Tensor] = []
    tokens = [0] * k
    results: list[TrainResult | None] = [None] * k
    group = [t.meta.get("job_key") or str(out) for t, out in zip(tasks, outs)]  # recorded in each lorasum.json
    first, before = 0, 0.0
    if ckpt is not None and ckpt[2]:  # continue: every state back, each stream past the steps it took
        saved = load_group_checkpoint(ckpt[0], ckpt[1], layers=layers, optimizer=optimizer, totals=totals)
        restore_group_checkpoint(saved, layers, optimizer)
        first, tokens, before = saved.step, list(saved.tokens), saved.seconds
        losses = [torch.tensor([saved.losses[j][t] if t < len(saved.losses[j]) else 0.0 for j in range(k)],
                               device=device) for t in range(first)]
        for j in range(k):
            for _ in range(min(first, totals[j]) * train.grad_accum):
                next(streams[j])
        log.info("resuming %d adapters from %s at step %d of %d", k, ckpt[0], first, max(totals))

    def save_checkpoint(step_done: int) -> Path:
        history = torch.stack(losses).T.tolist()  # (k, steps); waits for the GPU
        return save_group_checkpoint(ckpt[0], fingerprint=ckpt[1], step=step_done, layers=layers, optimizer=optimizer,
                                     losses=[h[:min(step_done, n)] for h, n in zip(history, totals)], tokens=tokens,
                                     seconds=before + time.perf_counter() - start)

    static = None
    if use_graphs:
        longest = max(len(e.input_ids) for enc in encoded for e in enc)
        try:
            static = GraphedPasses(model, router, optimizer, k, longest, train.max_grad_norm,
                                   capture=device.type == "cuda")
        except ValueError as e:  # logits are more than lm_head(hidden): the ordinary passes
            log.warning("CUDA graphs off for this training (%s)", e)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(first, max(totals)), desc=f"train ×{k}", unit="step", disable=not progress, leave=False,
               initial=first, total=max(totals))
    checked = 0  # losses[:checked] are known to be finite
    # (first step, its time, adapters, graphs captured, capture seconds) of the steps with one active set
    phase = (first, time.perf_counter(), None, 0, 0.0)
    with _stop_on_signals() as stop:
        for step in bar:
            active = [j for j in range(k) if step < totals[j]]
            if len(active) != phase[2]:
                phase = _log_phase(phase, step, len(active), static)
            window, picked = [], []  # forward passes of the step; (adapter, example indices) taken
            for _ in range(train.grad_accum):
                picks = [(j, next(streams[j])) for j in active]
                picked += picks
                examples = [(encoded[j][i], j) for j, idx in picks for i in idx]
                for part in _passes(examples, train.parallel_max_tokens):
                    if static is not None:  # laid out below, once the step's loss weights are known
                        window.append(part)
                        continue
                    if use_varlen:  # rows may mix adapters: attention is computed example by example
                        batch = pack([e for e, _ in part], train.pack_length, pad_id, groups=[j for _, j in part])
                        batch |= varlen_kwargs(batch["position_ids"])
                    else:  # a masked row would pass one adapter's NaN to another's examples (0 · NaN)
                        batch = _pack_by_adapter(part, train.pack_length, pad_id)
                    window.append(batch)
            n_answer = torch.ones(k)
            for j, idx in picked:
                tokens[j] += sum(len(encoded[j][i].input_ids) for i in idx)
            for j in active:
                n_answer[j] = max(1, sum(n_labelled[j][i] for jj, idx in picked if jj == j for i in idx))
            n_answer_dev = _to(n_answer, device)  # from pinned memory: no wait for the GPU
            # finished adapters get learning rate 0: their slices stay as they were saved
            lr = torch.tensor([train.learning_rate * schedules[j](step) if j in active else 0.0 for j in range(k)])
            if static is not None:  # static buffers, replayed as CUDA graphs (lorasum.train.parallel_graphs)
                for part in window:
                    static.run_part(part, pad_id, n_answer)
                static.optimizer_step(lr)
                losses.append(static.take_losses(n_answer_dev))
            else:
                step_nll = torch.zeros(k, device=device)
                for batch in window:  # token-weighted mean of each adapter over its whole step, as in train_adapter
                    router.route(batch["groups"].to(device, non_blocking=True))
                    nll, flat = token_nll(model, batch)
                    owner = batch["groups"].flatten()[flat].to(device, non_blocking=True)
                    per_adapter = torch.zeros(k, device=device).index_add(0, owner, nll)
                    (per_adapter / n_answer_dev).sum().backward()
                    step_nll += per_adapter.detach()
                if train.max_grad_norm is not None:
                    optimizer.clip(train.max_grad_norm)
                optimizer.step(lr.to(device, non_blocking=True))
                optimizer.zero_grad()
                losses.append(step_nll / n_answer_dev)
            finishing = [j for j in active if step + 1 == totals[j]]
            if finishing or step % _CHECK_EVERY == _CHECK_EVERY - 1:
                error = _diverged(losses, outs, train.learning_rate, since=checked)
                if error is not None:
                    raise error
                checked = len(losses)
            router.cuda_graphs = static is not None and static.capture and static.captured > 0
            for j in finishing:
                # validation: padded batches, not compiled (inference shapes would recompile the training layers)
                with attention_implementation(model, previous_attention), _eager():
                    results[j] = _finish(model, tokenizer, tasks[j], outs[j], j, group, layers, router, losses,
                                         tokens[j], before + time.perf_counter() - start, config, lora, train,
                                         max_length, model_info, len(encoded[j]),
                                         sum(e.truncated for e in encoded[j]), overwrite, progress)
                if on_saved is not None:
                    on_saved(j, results[j])
            if progress and (step % 20 == 0 or step == max(totals) - 1):
                bar.set_postfix(adapters=len(active), tok_s=f"{sum(tokens) / (time.perf_counter() - start):.0f}")
            if step + 1 < max(totals):
                path = None
                if ckpt is not None and ("signum" in stop or (train.checkpoint_every
                                                              and (step + 1) % train.checkpoint_every == 0)):
                    path = save_checkpoint(step + 1)
                if "signum" in stop:
                    raise ParallelInterrupted(stop["signum"], step + 1, max(totals),
                                              [outs[j] for j in range(k) if totals[j] <= step + 1], path)
        _log_phase(phase, max(totals), 0, static)
        if static is not None and static.capture:
            log.info("CUDA graphs: %d shapes captured, %d passes padded to a captured shape, %d cut into pieces of "
                     "captured shapes and %d run eagerly (GPU memory)", static.captured, static.padded, static.split,
                     static.eager)
        if ckpt is not None:
            shutil.rmtree(ckpt[0], ignore_errors=True)  # every adapter is saved: the checkpoint has served
        if "signum" in stop:  # asked to stop while the last adapters were validated and saved: they are
            raise ParallelInterrupted(stop["signum"], max(totals), max(totals), list(outs), None)
    return results


def _log_phase(phase: tuple, step: int, n_active: int, graphs=None) -> tuple:
    """Log the pace of the steps since ``phase`` (first step, its time, adapters active, CUDA graphs captured
    and seconds spent capturing them until then) and start the next phase at ``step`` with ``n_active``
    adapters. The time includes the validation of adapters that finished and the graph captures of the
    stretch (each an eager warm-up pass plus the capture), which the line counts. ``graphs``: the
    :class:`lorasum.train.parallel_graphs.GraphedPasses` of the run, or None."""
    first, t0, n, captured, capture_s = phase
    now = time.perf_counter()
    captured_now = graphs.captured if graphs is not None else 0
    capture_now = graphs.capture_seconds if graphs is not None else 0.0
    if n is not None and step > first:
        extra = ""
        if captured_now > captured:
            extra = f" ({captured_now - captured} CUDA graphs captured in {capture_now - capture_s:.1f} s)"
        log.info("steps %d-%d: %d adapters, %.0f ms a step%s", first, step, n, 1000 * (now - t0) / (step - first),
                 extra)
    return step, now, n_active, captured_now, capture_now


def _finish(model, tokenizer, task, out, j, group, layers, router, losses, tokens, seconds, config, lora, train,
            max_length, model_info, n_examples, n_truncated, overwrite, progress) -> TrainResult:
    """Check, score on validation and save adapter ``j`` (it has taken its last step)."""
    k = len(group)
    values = torch.stack([step[j] for step in losses]).tolist()  # waits for the GPU
    with torch.no_grad():  # one copy to the CPU for all modules
        parts = [t for layer in layers.values() for t in layer.factors(j)]
        flat = torch.cat([t.reshape(-1) for t in parts]).cpu().split([t.numel() for t in parts])
    pieces = iter(t.view(shape) for t, shape in zip(flat, (t.shape for t in parts)))
    factors = {name: LoraFactor(A=next(pieces).clone(), B=next(pieces).clone(), scaling=router.scaling)
               for name in layers}
    if not all(bool(torch.isfinite(f.A).all() and torch.isfinite(f.B).all()) for f in factors.values()):
        raise TrainingDiverged(f"{out}: training diverged: LoRA weights became NaN or infinite (learning rate "
                               f"{train.learning_rate}); this adapter was not saved")
    val_loss = None
    if task.validation:
        log.info("validation: scoring %d examples for %s", len(task.validation), out.name)
        router.route(j)
        val_loss = perplexity(model, tokenizer, task.validation, max_length=max_length, batch_size=_VAL_BATCH,
                              max_tokens=_VAL_MAX_TOKENS, loss_on=train.loss_on, progress=progress).mean_nll
    n_tail = max(1, round(_LOG_TAIL * len(values)))
    summary = {"steps": len(values), "tokens": tokens, "seconds": seconds, "final_loss": sum(values[-n_tail:]) / n_tail,
               "val_loss": val_loss, "packed": True, "parallel_adapters": k, "trained_with": group,
               "varlen_attention": router.varlen, "cuda_graphs": router.cuda_graphs}
    info = _metadata(model_info, config, train, task.seed, max_length, task.meta, n_examples, n_truncated, values,
                     summary)
    _save(out, factors, config, model_info, info, overwrite)
    log.info("saved %s (%d steps, trained with %d adapters in parallel)", out, len(values), k)
    return TrainResult(out_dir=out, steps=len(values), tokens=tokens, seconds=seconds, losses=values,
                       final_loss=summary["final_loss"], val_loss=val_loss, parallel_adapters=k)
