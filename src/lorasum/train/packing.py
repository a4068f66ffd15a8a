"""Sequence packing: several examples in one row, with no attention or loss across them.

A micro-batch of tokenised examples is laid out in rows of ``row_length`` tokens
(first-fit decreasing). Each example keeps its own positions ``0 .. len-1`` (``position_ids``
restart at every example), which transformers (>= 4.53, ``masking_utils``) turns into a
block-diagonal causal mask when no 2D attention mask and no KV cache are passed
(``use_cache=False``: with a cache, transformers does not look for packed sequences): a token
attends only to the earlier tokens of its own example. The label of an example's first token is ``-100``, so no
token is predicted from the previous example; the tail of a row is padding with its own
positions (its own block) and labels ``-100``. The per-example NLL is therefore that of the
unpacked, right-padded batch (``tests/train/test_train_packing.py`` checks it to 1e-5 in float32).

:func:`packing_is_exact` checks, on the model at hand, that its attention honours the
restarted ``position_ids`` (an architecture that ignores them would let examples see each
other); callers fall back to padded batches (:func:`lorasum.data.tokenize.collate`) when not.
"""

from __future__ import annotations

import weakref

import torch

from lorasum.data.tokenize import IGNORE_INDEX, Encoded
from lorasum.evaluate.nll import fast_attention

__all__ = ["pack", "pack_rows", "packing_is_exact"]

_ROW_MULTIPLE = 64  # rows are padded to a multiple of this (fewer distinct shapes for kernels and compile)
_EXACT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pack_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """Assign examples to rows of at most ``row_length`` tokens, first-fit decreasing.

    Args:
        lengths: tokens of each example.
        row_length: row capacity; raised to ``max(lengths)`` if smaller.

    Returns:
        Example indices of each row, in the order they are laid out (every index exactly once).
    """
    cap = max([row_length, *lengths])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if slot is None:
            rows.append([])
            free.append(cap)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= lengths[i]
    return rows


def pack(examples: list[Encoded], row_length: int, pad_token_id: int,
         groups: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Pack a micro-batch into rows (see the module docstring).

    Rows are as few as first-fit decreasing into ``row_length`` gives, and as narrow as that
    number allows (the examples are spread evenly over them).

    Returns:
        ``input_ids``, ``position_ids``, ``labels``: (R, W) int64, W the fullest row rounded
        up to a multiple of 64 (at most ``max(row_length, longest example)`` rounded so);
        no ``attention_mask`` (the model must get None, so it reads the blocks from
        ``position_ids``). With ``groups`` (one int >= 0 per example, e.g. the adapter it
        trains), also ``groups`` (R, W) int64: each token's group, -1 on padding.
        Real tokens: ``sum(len(e.input_ids))``; labelled tokens: those of
        the examples except each example's first token.

    Raises:
        ValueError: an empty batch.
    """
    if not examples:
        raise ValueError("pack: empty batch")
    lengths = [len(e.input_ids) for e in examples]
    rows = pack_rows(lengths, row_length)
    # balance: the narrowest rows (multiple of 64) that still need no more rows than that
    cap = max(max(lengths), -(-sum(lengths) // len(rows)))
    while len(rows) > 1 and cap < row_length:
        cap = -(-cap // _ROW_MULTIPLE) * _ROW_MULTIPLE
        narrower = pack_rows(lengths, cap)
        if len(narrower) == len(rows):
            rows = narrower
            break
        cap += _ROW_MULTIPLE
    fill = max(sum(lengths[i] for i in row) for row in rows)
    width = -(-fill // _ROW_MULTIPLE) * _ROW_MULTIPLE
    ids, pos, lab, grp = [], [], [], []
    for row in rows:
        r_ids, r_pos, r_lab, r_grp = [], [], [], []
        for i in row:
            e = examples[i]
            r_ids += e.input_ids
            r_pos += range(len(e.input_ids))
            r_lab += [IGNORE_INDEX] + e.labels[1:]
            if groups is not None:
                r_grp += [groups[i]] * len(e.input_ids)
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_token_id] * pad)
        pos.append(r_pos + list(range(pad)))
        lab.append(r_lab + [IGNORE_INDEX] * pad)
        grp.append(r_grp + [-1] * pad)
    out = {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(pos), "labels": torch.tensor(lab)}
    if groups is not None:
        out["groups"] = torch.tensor(grp)
    return out


@torch.no_grad()
def _probe(model: torch.nn.Module) -> bool:
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(vocab, (2, 6), generator=gen)
    c = torch.randint(vocab, (5,), generator=gen)
    input_ids = torch.stack([torch.cat([a, c]), torch.cat([b, c])]).to(device)
    position_ids = torch.cat([torch.arange(6), torch.arange(5)]).expand(2, -1).to(device)
    with fast_attention(device):
        logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False).logits
        alone = model(input_ids=input_ids[:1, 6:], use_cache=False).logits[0].float()
    logits = logits.float()
    seen = (logits[0, :6] - logits[1, :6]).abs().max()  # the two first examples differ ...
    leak = (logits[0, 6:] - logits[1, 6:]).abs().max()  # ... the shared second one must not
    off = (logits[0, 6:] - alone).abs().max()  # and it matches the example run alone (loosely: bf16 on GPU)
    return bool(seen > 0) and bool(leak <= 1e-4 * seen) and bool(off <= 5e-2 * alone.abs().max())


def packing_is_exact(model: torch.nn.Module) -> bool:
    """Whether ``model`` keeps packed examples apart when given restarted ``position_ids``.

    Runs the model once (eval mode, no grad, two rows of 11 tokens): two rows hold different
    first examples followed by the same second example; the second example's logits must not
    depend on the first. The answer is cached per model object.

    Args:
        model: a transformers causal LM (not a PEFT wrapper; LoRA layers may be injected).
    """
    if model not in _EXACT:
        was_training = model.training
        model.eval()
        try:
            _EXACT[model] = _probe(model)
        except (TypeError, ValueError, RuntimeError):  # no position_ids argument, or another failure
            _EXACT[model] = False
        finally:
            model.train(was_training)
    return _EXACT[model]
