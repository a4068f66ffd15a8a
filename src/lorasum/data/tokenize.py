"""Prompts, token ids with answer-only labels, and padded batches.

An example is ``prompt + " " + answer + eos`` with

    prompt = "{context}\\n\\nQuestion: {question}\\nAnswer:"   (context part omitted when empty)

or the layout of the record's domain (``prompt_template`` of a custom domain, e.g.
``"### Context\\n{context}\\n### Question\\n{question}\\n### Answer\\n"``).

Labels are the input ids on answer tokens (and the final eos) and ``-100`` on prompt
tokens, so the loss and perplexity are the standard causal-LM NLL of the answer given
the prompt (labels are aligned with the inputs; the shift happens in the loss).
Note: the reference code of arXiv 2508.11985 instead fed question tokens as inputs
with answer tokens as labels at the same positions (padding included); we do not.

The prompt is tokenised in two pieces, the context and the rest
(``"\\n\\nQuestion: ...\\nAnswer:"``), wrapped in the special tokens the tokenizer adds
to a text (e.g. a BOS token); the answer is tokenised as ``" " + answer`` without
special tokens. Splitting at the context boundary lets an over-long example be cut at
token level. If an example has more than ``max_length`` tokens it is cut in this order:

1. the context's end (its beginning is kept);
2. the answer's end (the eos goes first; at least one answer token is kept);
3. the question's beginning (its last tokens, ending in ``"Answer:"``, are kept).

``loss_on="all"`` labels every token instead (the NLL of the whole text, prompt included).
``max_length=None`` keeps the whole example; :func:`sliding_windows` then cuts it into
overlapping windows that score each token once (for texts longer than the model context).
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from lorasum.data.records import Record

__all__ = [
    "format_prompt", "Encoded", "encode_record", "encode_records", "encode_record_lists", "collate", "sliding_windows",
    "IGNORE_INDEX", "LossOn",
]

#: Which tokens carry the loss: the answer (and eos) only, or every token of the example.
LossOn = Literal["answer", "all"]

#: Label of positions that carry no loss (prompt and padding), as in ``torch.nn.functional.cross_entropy``.
IGNORE_INDEX = -100


def _prompt_parts(record: Record) -> tuple[str, str]:
    """The prompt as (context piece, question piece); the context piece is the one cut first.

    Built-in layout: ``(context, "\\n\\nQuestion: {question}\\nAnswer:")``, the blank line only
    after a context. A record's own ``prompt_template``: the template's text up to and including
    ``{context}``, and the rest with ``{question}`` filled in (no ``{context}``: all of it is the
    question piece).
    """
    if record.prompt_template is None:
        return record.context, ("\n\n" if record.context else "") + f"Question: {record.question}\nAnswer:"
    before: list[str] = []
    after: list[str] = []
    seen_context = False
    for literal, name, _, _ in string.Formatter().parse(record.prompt_template):
        (after if seen_context else before).append(literal)
        if name == "context":
            seen_context = True
        elif name == "question":
            (after if seen_context else before).append(record.question)
    if not seen_context:
        return "", "".join(before)
    return "".join(before) + record.context, "".join(after)


def format_prompt(record: Record) -> str:
    """The prompt text: ``"{context}\\n\\nQuestion: {question}\\nAnswer:"`` (context omitted when
    empty), or the record's own ``prompt_template`` filled in."""
    context, question = _prompt_parts(record)
    return context + question


