"""Variable-length (packed) attention for training: each example attends only to itself, computed per example.

Packed rows (:mod:`lorasum.train.packing`) keep examples apart through restarted ``position_ids``,
from which transformers builds a block-diagonal (rows, 1, W, W) mask for SDPA. With a mask, SDPA
cannot use its flash kernel, and every row costs W² per head whatever the lengths of its
examples: in a profile of a 51k-token step of SmolLM2 (rows of 1,024) attention with the mask took
25 % of the GPU time (BENCHMARKS.md). Here the attention of a packed batch is computed on the
flattened tokens with cumulative example boundaries (``cu_seqlens``, as in FlashAttention's
varlen interface, Dao 2023): ``torch.nn.attention.varlen.varlen_attn`` on CUDA, the same result
as the masked SDPA up to bfloat16 rounding, and no mask at all.

The attention function is registered with transformers' ``AttentionInterface`` under
:data:`VARLEN` and switched on for the duration of :func:`varlen_attention`; the boundaries travel
with the batch as the keyword arguments transformers passes down to attention
(``cu_seq_lens_q`` …, see :func:`varlen_kwargs`). On the CPU (tests) the same function runs a
reference: SDPA example by example.

Attention dropout (GPT-2's ``attn_pdrop`` is 0.1) has no argument in ``varlen_attn``; with dropout on a
CUDA model the same flattened tokens go through FlashAttention-2's own kernels with their dropout
(``aten._flash_attention_forward`` / ``_flash_attention_backward``, as SDPA's flash path calls them),
wrapped in the custom operator ``lorasum::flash_varlen`` (:func:`flash_varlen_attention`) so that
autograd, ``torch.compile`` and CUDA graph capture see one opaque op whose backward reuses the
forward's random seed and offset. The CPU reference then applies SDPA's dropout per example: the
same distribution, other random draws.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["VARLEN", "varlen_kwargs", "varlen_attention", "varlen_supported", "attention_implementation",
           "attention_dropout", "has_attention_dropout", "flash_varlen_attention"]

#: the name under which the attention function is registered with transformers.
VARLEN = "lorasum_varlen"
_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout")  # config fields: GPT-2, Llama and most others


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """The example boundaries of a packed batch, from its restarting ``position_ids``.

    Args:
        position_ids: (R, W) int64 on the CPU (an example, or a row's padding, starts where it is 0).

    Returns:
        ``cu_seq_lens_q`` / ``cu_seq_lens_k``: (n + 1,) int32, the start of each of the n segments of
        the flattened (R·W) tokens and the total; ``max_length_q`` / ``max_length_k``: the longest
        segment (int).
    """
    flat = position_ids.reshape(-1)
    # a segment starts at every position 0, and at every row start even where its position is not 0
    row_starts = torch.arange(0, flat.numel(), position_ids.shape[1])
    starts = torch.unique(torch.cat([(flat == 0).nonzero().squeeze(1), row_starts]))
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _varlen_call():
    """``torch.nn.attention.varlen.varlen_attn`` and how it asks for causal masking, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        causal = {"is_causal": True}
    elif "window_size" in params:
        causal = {"window_size": (-1, 0)}
    else:
        return None
    return varlen_attn, causal, "scale" in params


def _flash_available() -> bool:
    """Whether this torch has FlashAttention-2's variable-length kernels as aten operators."""
    return hasattr(torch.ops.aten, "_flash_attention_forward") and hasattr(torch.ops.aten, "_flash_attention_backward")


def _define_flash_ops():
    """Define ``lorasum::flash_varlen`` (forward) and ``lorasum::flash_varlen_backward`` once; return the forward."""
    from torch.library import custom_op

    @custom_op("lorasum::flash_varlen", mutates_args=())
    def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     dropout_p: float, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, True, False, scale=scale)
        return out, lse, rng_state, unused

    @flash_varlen.register_fake
    def _(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale):
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, True, False, scale=scale)
        return out, lse, rng_state, unused

    @custom_op("lorasum::flash_varlen_backward", mutates_args=())
    def flash_varlen_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                              dropout_p: float, scale: float, rng_state: torch.Tensor, unused: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad.contiguous(), q, k, v, out, lse, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, True,
            rng_state, unused, scale=scale)
        return dq, dk, dv

    @flash_varlen_backward.register_fake
    def _(grad, q, k, v, out, lse, cu_seqlens, max_seqlen, dropout_p, scale, rng_state, unused):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, max_seqlen, dropout_p, scale = inputs
        out, lse, rng_state, unused = output
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, rng_state, unused)
        ctx.max_seqlen, ctx.dropout_p, ctx.scale = max_seqlen, dropout_p, scale

    def backward(ctx, grad, *_):
        q, k, v, out, lse, cu_seqlens, rng_state, unused = ctx.saved_tensors
        dq, dk, dv = flash_varlen_backward(grad, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.dropout_p,
                                           ctx.scale, rng_state, unused)
        return dq, dk, dv, None, None, None, None

    flash_varlen.register_autograd(backward, setup_context=setup_context)
    return flash_varlen


