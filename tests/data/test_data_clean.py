"""Text normalisation and duplicate removal."""

from __future__ import annotations

import unicodedata

from lorasum.data import Record, clean_records, dedup_key, deduplicate, normalize_text


def rec(i, q, a, context="", group=""):
    return Record(id=f"t/{i}", domain="d", question=q, answer=a, context=context, group=group)


def test_normalize_text_nfc_and_whitespace():
    decomposed = "Cafe\u0301  au\tlait\u00a0 "
    out = normalize_text(decomposed, keep_newlines=False)
    assert out == "Caf\u00e9 au lait" and unicodedata.is_normalized("NFC", out)
    assert normalize_text("  step 1 \r\n\r\n\r\n\r\n  step  2\r#### 3 ") == "step 1\n\nstep 2\n#### 3"
    assert normalize_text("a\n\n b", keep_newlines=False) == "a b"


def test_dedup_key_is_loose():
    assert dedup_key("What is (are) Flu ?", "Flu is an illness.") == dedup_key("what is are flu", "FLU IS AN ILLNESS")
    assert dedup_key("What is Flu?", "yes") != dedup_key("What is Flu?", "no")
    # the question/answer boundary matters
    assert dedup_key("a b", "c") != dedup_key("a", "b c")


def test_deduplicate_counts_and_keeps_first():
    records = [rec(0, "Q?", "A."), rec(1, "Q?", "A."), rec(2, "q", "a"), rec(3, "Other?", "A."), rec(4, "Q?", "A.", context="ctx")]
    kept, counts = deduplicate(records)
    assert [r.id for r in kept] == ["t/0", "t/3"]
    assert counts == {"exact_duplicates": 2, "normalized_duplicates": 1}
    assert len(records) == len(kept) + sum(counts.values())


def test_clean_records_normalises_then_dedups():
    records = [rec(0, " Q\u0301  ?", "line 1  \nline 2 "), rec(1, "Q\u0301 ?", "line 1\nline 2"), rec(2, "Empty?", " \n\t"),
               rec(3, "X?", "Y.", context=" row | 1 \n\n\n\ntext ")]
    kept, counts = clean_records(records)
    assert [r.id for r in kept] == ["t/0", "t/3"]
    assert kept[0].question == unicodedata.normalize("NFC", "Q\u0301 ?") and kept[0].answer == "line 1\nline 2"
    assert kept[1].context == "row | 1\n\ntext"
    assert counts == {"input": 4, "empty_after_cleaning": 1, "exact_duplicates": 1, "normalized_duplicates": 0, "output": 2}
