"""What cutting examples at max_length loses: per-example cut counts (Encoded), per-split counts, the
per-domain summary written to results.json, and the warning text of train and reproduce."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lorasum.data.lengths import domain_truncation, truncation_counts, truncation_warning
from lorasum.data.records import Record
from lorasum.data.tokenize import encode_record

# The tiny tokenizer maps every word to one token: <bos> (1) + context + "Question :" (2) + question
# + "Answer :" (2) + answer + eos (1).
CTX = "the patient is red and the dog is blue"  # 9 tokens
Q = "what is the dose"  # 4 tokens
A = "yes the dose is 10"  # 5 tokens (+ eos)
FULL = 1 + 9 + 2 + 4 + 2 + 5 + 1  # 24


def rec(context=CTX, question=Q, answer=A, rid="r0") -> Record:
    return Record(id=rid, domain="math", question=question, answer=answer, context=context)


@pytest.mark.parametrize(("max_length", "cuts"), [
    (FULL, (0, 0, 0)),
    (FULL - 4, (4, 0, 0)),  # the context's end only
    (FULL - 9, (9, 0, 0)),  # all the context
    (FULL - 11, (9, 2, 0)),  # then the answer's end: eos and "10"
    (6, (9, 5, 4)),  # then the question's beginning; one answer token kept
])
def test_encoded_says_what_was_cut(tiny_tokenizer, max_length, cuts):
    enc = encode_record(tiny_tokenizer, rec(), max_length=max_length)
    full = encode_record(tiny_tokenizer, rec(), max_length=None)
    assert (enc.context_cut, enc.answer_cut, enc.question_cut) == cuts
    assert enc.truncated == any(cuts)
    assert len(full.input_ids) - len(enc.input_ids) == sum(cuts)
    assert full.n_answer_tokens - enc.n_answer_tokens == enc.answer_cut


def test_cut_counts_are_left_out_of_equality(tiny_tokenizer):
    """Two examples with the same tokens and labels are equal (the train loop hashes and compares them)."""
    from dataclasses import replace

    enc = encode_record(tiny_tokenizer, rec(), max_length=FULL - 11)
    assert replace(enc, answer_cut=0, context_cut=0) == enc


def test_truncation_counts_split_answer_cuts_from_prompt_cuts(tiny_tokenizer):
    records = [rec(rid="whole", context=""),  # 15 tokens: fits
               rec(rid="ctx"),  # 24 tokens: loses 4 context tokens at 20
               rec(rid="ans", context="", answer=A + " " + " ".join(["apples"] * 10)),  # 25: loses 5 answer tokens
               rec(rid="both", answer=A + " apples")]  # 25: loses 5 context tokens
    counts = truncation_counts(records, tiny_tokenizer, 20)
    answer_tokens = 6 + 6 + 16 + 7
    assert counts == {"examples": 4, "truncated": 3, "answer_cut": 1, "prompt_only": 2, "question_cut": 0,
                      "answer_tokens": answer_tokens, "answer_tokens_cut": 5}
    assert truncation_counts([], tiny_tokenizer, 20)["examples"] == 0


def _domain(train, test, validation=(), long_rows=None):
    report = {"long_rows": long_rows or {"policy": "truncate"}}
    return SimpleNamespace(name="math", train=list(train), validation=list(validation), test=list(test),
                           report=report, max_length=None)


def test_domain_truncation_per_split(tiny_tokenizer):
    dd = _domain([rec(rid="a"), rec(rid="b", context="")], [rec(rid="c")])
    out = domain_truncation(dd, tiny_tokenizer, 20)
    assert out["max_length"] == 20 and out["long_rows"] == "truncate"
    assert set(out["splits"]) == {"train", "validation", "test"}
    assert out["splits"]["train"]["truncated"] == 1 and out["splits"]["train"]["examples"] == 2
    assert out["splits"]["test"]["truncated"] == 1 and out["splits"]["validation"]["examples"] == 0
    assert all(s["dropped"] == 0 for s in out["splits"].values())


def test_domain_truncation_windows_and_dropped(tiny_tokenizer):
    """Test examples scored in sliding windows are not cut; data.long_rows: drop counts the dropped ones."""
    drop = {"policy": "drop", "max_length": 20, "splits": {"train": {"input": 5, "too_long": 3, "output": 2}}}
    dd = _domain([rec(rid="a", context="")], [rec(rid="c")], long_rows=drop)
    out = domain_truncation(dd, tiny_tokenizer, 20, splits=("train", "test"), windows=("test",))
    assert out["long_rows"] == "drop" and set(out["splits"]) == {"train", "test"}
    assert out["splits"]["train"]["dropped"] == 3 and out["splits"]["train"]["truncated"] == 0
    assert out["splits"]["test"]["sliding_windows"] is True and out["splits"]["test"]["truncated"] == 0


def test_warning_names_count_share_what_was_cut_and_the_remedies(tiny_tokenizer):
    counts = {"examples": 40, "truncated": 24, "answer_cut": 20, "prompt_only": 4, "question_cut": 0,
              "answer_tokens": 2000, "answer_tokens_cut": 500}
    msg = truncation_warning("math", "train", counts, 128)
    assert "\n" not in msg
    assert msg.startswith("data math train: 24 of 40 examples (60.0 %) are longer than 128 tokens (data.max_length)")
    assert "20 lose the end of their answer (500 of the split's 2000 answer tokens, 25.0 %, never trained on)" in msg
    assert "4 lose only context or question tokens (their answer is whole)" in msg
    assert "raise data.max_length" in msg and "data.long_rows: drop to leave them out" in msg
    test = truncation_warning("math", "test", counts, 128, setting="custom_domains.x.max_length")
    assert "never scored" in test and "(custom_domains.x.max_length)" in test
    assert "--max-length" in truncation_warning("math", "train", counts, 128, flag="--max-length")


def test_warning_when_every_example_is_cut_and_none():
    every = {"examples": 8, "truncated": 8, "answer_cut": 0, "prompt_only": 8, "question_cut": 2,
             "answer_tokens": 80, "answer_tokens_cut": 0}
    msg = truncation_warning("finance", "validation", every, 128)
    assert "8 of 8 examples (100.0 %)" in msg and "8 lose only context or question tokens" in msg
    assert "2 of them also lose the beginning of their question" in msg
    assert "answer (" not in msg and "data.long_rows: drop would leave none" in msg
    assert truncation_warning("finance", "test", every | {"truncated": 0, "prompt_only": 0}, 128) is None
    assert truncation_warning("finance", "test", {"examples": 0, "truncated": 0}, 128) is None
