"""lorasum.data.tokenize: prompt layout, answer-only labels, padding and truncation rules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorasum.data.records import Record
from lorasum.data.tokenize import Encoded, collate, encode_record, format_prompt, sliding_windows

IGNORE = -100


def rec(question="what is 2 plus 2 ?", answer="4 apples", context="", rid="r0") -> Record:
    return Record(id=rid, domain="math", question=question, answer=answer, context=context)


def test_format_prompt_with_and_without_context():
    assert format_prompt(rec(context="the cat")) == "the cat\n\nQuestion: what is 2 plus 2 ?\nAnswer:"
    assert format_prompt(rec()) == "Question: what is 2 plus 2 ?\nAnswer:"


@pytest.mark.parametrize("context", ["", "the patient is red"])
def test_labels_are_ignore_exactly_on_prompt(tiny_tokenizer, context):
    r = rec(context=context)
    enc = encode_record(tiny_tokenizer, r, max_length=64)
    prompt = tiny_tokenizer(format_prompt(r))["input_ids"]  # with <bos>, as the tokenizer adds it
    answer = tiny_tokenizer(" " + r.answer, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert prompt[0] == tiny_tokenizer.bos_token_id
    assert enc.input_ids == prompt + answer
    assert enc.labels == [IGNORE] * len(prompt) + answer
    assert not enc.truncated
    assert enc.n_answer_tokens == len(answer)


def test_no_eos_when_not_asked(tiny_tokenizer):
    enc = encode_record(tiny_tokenizer, rec(), max_length=64, add_eos=False)
    assert enc.input_ids[-1] != tiny_tokenizer.eos_token_id
    assert enc.labels[-2:] == enc.input_ids[-2:]


def test_collate_pads_right_and_masks_by_attention_not_token_id(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.pad_token_id == eos  # padding cannot be found from the token id
    # an answer that itself contains eos ids (e.g. a model whose eos is a common token)
    odd = Encoded(input_ids=[1, 5, 6, eos, 7, eos], labels=[IGNORE, IGNORE, IGNORE, eos, 7, eos])
    short = Encoded(input_ids=[1, 5, eos], labels=[IGNORE, IGNORE, eos])
    out = collate([short, odd], pad_token_id=eos)
    assert {k: v.shape for k, v in out.items()} == {k: torch.Size([2, 6]) for k in out}
    assert all(v.dtype == torch.long for v in out.values())
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert out["input_ids"].tolist() == [[1, 5, eos, eos, eos, eos], odd.input_ids]
    assert out["labels"].tolist() == [[IGNORE, IGNORE, eos, IGNORE, IGNORE, IGNORE], odd.labels]
    assert bool((out["labels"][out["attention_mask"] == 0] == IGNORE).all())


def test_collate_rejects_empty_batch():
    with pytest.raises(ValueError):
        collate([], pad_token_id=0)


# The tiny tokenizer maps every word to one token, so lengths are easy to count:
# <bos> (1) + context words + "Question :" (2) + question words + "Answer :" (2) + answer words + eos.
CTX = "the patient is red and the dog is blue"  # 9 tokens
Q = "what is the dose"  # 4 tokens
A = "yes the dose is 10"  # 5 tokens (+ eos)


def parts(tok, enc: Encoded) -> tuple[list[str], list[str]]:
    toks = tok.convert_ids_to_tokens(enc.input_ids)
    n_prompt = sum(1 for t in enc.labels if t == IGNORE)
    return toks[:n_prompt], toks[n_prompt:]


def test_no_truncation_at_exact_fit(tiny_tokenizer):
    full = 1 + 9 + 2 + 4 + 2 + 6
    enc = encode_record(tiny_tokenizer, rec(Q, A, CTX), max_length=full)
    assert len(enc.input_ids) == full and not enc.truncated


def test_truncation_cuts_context_end_first(tiny_tokenizer):
    enc = encode_record(tiny_tokenizer, rec(Q, A, CTX), max_length=24 - 4)
    prompt, answer = parts(tiny_tokenizer, enc)
    assert enc.truncated and len(enc.input_ids) == 20
    assert prompt == ["<bos>", "the", "patient", "is", "red", "and", "Question", ":", *Q.split(), "Answer", ":"]
    assert answer == [*A.split(), "<eos>"]


def test_truncation_then_cuts_answer_tail(tiny_tokenizer):
    enc = encode_record(tiny_tokenizer, rec(Q, A, CTX), max_length=1 + 2 + 4 + 2 + 3)
    prompt, answer = parts(tiny_tokenizer, enc)
    assert prompt == ["<bos>", "Question", ":", *Q.split(), "Answer", ":"]
    assert answer == ["yes", "the", "dose"]  # eos and tail gone, beginning kept


def test_truncation_keeps_question_tail_and_one_answer_token(tiny_tokenizer):
    enc = encode_record(tiny_tokenizer, rec(Q, A, CTX), max_length=6)
    prompt, answer = parts(tiny_tokenizer, enc)
    assert len(enc.input_ids) == 6
    assert prompt == ["<bos>", "the", "dose", "Answer", ":"]
    assert answer == ["yes"]


def test_max_length_too_small_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError):
        encode_record(tiny_tokenizer, rec(), max_length=2)


WORD = st.sampled_from(["the", "dose", "is", "red", "cat", "10", "yes", "no"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ctx=st.lists(WORD, max_size=12),
    q=st.lists(WORD, min_size=1, max_size=8),
    a=st.lists(WORD, min_size=1, max_size=8),
    max_length=st.integers(3, 40),
)
def test_truncation_invariants(tiny_tokenizer, ctx, q, a, max_length):
    tok = tiny_tokenizer  # not mutated, safe to share between examples
    r = rec(" ".join(q), " ".join(a), " ".join(ctx))
    enc = encode_record(tok, r, max_length=max_length)
    full = encode_record(tok, r, max_length=10_000)
    assert len(enc.input_ids) == len(enc.labels) == min(max_length, len(full.input_ids))
    assert enc.truncated == (len(full.input_ids) > max_length)
    n_prompt, f_prompt = enc.labels.count(IGNORE), full.labels.count(IGNORE)
    answer, full_answer = enc.input_ids[n_prompt:], full.input_ids[f_prompt:]
    assert enc.labels[n_prompt:] == answer and len(answer) >= 1
    assert answer == full_answer[: len(answer)]  # the answer keeps its beginning
    prompt, fprompt = enc.input_ids[:n_prompt], full.input_ids[:f_prompt]
    assert prompt[0] == tok.bos_token_id
    q_part = fprompt[1 + len(ctx) :]  # "Question : <q> Answer :"
    kept_ctx = len(prompt) - 1 - len(q_part)
    if kept_ctx >= 0:  # the question part is whole; the context keeps its beginning
        assert prompt[1 : 1 + kept_ctx] == fprompt[1 : 1 + kept_ctx]
        assert prompt[1 + kept_ctx :] == q_part
    else:  # the question part was cut: its last tokens remain, with one answer token
        assert prompt[1:] == q_part[-(len(prompt) - 1) :]
        assert len(answer) == 1
    if len(answer) < len(full_answer):  # the answer is cut only once the context is gone
        assert kept_ctx <= 0


def test_loss_on_all_labels_every_token_and_keeps_truncation(tiny_tokenizer):
    r = rec(Q, A, CTX)
    for max_length in (64, 12):
        answer_only = encode_record(tiny_tokenizer, r, max_length)
        every = encode_record(tiny_tokenizer, r, max_length, loss_on="all")
        assert every.input_ids == answer_only.input_ids and every.truncated == answer_only.truncated
        assert every.labels == every.input_ids
    with pytest.raises(ValueError, match="loss_on"):
        encode_record(tiny_tokenizer, r, 64, loss_on="prompt")


def test_max_length_none_keeps_everything(tiny_tokenizer):
    r = rec(Q, A, " ".join([CTX] * 20))
    enc = encode_record(tiny_tokenizer, r, None)
    assert not enc.truncated and len(enc.input_ids) == 1 + 9 * 20 + 2 + 4 + 2 + 6
    assert enc == encode_record(tiny_tokenizer, r, 10_000)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 60),
    window=st.integers(2, 20),
    data=st.data(),
)
def test_sliding_windows_score_each_labelled_token_once(n, window, data):
    stride = data.draw(st.integers(1, window - 1))
    scored = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    ids = list(range(1000, 1000 + n))  # distinct ids: a window token's id gives its position
    labels = [i if s else IGNORE for i, s in zip(ids, scored)]
    windows = sliding_windows(Encoded(input_ids=ids, labels=labels), window, stride)
    seen = []
    for w in windows:
        assert 1 <= len(w.input_ids) <= window and len(w.labels) == len(w.input_ids)
        begin = w.input_ids[0] - 1000
        assert w.input_ids == ids[begin : begin + len(w.input_ids)]  # a contiguous slice ...
        assert begin % stride == 0  # ... starting on the stride grid
        assert w.labels[0] == IGNORE or n <= window
        for j, t in enumerate(w.labels):
            if t != IGNORE and j >= 1:
                assert t == ids[begin + j]
                assert begin + j < window or j >= window - stride  # context: at least window - stride tokens
                seen.append(begin + j)
    assert sorted(seen) == seen == [p for p in range(1, n) if scored[p]]  # once each, in order


def test_sliding_windows_rejects_bad_stride():
    e = Encoded(input_ids=[1, 2, 3], labels=[1, 2, 3])
    for stride in (0, 4, 5):
        with pytest.raises(ValueError, match="stride"):
            sliding_windows(e, 4, stride)


@pytest.mark.parametrize("loss_on", ["answer", "all"])
@pytest.mark.parametrize("max_length", [None, 64, 12])
def test_batched_encoding_equals_one_record_at_a_time(tiny_tokenizer, loss_on, max_length):
    from lorasum.data.tokenize import encode_records

    recs = [Record(id=f"r{i}", domain="d", question=q, answer=a, context=c) for i, (q, a, c) in enumerate([
        ("what is the dose ?", "the dose is 5", ""),
        ("how many apples are left ?", "10 apples are left each day", "the cat and the dog eat 2 apples " * 3),
        ("which stock ?", "the bond", "the market price"),
        ("is the sun red ?", "no", ""),
    ])]
    together = encode_records(tiny_tokenizer, recs, max_length, loss_on=loss_on)
    alone = [encode_records(tiny_tokenizer, [r], max_length, loss_on=loss_on)[0] for r in recs]
    assert together == alone
    assert any(e.truncated for e in together) == (max_length == 12)
    assert encode_records(tiny_tokenizer, [], 64) == []


def test_record_lists_encode_each_shared_record_once(tiny_tokenizer, monkeypatch):
    """encode_record_lists equals encode_records of each list; a record held by several lists (the same
    object, as the merged-data adapters hold the single-domain records) is tokenised once and shared;
    an equal but distinct record is encoded on its own."""
    from lorasum.data import tokenize

    recs = [Record(id=f"r{i}", domain="d", question=f"question {i} ?", answer=f"answer {i}" * (i + 1))
            for i in range(5)]
    twin = Record(id="r0", domain="d", question="question 0 ?", answer="answer 0")
    lists = [recs[:2], recs[2:], recs[:2] + recs[3:], [], [recs[4], twin]]
    calls = []
    real = tokenize.encode_records
    monkeypatch.setattr(tokenize, "encode_records", lambda tok, r, *a, **k: calls.append(len(r)) or real(tok, r, *a, **k))
    got = tokenize.encode_record_lists(tiny_tokenizer, lists, 12)
    assert calls == [6]  # five distinct records and the twin, in one call
    assert got == [real(tiny_tokenizer, rs, 12) for rs in lists]
    assert got[2][0] is got[0][0] and got[4][0] is got[1][2] and got[4][1] is not got[0][0]


@pytest.mark.parametrize("template,context,want", [
    ("{context}\n\nQ: {question}\nA:", "the cat", "the cat\n\nQ: is the sun red ?\nA:"),
    ("Q: {question} A:", "the cat", "Q: is the sun red ? A:"),  # no {context}: the context is not shown
    ("[{{note}}] {context} | {question} =>", "", "[{note}]  | is the sun red ? =>"),  # literal braces
])
def test_domain_prompt_template_is_used_for_the_prompt(tiny_tokenizer, template, context, want):
    from dataclasses import replace

    rec = Record(id="r", domain="d", question="is the sun red ?", answer="no", context=context,
                 prompt_template=template)
    assert format_prompt(rec) == want
    e = encode_record(tiny_tokenizer, rec, None)
    n_prompt = sum(1 for t in e.labels if t == -100)
    prompt_ids = tiny_tokenizer(want)["input_ids"]  # the template's text, tokenised as one piece
    assert e.input_ids[:n_prompt] == prompt_ids or tiny_tokenizer.decode(e.input_ids[:n_prompt]) == \
        tiny_tokenizer.decode(prompt_ids)
    builtin = encode_record(tiny_tokenizer, replace(rec, prompt_template=None), None)
    assert builtin.input_ids[n_prompt:] != [] and e.input_ids[n_prompt:] == builtin.input_ids[-len(e.input_ids[n_prompt:]):]


def test_domain_prompt_template_context_is_cut_first(tiny_tokenizer):
    rec = Record(id="r", domain="d", question="is the sun red ?", answer="no the sun is blue",
                 context="the cat and the dog eat 2 apples " * 4, prompt_template="{context}\nQ: {question}\nA:")
    full = encode_record(tiny_tokenizer, rec, None)
    cut = encode_record(tiny_tokenizer, rec, len(full.input_ids) - 5)
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) - 5
    assert cut.labels[-6:] == full.labels[-6:]  # the answer is whole
    assert tiny_tokenizer.decode(cut.input_ids).endswith(tiny_tokenizer.decode(full.input_ids[-12:]))


def test_shared_tokenization_tokenises_each_text_once_and_changes_no_id(tiny_tokenizer):
    """Inside ``shared_tokenization`` a text field met again is not sent to the tokenizer; the examples equal
    those encoded without it (cut at other lengths, other loss_on); outside, every call tokenises again."""
    import unittest.mock

    from lorasum.data import tokenize

    recs = [Record(id=f"r{i}", domain="d", question=f"question {i % 3} ?", answer=f"answer {i}" * (i + 1),
                   context="the cat " * i) for i in range(6)]
    keys = [(m, on) for m in (None, 12) for on in ("answer", "all")]
    sent = []
    real = type(tiny_tokenizer).__call__

    def spy(self, texts, *a, **k):
        if isinstance(texts, list):  # the batched calls of the text fields (not the special-token probe)
            sent.extend(texts)
        return real(self, texts, *a, **k)

    with unittest.mock.patch.object(type(tiny_tokenizer), "__call__", spy):
        want = {key: tokenize.encode_records(tiny_tokenizer, recs, key[0], loss_on=key[1]) for key in keys}
        fields = set(sent)  # every text field of the records
        assert len(sent) == 4 * (5 + 6 + 6) and len(fields) == 15  # 5 contexts, 6 questions (4 distinct), 6 answers
        sent.clear()
        with tokenize.shared_tokenization(tiny_tokenizer):
            with tokenize.shared_tokenization(tiny_tokenizer):  # nested: the same cache
                got = {key: tokenize.encode_records(tiny_tokenizer, recs, key[0], loss_on=key[1]) for key in keys}
            again = tokenize.encode_records(tiny_tokenizer, recs[:2], 12)
        assert got == want and again == want[(12, "answer")][:2]
        assert sorted(sent) == sorted(fields)  # each distinct text once
        sent.clear()
        tokenize.encode_records(tiny_tokenizer, recs, 12)  # the cache is gone
        assert set(sent) == fields
    assert not tokenize._SHARED
