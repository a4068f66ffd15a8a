"""Token lengths, percentiles, truncation rate and dropping over-long rows (data.long_rows: drop)."""

from __future__ import annotations

import statistics

import pytest

from datafiles import write_jsonl

from lorasum.config import DomainSpec, SourceSpec
from lorasum.data import drop_long_records, length_summary, load_domain, token_lengths
from lorasum.data.lengths import describe_domain
from lorasum.data.records import Record
from lorasum.data.tokenize import encode_record, format_prompt
from lorasum.errors import ConfigError


def _manual_length(tok, r: Record) -> int:
    """Prompt with the tokenizer's special tokens + ' answer' + eos, tokenised independently."""
    return len(tok(format_prompt(r))["input_ids"]) + len(tok(" " + r.answer, add_special_tokens=False)["input_ids"]) + 1


def _records(n: int) -> list[Record]:
    return [Record(id=f"r{i}", domain="d", question="what is " + "the " * i + "sum ?", answer="4 " * (1 + i % 3),
                   context="the cat is red . " * (i % 2)) for i in range(n)]


def test_token_lengths_match_an_independent_count(tiny_tokenizer):
    recs = _records(12)
    assert token_lengths(recs, tiny_tokenizer) == [_manual_length(tiny_tokenizer, r) for r in recs]


def test_length_summary_against_statistics():
    lengths = [5, 9, 13, 2, 40, 41, 7, 7, 100, 3, 8]
    s = length_summary(lengths, max_length=10)
    q = statistics.quantiles(lengths, n=100, method="inclusive")  # the same definition as numpy's default
    assert s["p50"] == pytest.approx(q[49]) and s["p90"] == pytest.approx(q[89]) and s["p99"] == pytest.approx(q[98])
    assert s["max"] == 100 and s["mean"] == pytest.approx(statistics.fmean(lengths))
    assert s["over_max_length"] == 4 and s["truncation_rate"] == pytest.approx(4 / 11)
    assert length_summary(lengths)["truncation_rate"] is None
    assert length_summary([], 10) == dict.fromkeys(["p50", "p90", "p99", "max", "mean", "over_max_length",
                                                     "truncation_rate"])


def test_drop_long_records_keeps_exactly_the_short_ones(tiny_tokenizer):
    recs = _records(15)
    lengths = [_manual_length(tiny_tokenizer, r) for r in recs]
    limit = sorted(lengths)[7]
    kept, counts = drop_long_records(recs, tiny_tokenizer, limit)
    assert kept == [r for r, n in zip(recs, lengths) if n <= limit]
    assert counts == {"input": 15, "too_long": sum(n > limit for n in lengths), "output": len(kept)}
    assert all(not encode_record(tiny_tokenizer, r, limit).truncated for r in kept)
    with pytest.raises(ConfigError, match="max_length must be positive"):
        drop_long_records(recs, tiny_tokenizer, 0)


def test_load_domain_drops_long_rows_before_subsampling(fake_root, tiny_tokenizer):
    write_jsonl(fake_root / "var.jsonl", [{"question": "what is " + "the " * (i % 17) + "sum ?", "answer": f"{i % 10}"}
                                          for i in range(60)])
    custom = {"var": DomainSpec(sources=[SourceSpec(format="tabular", path="var.jsonl")])}
    full = load_domain("var", fake_root, custom_domains=custom)
    assert full.report["long_rows"] == {"policy": "truncate"}
    lengths = {r.id: _manual_length(tiny_tokenizer, r) for r in full.train + full.validation + full.test}
    limit = sorted(lengths.values())[len(lengths) // 2]
    dd = load_domain("var", fake_root, custom_domains=custom, long_rows="drop", tokenizer=tiny_tokenizer,
                     max_length=limit, train_size=10)
    for split in ("train", "validation", "test"):
        kept_ids = {r.id for r in getattr(full, split) if lengths[r.id] <= limit}
        assert {r.id for r in getattr(dd, split)} <= kept_ids
        assert dd.report["long_rows"]["splits"][split]["too_long"] == len(getattr(full, split)) - len(kept_ids)
    assert len(dd.train) == 10 and dd.report["long_rows"]["max_length"] == limit
    assert dd.report["removed"]["too_long"] == sum(n > limit for n in lengths.values()) > 0
    own = {"var": DomainSpec(sources=custom["var"].sources, max_length=limit + 2)}  # the domain's limit wins
    dd2 = load_domain("var", fake_root, custom_domains=own, long_rows="drop", tokenizer=tiny_tokenizer, max_length=9)
    assert dd2.report["long_rows"]["max_length"] == limit + 2


def test_drop_needs_tokenizer_and_known_policy(fake_root):
    with pytest.raises(ConfigError, match="long_rows: drop needs a tokenizer and a max_length"):
        load_domain("math", fake_root, long_rows="drop", max_length=64)
    with pytest.raises(ConfigError, match="long_rows must be 'truncate' or 'drop'"):
        load_domain("math", fake_root, long_rows="cut")


def test_describe_domain(fake_root, tiny_tokenizer):
    dd = load_domain("medicine", fake_root)
    plain = describe_domain(dd)
    assert plain["splits"]["all"]["records"] == len(dd.train) + len(dd.validation) + len(dd.test)
    assert plain["splits"]["test"]["groups"] == len({r.group for r in dd.test})
    assert all(row["tokens"] is None for row in plain["splits"].values())
    assert plain["removed"]["empty_answers"] == 8 and plain["duplicates_removed"] == 0
    t = describe_domain(dd, tiny_tokenizer, max_length=16)
    want = [_manual_length(tiny_tokenizer, r) for r in dd.test]
    assert t["splits"]["test"]["tokens"]["max"] == max(want)
    assert t["splits"]["test"]["tokens"]["over_max_length"] == sum(n > 16 for n in want)
