"""Answer-token NLL and perplexity.

Perplexity of a model on a set of records is ``exp`` of the token-weighted mean
negative log-likelihood (in nats) of the answer tokens given everything before them
(or of every token, ``loss_on="all"``):

    PPL = exp( sum_i sum_{t in answer_i} -log p(x_t | x_<t) / sum_i |answer_i| )

(Jelinek et al. 1977; the metric of arXiv 2508.11985, Table 1). Prompt and padding
tokens carry no loss (labels ``-100``, see :mod:`lorasum.data.tokenize`).

:func:`answer_token_nll` is the one loss function of lorasum: training minimises it and
evaluation reports it. It runs the decoder once and applies the LM head only at the
positions whose next token is an answer token, which avoids computing (B, T, V) logits
for a 49k-token vocabulary.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from lorasum.data.records import Record
from lorasum.data.tokenize import IGNORE_INDEX, Encoded, LossOn, collate, encode_records, sliding_windows

__all__ = [
    "Perplexity", "perplexity", "score", "answer_token_nll", "token_nll", "autocast_for", "fast_attention", "encode_for_eval",
    "head_nll", "compiled_head",
]

# config attributes of architectures whose logits are not just lm_head(hidden);
# for these the full forward pass is used
_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT ``PeftModel`` (LoRA layers stay injected), else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, LM head) of a causal LM, or None when logits are more than ``head(hidden)``."""
    config = getattr(model, "config", None)
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "base_model", None)
    if head is None or decoder is None or decoder is model:
        return None
    return decoder, head


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA; a no-op elsewhere (CPU runs in the model's own dtype, float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: SDPA backends used on CUDA: every one but cuDNN, in PyTorch's order.
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def fast_attention(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast (:func:`autocast_for`) plus, on CUDA, SDPA without the cuDNN backend.

    cuDNN attention (PyTorch's first choice on Hopper for bf16 with a mask) builds an execution
    plan for every new (batch, length) shape: about 0.1 s per shape measured on an H200 (0.4 s
    forward + 0.55 s backward reported on a B200, modelscope/FunASR#3704). Length-grouped
    evaluation batches and packed training rows have many shapes, so that cost dominated:
    perplexity ran at 80k tokens/s with it and over 5x faster without (BENCHMARKS.md).
    Flash or memory-efficient attention give the same values (up to bf16 rounding).
    """
    with autocast_for(device):
        if device.type == "cuda":
            with sdpa_kernel(_SDPA_BACKENDS):
                yield
        else:
            yield


#: rows of the LM head computed at a time by :func:`head_nll` (a chunk's float32 logits: 4096 × V × 4 bytes).
HEAD_CHUNK = 4096


def _chunk_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL (nats) of ``targets`` (c,) int64 under (c, V) ``logits``: ``logsumexp(logits) − logits[target]`` in
    float32, shape (c,)."""
    x = logits.float()
    return torch.logsumexp(x, dim=-1) - x.gather(1, targets[:, None]).squeeze(1)


def _chunk_nll_and_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_chunk_nll` and its gradient with respect to the logits, ``softmax(logits) − onehot(targets)``
    (c, V), in the logits' dtype (bf16 under autocast: the head's matmul would cast it so anyway).

    Functional (no in-place ops) so that ``torch.compile`` fuses it into a reduction and a pointwise kernel
    that read the logits twice and write the gradient once, instead of the eager path's ≈ 10 passes over a
    float32 copy."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    nll = (lse - x.gather(1, targets[:, None])).squeeze(1)
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == targets[:, None]
    return nll, ((x - lse).exp() - onehot.to(x.dtype)).to(logits.dtype)


#: whether :class:`_ChunkedHeadNLL` uses the compiled chunk functions (set by :func:`compiled_head`)
_COMPILED_HEAD: contextvars.ContextVar[bool] = contextvars.ContextVar("lorasum_compiled_head", default=False)
_compiled: dict[str, Callable] = {}


@contextlib.contextmanager
def compiled_head(enabled: bool = True) -> Iterator[None]:
    """For the duration, :func:`head_nll` scores each chunk with ``torch.compile``-d functions
    (dynamic shapes; compiled once per process, a few seconds, on the first chunk): the float32 cast,
    log-sum-exp, target gather, softmax and ``− onehot`` of a chunk become two fused kernels instead of
    about ten passes over (c, V) float32 logits. Same values up to float32 rounding (tested against
    ``F.cross_entropy``). ``enabled=False``: nothing; nested, an inner ``False`` leaves an outer ``True`` on.

    :func:`lorasum.models.compiled_layers` enters it, so ``train.compile`` and ``eval.compile`` use it (a
    6-adapter SmolLM2 step spent ≈ 10 of its 65 ms of GPU time in the eager chunk's casts, reductions and
    exponentials on an H100, 2026-12-06; BENCHMARKS.md)."""
    token = _COMPILED_HEAD.set(bool(enabled) or _COMPILED_HEAD.get())
    try:
        yield
    finally:
        _COMPILED_HEAD.reset(token)


def _chunk_fns() -> tuple[Callable, Callable | None]:
    """(nll, nll and gradient) chunk functions: both compiled under :func:`compiled_head`; else the eager nll and
    None (the caller forms the gradient in place)."""
    if not _COMPILED_HEAD.get():
        return _chunk_nll, None
    if not _compiled:
        _compiled["nll"] = torch.compile(_chunk_nll, dynamic=True)
        _compiled["grad"] = torch.compile(_chunk_nll_and_grad, dynamic=True)
    return _compiled["nll"], _compiled["grad"]


class _ChunkedHeadNLL(torch.autograd.Function):
    """NLL of ``targets`` under ``softmax(hidden @ weight.T + bias)``, ``HEAD_CHUNK`` rows at a time, with the
    gradient of ``hidden`` formed in the forward pass (the head is frozen: no gradient for it)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, need_grad):  # noqa: D102
        n = hidden.shape[0]
        nll = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if need_grad else None
        score, score_and_grad = _chunk_fns()
        for start in range(0, n, chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = F.linear(h, weight, bias)  # (c, V): bf16 matmul under autocast, as head(hidden)
            if grad is None:
                nll[start:start + chunk] = score(logits, t)
            elif score_and_grad is not None:  # compiled: d nll / d logits = softmax - onehot in two kernels
                nll[start:start + chunk], dlogits = score_and_grad(logits, t)
                grad[start:start + chunk] = F.linear(dlogits, weight.t())
            else:  # eager, in place on the float32 copy (one (c, V) float32 buffer at a time)
                logits = logits.float()
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)
                nll[start:start + chunk] = (lse - logits.gather(1, t[:, None])).squeeze(1)
                probs = logits.sub_(lse).exp_()  # d nll / d logits = softmax - onehot; d nll / d h = that @ weight
                probs.scatter_add_(1, t[:, None], torch.full_like(t[:, None], -1, dtype=probs.dtype))
                grad[start:start + chunk] = F.linear(probs.to(weight.dtype), weight.t())
        ctx.save_for_backward(grad)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return grad * grad_nll[:, None].to(grad.dtype), None, None, None, None, None


def head_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
             chunk: int = HEAD_CHUNK) -> torch.Tensor:
    """Per-row NLL (nats) of ``targets`` under the LM head's logits, ``F.cross_entropy(head(hidden).float(),
    targets, reduction="none")``, without the (N, V) logits of all rows at once.

    For a frozen ``nn.Linear`` head (LoRA never trains it in lorasum) the rows are scored ``chunk`` at a
    time and the gradient of ``hidden``, ``(softmax(logits) − onehot(target)) · W`` per row (the
    derivative of the log-softmax cross-entropy), is formed chunk by chunk in the forward pass and scaled
    by the incoming gradient in the backward pass: peak memory is that of one chunk of float32 logits
    (4096 × V × 4 bytes: 0.8 GB for V = 49,152) instead of about 10 bytes × N × V (bf16 logits, their
    float32 copy, the saved log-softmax and its gradient) — most of a training pass's memory. With autograd
    off (evaluation) any ``nn.Linear`` head is chunked, also one whose weight requires grad. Any other head
    (trainable with autograd on, or not a Linear) takes the plain path.

    Args:
        head: the LM head, ``logits = head(hidden)``.
        hidden: (N, H) final hidden states of the scored positions.
        targets: (N,) int64 token ids predicted there (no ignore index).
        chunk: rows per chunk (at least 1).

    Returns:
        (N,) float32 NLL, differentiable with respect to ``hidden``.
    """
    # chunked for an nn.Linear head that gets no gradient: frozen, or autograd off (evaluation of a base model
    # whose parameters still require grad)
    frozen = type(head) is torch.nn.Linear and (not torch.is_grad_enabled() or (
        not head.weight.requires_grad and (head.bias is None or not head.bias.requires_grad)))
    if not frozen or chunk < 1:
        return F.cross_entropy(head(hidden).float(), targets, reduction="none")
    # under no_grad the gradient is not formed, even for a hidden state that requires grad
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _ChunkedHeadNLL.apply(hidden, head.weight, head.bias, targets, chunk, need_grad)


def _scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``b * T + t`` of the positions whose next token is labelled, and those labels.

    Computed on the CPU tensor (no device synchronisation). ``labels``: (B, T) int64.
    """
    labels = labels.cpu()
    width = labels.shape[1]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    flat = keep.flatten().nonzero().squeeze(1)  # (N,)
    rows, cols = flat // width, flat % width
    return flat, labels[rows, cols + 1]


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device`` without waiting for the GPU (pinned host memory, non-blocking)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _causal_hides_padding(mask: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether a batch may go to the model without its (B, T) attention ``mask``: each row is ones then
    zeros (padding only at the end, so causal attention keeps every real token from it) and no padded
    position carries a label (none is scored). CPU tensors: no device synchronisation."""
    mask, labels = mask.cpu().bool(), labels.cpu()
    ordered = bool((mask[:, 1:] <= mask[:, :-1]).all()) if mask.shape[1] > 1 else True
    return ordered and not bool((labels[~mask] != IGNORE_INDEX).any())


def answer_token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed NLL (nats) of the labelled tokens of a batch and their count.

    Args:
        model: a transformers causal LM, or a PEFT ``PeftModel`` wrapping one (adapters active).
        batch: ``input_ids`` and ``labels``, each (B, T) int64, labels aligned with the inputs;
            either ``attention_mask`` (B, T) (a right-padded batch, see
            :func:`lorasum.data.tokenize.collate`; the model then gets no mask, since causal
            attention keeps each real token from the padding after it, and a batch padded
            elsewhere keeps its mask) or ``position_ids`` (B, T) and no attention mask (a packed
            batch, see :func:`lorasum.train.packing.pack`).

    Returns:
        ``(nll_sum, n_tokens)``: a float32 scalar tensor (differentiable, on the model's device)
        equal to ``sum_t -log p(labels[t] | input_ids[<t])`` over positions with
        ``labels[t] != -100`` and ``t >= 1``; and the number of those positions.
        This equals ``cross_entropy(logits[:, :-1], labels[:, 1:], reduction="sum")``
        of the full forward pass, but the LM head is applied only at those positions.
        The positions are found on the CPU, so the call does not wait for the GPU.
    """
    nll, flat = token_nll(model, batch)
    return nll.sum(), int(flat.numel())


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL (nats) of each labelled token of a batch, and where those tokens are.

    The per-token form of :func:`answer_token_nll` (same arguments, same single decoder pass,
    LM head only at the scored positions).

    Returns:
        ``(nll, flat)``: ``nll`` (N,) float32 on the model's device (differentiable), the NLL of
        the token at each position; ``flat`` (N,) int64 on the CPU, the positions as flat indices
        ``b * T + t`` of the input (the token predicted is ``labels.flatten()[flat + 1]``).
    """
    device = next(model.parameters()).device
    flat_cpu, targets = _scored_positions(batch["labels"])
    inputs = {"input_ids": _to(batch["input_ids"], device), "use_cache": False}
    if "position_ids" in batch:
        inputs |= {"position_ids": _to(batch["position_ids"], device), "attention_mask": None}
        # example boundaries for variable-length attention (lorasum.train.varlen), when the batch has them
        inputs |= {k: _to(v, device) if torch.is_tensor(v) else v for k, v in batch.items() if k in _VARLEN_KEYS}
    elif not _causal_hides_padding(batch["attention_mask"], batch["labels"]):
        inputs["attention_mask"] = _to(batch["attention_mask"], device)
    # else no mask at all: in a right-padded batch causal attention already keeps every real token from the
    # padding after it, and padded positions are never scored; one kind of call for compiled layers (a mask
    # or None: two compilations otherwise, ~6 s each for SmolLM2) and the unmasked (flash) attention kernels
    flat, targets = _to(flat_cpu, device), _to(targets, device)
    inner = _unwrap(model)
    parts = _split_head(inner)
    with fast_attention(device):
        if parts is None:  # generic path: full logits (B, T, V)
            logits = inner(**inputs).logits
            logits = logits.flatten(0, 1).index_select(0, flat)
        else:
            decoder, head = parts
            hidden = decoder(**inputs)[0]  # (B, T, H)
            return head_nll(head, hidden.flatten(0, 1).index_select(0, flat), targets), flat_cpu  # N = n_tokens
    return F.cross_entropy(logits.float(), targets, reduction="none"), flat_cpu


@dataclass(frozen=True)
class Perplexity:
    """Summed answer-token NLL of a set of examples.

    Attributes:
        nll_sum: total NLL in nats.
        n_tokens: number of answer tokens scored.
        n_examples: number of examples.
    """

    nll_sum: float
    n_tokens: int
    n_examples: int

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean NLL in nats per token (NaN when no token was scored)."""
        return self.nll_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def ppl(self) -> float:
        """Perplexity ``exp(mean_nll)``."""
        return math.exp(self.mean_nll)

    def __add__(self, other: Perplexity) -> Perplexity:
        """Union of two disjoint example sets (token-weighted: sums are added)."""
        if not isinstance(other, Perplexity):
            return NotImplemented
        return Perplexity(
            self.nll_sum + other.nll_sum, self.n_tokens + other.n_tokens, self.n_examples + other.n_examples
        )

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict with the sums and the derived ``mean_nll`` and ``ppl``."""
        return {
            "nll_sum": self.nll_sum,
            "n_tokens": self.n_tokens,
            "n_examples": self.n_examples,
            "mean_nll": self.mean_nll,
            "ppl": self.ppl,
        }


def _length_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Index lists of examples sorted by length: at most ``batch_size`` examples and, if set,
    at most ``max_tokens`` padded tokens (examples x longest) per batch (one example at least)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or (max_tokens and (len(batch) + 1) * lengths[i] > max_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def encode_for_eval(
    tokenizer, records: list[Record], *, max_length: int, loss_on: LossOn = "answer", stride: int | None = None
) -> list[Encoded]:
    """Token sequences to score: one per record cut to ``max_length`` (``stride=None``), or the
    whole records cut into sliding windows of ``max_length`` tokens ``stride`` apart.

    Raises:
        ValueError: as :func:`~lorasum.data.tokenize.encode_record` and
            :func:`~lorasum.data.tokenize.sliding_windows`.
    """
    if stride is None:
        return encode_records(tokenizer, records, max_length, loss_on=loss_on)
    return [w for e in encode_records(tokenizer, records, None, loss_on=loss_on)
            for w in sliding_windows(e, max_length, stride)]


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    records: list[Record],
    *,
    max_length: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = False,
    loss_on: LossOn = "answer",
    stride: int | None = None,
    max_tokens: int | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``records``: answer tokens (default) or all tokens.

    Records are tokenised with :func:`~lorasum.data.tokenize.encode_record` (truncated to
    ``max_length``), or, with ``stride``, kept whole and scored in sliding windows of
    ``max_length`` tokens ``stride`` apart (:func:`~lorasum.data.tokenize.sliding_windows`:
    every labelled token once, with at least ``max_length - stride`` tokens of context).
    Batches are groups of examples of similar length (sorted; little padding) of at most
    ``batch_size`` examples and ``max_tokens`` padded tokens; the sums do not depend on batch
    size or order (up to float rounding). Runs under ``torch.inference_mode`` (bfloat16 autocast
    on CUDA) with the model in eval mode (its previous mode is restored). Works for a plain
    model or a ``PeftModel``.

    Args:
        device: where to run; default the model's device (the model is not moved).
        loss_on: ``"answer"`` (answer tokens and eos) or ``"all"`` (every token but the first).

    Raises:
        ValueError: ``device`` differs from the model's device; ``stride`` not in ``[1, max_length)``.
    """
    _check_device(model, device)
    encoded = encode_for_eval(tokenizer, records, max_length=max_length, loss_on=loss_on, stride=stride)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return score(model, encoded, pad_token_id=pad_id, n_examples=len(records), batch_size=batch_size,
                 max_tokens=max_tokens, progress=progress)


def _check_device(model: torch.nn.Module, device: torch.device | str | None) -> None:
    model_device = next(model.parameters()).device
    wanted = torch.device(device) if device is not None else model_device
    if wanted.type != model_device.type or (wanted.index is not None and wanted.index != model_device.index):
        raise ValueError(f"perplexity: model is on {model_device}, not {device}; move it first")


def score(
    model: torch.nn.Module,
    examples: list[Encoded],
    *,
    pad_token_id: int,
    n_examples: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
) -> Perplexity:
    """Summed NLL of already tokenised examples (:func:`encode_for_eval`): the scoring half of
    :func:`perplexity`, for callers that score the same examples with many models.

    Args:
        examples: token ids and labels (-100: not scored) of each example.
        pad_token_id: id written in padded positions (they are masked; any id will do).
        n_examples: reported as ``Perplexity.n_examples`` (default ``len(examples)``; pass the
            number of records when they were cut into sliding windows).
        batch_size, max_tokens: at most this many examples and padded tokens per batch.

    Raises:
        ConfigError: an example is longer than the model's context.
    """
    from lorasum.models import check_context

    if examples:
        check_context(_unwrap(model), max(len(e.input_ids) for e in examples))
    was_training = model.training
    model.eval()
    sums: list[torch.Tensor] = []
    n_tokens = 0
    try:
        with torch.inference_mode():
            batches = list(_length_batches([len(e.input_ids) for e in examples], batch_size, max_tokens))
            for idx in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, leave=False):
                nll, n = answer_token_nll(model, collate([examples[i] for i in idx], pad_token_id))
                sums.append(nll.double())  # summed on the device: no synchronisation per batch
                n_tokens += n
            nll_sum = float(torch.stack(sums).sum()) if sums else 0.0
    finally:
        model.train(was_training)
    return Perplexity(nll_sum=nll_sum, n_tokens=n_tokens,
                      n_examples=len(examples) if n_examples is None else n_examples)