_FLASH_OP = None


def flash_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Causal attention of packed examples with dropout on the attention probabilities (FlashAttention-2).

    Each of the n examples (tokens ``cu_seqlens[i]:cu_seqlens[i+1]`` of the flattened batch) attends
    causally to itself only; each attention probability is zeroed with probability ``dropout_p`` and the
    others scaled by 1 / (1 - ``dropout_p``) (Srivastava et al. 2014, as ``nn.Dropout`` and SDPA do).
    The backward pass regenerates the forward's dropout mask from the random seed and offset the
    forward recorded (Dao 2023, FlashAttention-2, § 3.1): one custom operator, ``lorasum::flash_varlen``,
    so ``torch.compile`` treats it as opaque and a CUDA graph replay draws a new mask each time.

    Args:
        q, k, v: (T, H, D) float16 or bfloat16 on a CUDA device with FlashAttention-2 (sm80 or newer),
            T the total number of tokens, H heads (keys and values repeated to H for grouped-query
            attention), D ≤ 256.
        cu_seqlens: (n + 1,) int32 on the same device: 0, the end of each example, T.
        max_seqlen: the longest example (tokens).
        dropout_p: probability in [0, 1).
        scale: the softmax scale (default 1/√D).

    Returns:
        (T, H, D), the dtype of ``q``.

    Raises:
        RuntimeError: no FlashAttention-2 in this torch or on this device, or the inputs are outside
            what its kernels take (the message is torch's).
    """
    op = _FLASH_OP if _FLASH_OP is not None else _flash_op()
    scale = float(scale) if scale is not None else 1 / math.sqrt(q.shape[-1])
    return op(q, k, v, cu_seqlens, int(max_seqlen), float(dropout_p), scale)[0]


def _flash_op():
    """``lorasum::flash_varlen``, defined on first use. :func:`varlen_attention` defines it before the first
    forward pass: defined inside a compiled layer instead, it broke the layer's graph in two at the attention
    call for good and recompiled the attention once (GPT-2, 2026-12-06: 96 s of compilation against 61 s for
    the 30 layers of SmolLM2, which has no attention dropout).

    Raises:
        RuntimeError: this torch has no FlashAttention-2 operators.
    """
    global _FLASH_OP
    if _FLASH_OP is None:
        if not _flash_available():
            raise RuntimeError("this torch has no FlashAttention-2 operators (aten._flash_attention_forward)")
        _FLASH_OP = _define_flash_ops()
    return _FLASH_OP


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: (B, H, W, D) query, (B, H_kv, W, D) key and value → (B, W, H, D).

    ``dropout`` (the attention-probability dropout, 0 outside training) goes to :func:`flash_varlen_attention`
    on CUDA, to SDPA per example on the CPU."""
    if "cu_seq_lens_q" not in kwargs:
        raise RuntimeError(f"{VARLEN} attention needs the packed batch's boundaries (varlen_kwargs)")
    B, H, W, D = query.shape
    groups = H // key.shape[1]
    cu, longest = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    q = query.transpose(1, 2).reshape(B * W, H, D)
    k = key.transpose(1, 2).reshape(B * W, key.shape[1], D).repeat_interleave(groups, dim=1)
    v = value.transpose(1, 2).reshape(B * W, value.shape[1], D).repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else 1 / math.sqrt(D)
    call = _varlen_call() if q.is_cuda else None
    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    if dropout and q.is_cuda:
        out = flash_varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu.to(q.device), longest,
                                     dropout_p=dropout, scale=scale).to(query.dtype)
    elif call is not None and (call[2] or math.isclose(scale, 1 / math.sqrt(D))):
        varlen_attn, causal, has_scale = call
        extra = {"scale": scale} if has_scale else {}
        out = varlen_attn(q.to(dtype), k.to(dtype), v.to(dtype), cu.to(q.device), cu.to(q.device), longest, longest,
                          **causal, **extra).to(query.dtype)
    else:  # reference: each segment on its own
        bounds = cu.tolist()
        out = torch.cat([
            F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                           is_causal=True, scale=scale, dropout_p=dropout).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a])  # zero-length segments: static padding
    return out.reshape(B, W, H, D), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, _attention)


