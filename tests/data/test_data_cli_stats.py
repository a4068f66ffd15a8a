"""``lorasum data stats`` on the tiny fake data root and a tiny tokenizer folder; load_tokenizer."""

from __future__ import annotations

import json

import pytest
from datafiles import write_jsonl

from lorasum.cli import main
from lorasum.data import load_domain
from lorasum.data.tokenize import encode_record
from lorasum.models import load_tokenizer
from tiny_models import save_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def _run(capsys, *argv):
    rc = main(["data", "stats", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_counts_match_load_domain(fake_root, capsys):
    rc, out, _ = _run(capsys, "--data-root", str(fake_root), "--domains", "math,medicine", "--no-tokens",
                      "--format", "json", "--split-seed", "3")
    assert rc == 0
    got = json.loads(out)
    assert got["model"] is None and list(got["domains"]) == ["math", "medicine"]
    for name in ("math", "medicine"):
        dd = load_domain(name, fake_root, split_seed=3)
        st = got["domains"][name]
        for split in ("train", "validation", "test"):
            recs = getattr(dd, split)
            assert st["splits"][split] == {"records": len(recs), "groups": len({r.split_key for r in recs}),
                                           "tokens": None}
        assert st["content_hash"] == dd.content_hash and st["removed"] == dd.report["removed"]


def test_token_columns_with_a_model_folder(fake_root, tiny_model_dir, capsys):
    rc, out, _ = _run(capsys, "--data-root", str(fake_root), "--domains", "finance,math", "--model",
                      str(tiny_model_dir), "--max-length", "20", "--format", "json")
    assert rc == 0
    st = json.loads(out)["domains"]["finance"]
    tok = load_tokenizer(str(tiny_model_dir))
    dd = load_domain("finance", fake_root)
    lengths = [len(encode_record(tok, r, None).input_ids) for r in dd.test]
    t = st["splits"]["test"]["tokens"]
    assert t["max"] == max(lengths) and t["over_max_length"] == sum(n > 20 for n in lengths)
    assert st["max_length"] == 20
    rc, out, _ = _run(capsys, "--data-root", str(fake_root), "--domains", "finance", "--model", str(tiny_model_dir),
                      "--max-length", "20")
    lines = out.splitlines()
    assert lines[0].split() == ["domain", "split", "records", "groups", "dups", "other", "p50", "p90", "p99", "max",
                                "limit", "trunc"]
    test_row = next(line.split() for line in lines if line.startswith("finance    test"))
    assert test_row[2] == str(len(dd.test)) and test_row[-1] == f"{100 * t['truncation_rate']:.1f}%"


def test_load_tokenizer_sets_pad(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.pad_token is not None and tok("what is")["input_ids"]


def test_config_custom_domain_and_bad_rows(fake_root, tmp_path, capsys):
    path = write_jsonl(fake_root / "own/qa.jsonl", [{"q": f"question {i}?", "a": f"answer {i}."} for i in range(30)])
    with path.open("a") as fh:
        fh.write('{"q": "broken", "a": \n')
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"domains: [math, own]\ndata: {{root: {fake_root}}}\ncustom_domains:\n"
                   "  own: {sources: [{format: tabular, path: own/qa.jsonl, question_field: q, answer_field: a}]}\n")
    rc, _, err = _run(capsys, "--config", str(cfg), "--no-tokens")
    assert rc == 2 and err.startswith("lorasum: error: ") and f"{path}:31: malformed JSON" in err
    rc, out, _ = _run(capsys, "--config", str(cfg), "--no-tokens", "--skip-bad-rows", "--format", "json")
    assert rc == 0
    own = json.loads(out)["domains"]["own"]
    assert own["removed"]["bad_rows"] == 1 and own["splits"]["all"]["records"] == 30
    rc, out, _ = _run(capsys, "--config", str(cfg), "--no-tokens", "--skip-bad-rows")
    all_row = next(line.split() for line in out.splitlines() if line.startswith("own        all"))
    assert all_row[2:6] == ["30", "30", "0", "1"]


def test_unknown_domain_and_missing_root(fake_root, tmp_path, capsys):
    rc, _, err = _run(capsys, "--data-root", str(fake_root), "--domains", "law", "--no-tokens")
    assert rc == 2 and "unknown domain 'law'; known domains: math, medicine, finance, pubmedqa" in err
    rc, _, err = _run(capsys, "--data-root", str(tmp_path / "none"), "--no-tokens")
    assert rc == 2 and "data folder does not exist" in err