@dataclass(frozen=True)
class Encoded:
    """One tokenised example.

    Attributes:
        input_ids: prompt + answer (+ eos) token ids, length T <= max_length.
        labels: same length; the token id on answer positions, ``-100`` on prompt positions.
        truncated: True if the example was cut to fit ``max_length``.
        context_cut, question_cut, answer_cut: tokens cut from the context's end, the question's
            beginning and the answer's end (its eos included) to fit ``max_length``; 0 when not
            cut. What was lost, for the warnings and counts of :mod:`lorasum.data.lengths`; left
            out of ``==`` (two examples with the same tokens and labels are equal).
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    context_cut: int = field(default=0, compare=False)
    question_cut: int = field(default=0, compare=False)
    answer_cut: int = field(default=0, compare=False)

    @property
    def n_answer_tokens(self) -> int:
        """Number of labelled (answer) tokens."""
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _special_wrap(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (e.g. ([bos], [])), found on ``text``."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []  # the tokenizer rewrites the text itself; add no special tokens


def encode_record(
    tokenizer, record: Record, max_length: int | None, add_eos: bool = True, loss_on: LossOn = "answer"
) -> Encoded:
    """Tokenise one record into input ids and labels of at most ``max_length`` tokens.

    See the module docstring for the layout and the truncation order. ``max_length=None``:
    no truncation. ``loss_on="answer"`` (default): labels on the answer (and eos) only;
    ``"all"``: labels on every token (the first token is never scored: nothing precedes it).

    Raises:
        ValueError: ``max_length`` leaves no room for one question and one answer token,
            ``add_eos`` is set and the tokenizer has no eos token, or ``loss_on`` is unknown.
    """
    return encode_records(tokenizer, [record], max_length, add_eos=add_eos, loss_on=loss_on)[0]


def encode_records(
    tokenizer, records: list[Record], max_length: int | None, add_eos: bool = True, loss_on: LossOn = "answer"
) -> list[Encoded]:
    """:func:`encode_record` of each record, with one batched tokenizer call per text field.

    Identical to ``[encode_record(tokenizer, r, ...) for r in records]`` (tested), but a fast
    tokenizer encodes each list of texts in one call (in parallel, in Rust), which is several
    times faster on large evaluation sets.

    Raises:
        ValueError: as :func:`encode_record`.
    """
    if loss_on not in ("answer", "all"):
        raise ValueError(f"loss_on must be 'answer' or 'all', not {loss_on!r}")
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos token; pass add_eos=False")
    if not records:
        return []
    prefix, suffix = _special_wrap(tokenizer, "Question: x\nAnswer:")
    eos = [tokenizer.eos_token_id] if add_eos else []

    def ids(texts: list[str]) -> list[list[int]]:
        memo = _SHARED.get(id(tokenizer)) if _SHARED else None
        if memo is None or memo[0] is not tokenizer:
            return tokenizer(texts, add_special_tokens=False)["input_ids"]
        known = memo[1]
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known.update(zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]))
        return [known[t] for t in texts]

    parts = [_prompt_parts(r) for r in records]
    with_context = [i for i, (c, _) in enumerate(parts) if c]
    contexts: list[list[int]] = [[] for _ in records]
    for i, c in zip(with_context, ids([parts[i][0] for i in with_context]) if with_context else []):
        contexts[i] = c
    questions = ids([q for _, q in parts])
    answers = ids([" " + r.answer for r in records])
    return [_assemble(prefix, suffix, c, q, a + eos, max_length, loss_on)
            for c, q, a in zip(contexts, questions, answers)]


#: id(tokenizer) -> (tokenizer, {text: token ids}) while :func:`shared_tokenization` is active
_SHARED: dict[int, tuple[object, dict[str, list[int]]]] = {}


@contextlib.contextmanager
def shared_tokenization(tokenizer) -> Iterator[None]:
    """For the duration, :func:`encode_records` tokenises each distinct text field once for ``tokenizer``
    and reuses its ids (an experiment tokenises the same records to count truncation, to train each of its
    adapters, to validate and to evaluate: four to five times; 14 s of a 2-core CPU for ``configs/paper.yaml``).
    The ids are those the tokenizer gives (same call, ``add_special_tokens=False``); the cache is dropped on
    exit. Nested use for the same tokenizer shares one cache."""
    key = id(tokenizer)
    if key in _SHARED and _SHARED[key][0] is tokenizer:
        yield
        return
    _SHARED[key] = (tokenizer, {})
    try:
        yield
    finally:
        _SHARED.pop(key, None)


def encode_record_lists(
    tokenizer, record_lists: list[list[Record]], max_length: int | None, add_eos: bool = True,
    loss_on: LossOn = "answer",
) -> list[list[Encoded]]:
    """:func:`encode_records` of each list, each distinct record tokenised once however many lists hold it.

    Records are matched by identity (the same :class:`Record` object), as when the merged-data
    adapters of an experiment take the records of the single-domain ones: the 21 adapters of
    ``configs/paper.yaml`` hold each training record 12 times. Lists of the result share the
    :class:`Encoded` objects of a shared record (they are frozen).

    Raises:
        ValueError: as :func:`encode_records`.
    """
    index: dict[int, int] = {}
    unique: list[Record] = []
    for records in record_lists:
        for r in records:
            if id(r) not in index:
                index[id(r)] = len(unique)
                unique.append(r)
    encoded = encode_records(tokenizer, unique, max_length, add_eos=add_eos, loss_on=loss_on)
    return [[encoded[index[id(r)]] for r in records] for records in record_lists]


def _assemble(prefix: list[int], suffix: list[int], context: list[int], question: list[int], answer: list[int],
              max_length: int | None, loss_on: LossOn) -> Encoded:
    """Lay out and cut one example (the module docstring's order); ``answer`` includes the eos."""
    fixed = len(prefix) + len(suffix)
    if max_length is None:
        max_length = fixed + len(context) + len(question) + len(answer)
    if fixed + 2 > max_length:
        raise ValueError(f"max_length={max_length} is too small for {fixed} special tokens plus question and answer")
    excess = fixed + len(context) + len(question) + len(answer) - max_length
    truncated = excess > 0
    context_cut = answer_cut = question_cut = 0
    if excess > 0:  # 1. cut the context's end
        context_cut = min(excess, len(context))
        context, excess = context[: len(context) - context_cut], excess - context_cut
    if excess > 0:  # 2. cut the answer's end, keeping one token
        answer_cut = min(excess, max(len(answer) - 1, 0))
        answer, excess = answer[: len(answer) - answer_cut], excess - answer_cut
    if excess > 0:  # 3. keep the question's last tokens
        question_cut = excess
        question = question[excess:]

    prompt = prefix + context + question + suffix
    labels = list(prompt) if loss_on == "all" else [IGNORE_INDEX] * len(prompt)
    return Encoded(input_ids=prompt + answer, labels=labels + list(answer), truncated=truncated,
                   context_cut=context_cut, question_cut=question_cut, answer_cut=answer_cut)


def sliding_windows(example: Encoded, window: int, stride: int) -> list[Encoded]:
    """Cut a long example into windows of at most ``window`` tokens that start ``stride`` apart.

    Each labelled token at position ``p >= 1`` of ``example`` is scored in exactly one window,
    the first one that holds it at a window position ``>= 1`` and after the previous window's
    end, so it is predicted from at least ``min(p, window - stride)`` preceding tokens (the
    strided evaluation of fixed-length models, as in Hugging Face's "Perplexity of fixed-length
    models" guide). Windows with no token to score are left out. An example of at most
    ``window`` tokens is returned unchanged, as the only window.

    Raises:
        ValueError: not ``1 <= stride < window``.
    """
    if not 1 <= stride < window:
        raise ValueError(f"sliding window: need 1 <= stride < window, got stride={stride}, window={window}")
    n = len(example.input_ids)
    if n <= window:
        return [example]
    out, prev_end, begin = [], 1, 0  # position 0 is never scored
    while prev_end < n:
        end = min(begin + window, n)
        first = max(prev_end, begin + 1)  # scored positions: [first, end)
        labels = [IGNORE_INDEX] * (first - begin) + example.labels[first:end]
        if any(t != IGNORE_INDEX for t in labels):
            out.append(replace(example, input_ids=example.input_ids[begin:end], labels=labels))
        prev_end, begin = end, begin + stride
    return out


def collate(batch: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into tensors.

    Returns:
        ``input_ids`` (B, T) int64, padded with ``pad_token_id``; ``attention_mask`` (B, T)
        int64, 1 on real tokens and 0 on padding; ``labels`` (B, T) int64, ``-100`` on prompt
        tokens and wherever ``attention_mask == 0``. T is the longest example in the batch.
        Padding is marked only by the attention mask, so ``pad_token_id`` may equal the eos id.

    Raises:
        ValueError: an empty batch.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