def varlen_supported(model: torch.nn.Module) -> bool:
    """Whether :func:`varlen_attention` applies: a CUDA model that uses transformers' SDPA attention and a
    torch with ``varlen_attn``; with attention dropout, also FlashAttention-2's operators
    (:func:`flash_varlen_attention`)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if has_attention_dropout(model) and not _flash_available():
        return False
    return next(model.parameters()).is_cuda and _varlen_call() is not None


def has_attention_dropout(model: torch.nn.Module) -> bool:
    """Whether ``model``'s config asks for dropout on the attention probabilities (``attn_pdrop``,
    ``attention_dropout`` > 0; GPT-2's default is 0.1); see :func:`attention_dropout`."""
    config = getattr(model, "config", None)
    return any(float(getattr(config, key, 0) or 0) > 0 for key in _DROPOUT_KEYS)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Set ``model.config._attn_implementation`` to ``name`` for the duration, then restore it."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


@contextlib.contextmanager
def varlen_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Use :data:`VARLEN` attention in ``model`` for the duration when ``enabled`` (yields whether it is on).

    Forward passes must then pass :func:`varlen_kwargs` of their packed batch; padded batches
    (with an attention mask) need the previous implementation back
    (:func:`attention_implementation`).
    """
    if not enabled:
        yield False
        return
    _register()
    if has_attention_dropout(model) and _flash_available():
        _flash_op()  # defined now, not while a compiled layer is traced
    with attention_implementation(model, VARLEN):
        yield True


@contextlib.contextmanager
def attention_dropout(model: torch.nn.Module, p: float | None) -> Iterator[None]:
    """Set the dropout probability on ``model``'s attention probabilities to ``p`` for the duration, then
    restore it (``None``: leave the model as it is).

    Sets the config fields ``attn_pdrop`` / ``attention_dropout`` and what transformers' attention modules
    read from them: ``attn_dropout`` (an ``nn.Dropout``, GPT-2) and the float ``attention_dropout`` (Llama
    and most others).

    Raises:
        ValueError: ``p`` is outside [0, 1), or ``model`` has neither (an architecture whose attention
            dropout lorasum does not know how to set).
    """
    if p is None:
        yield
        return
    if not 0 <= p < 1:
        raise ValueError(f"attention dropout {p}: must be in [0, 1)")
    saved: list[tuple[object, str, object]] = []
    config = getattr(model, "config", None)
    for key in _DROPOUT_KEYS:
        if config is not None and _is_number(getattr(config, key, None)):
            saved.append((config, key, getattr(config, key)))
    modules = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and name.rpartition(".")[2] == "attn_dropout":
            saved.append((m, "p", m.p))
            modules += 1
        elif _is_number(getattr(m, "attention_dropout", None)) and not isinstance(m, torch.nn.Dropout):
            saved.append((m, "attention_dropout", m.attention_dropout))
            modules += 1
    if not modules:
        raise ValueError(f"{type(model).__name__}: no attention dropout that lorasum can set (looked for "
                         "attn_dropout modules and attention_dropout attributes)")
    for obj, key, _ in saved:
        setattr(obj, key, float(p))
    try:
        yield
    finally:
        for obj, key, value in reversed(saved):
            setattr(obj, key, value)


def _is_number(value) -> bool:
    """An int or float (a config.json may hold ``0`` as well as ``0.0``), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
