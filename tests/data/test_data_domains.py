"""Users' own domains (custom_domains in the config): schema, split roles, leak-free splits, counted removals."""

from __future__ import annotations

import json
import sys
import types

import pytest
from datafiles import write_jsonl

from lorasum.config import DomainSpec, ExperimentConfig, load_config
from lorasum.data import PRESETS, check_leakage, load_domain, load_domain_spec, load_domains
from lorasum.errors import ConfigError, DataError


def rows(n: int, tag: str, groups: int | None = None) -> list[dict]:
    return [{"q": f"{tag} question number {i}?", "a": f"{tag} answer {i}.", "doc": f"d{i % groups}" if groups else i}
            for i in range(n)]


def spec(*sources: dict, **kw) -> DomainSpec:
    return DomainSpec.model_validate({"sources": list(sources), **kw})


def src(path: str, split: str = "all", **kw) -> dict:
    return {"format": "tabular", "path": path, "split": split, "question_field": "q", "answer_field": "a", **kw}


def _splits(dd):
    return {"train": dd.train, "validation": dd.validation, "test": dd.test}


def test_yaml_custom_domain_loads_next_to_a_preset(fake_root, tmp_path):
    write_jsonl(fake_root / "my/legal.jsonl", rows(60, "legal", groups=20))
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(f"""
domains: [math, legal]
data: {{root: {fake_root}, split_seed: 2}}
custom_domains:
  legal:
    description: contract questions
    sources: [{{format: tabular, path: my/legal.jsonl, question_field: q, answer_field: a, group_field: doc}}]
    test_fraction: 0.2
    prompt_template: "{{context}}\\n\\nQ: {{question}}\\nA:"
    max_length: 64
""")
    cfg = load_config(cfg_path)
    data = load_domains(cfg)
    assert list(data) == ["math", "legal"]
    legal = data["legal"]
    assert legal.prompt_template == "{context}\n\nQ: {question}\nA:" and legal.max_length == 64
    assert data["math"].prompt_template is None and data["math"].max_length is None
    check_leakage(_splits(legal))
    groups = [{r.group for r in s} for s in (legal.train, legal.validation, legal.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(legal.test) >= round(0.2 * 60) and legal.report["test_fraction"] == 0.2
    assert legal.sources == [{"path": "my/legal.jsonl", "sha256": legal.sources[0]["sha256"], "records": 60,
                              "format": "tabular", "split": "all"}]
    assert load_domain("legal", fake_root, split_seed=2, custom_domains=cfg.custom_domains).content_hash == \
        legal.content_hash
    # the template travels with every record (to tokenisation), and is part of the data's identity
    assert {r.prompt_template for r in legal.train + legal.validation + legal.test} == {legal.prompt_template}
    assert {r.prompt_template for r in data["math"].train} == {None}
    plain = {"legal": cfg.custom_domains["legal"].model_copy(update={"prompt_template": None})}
    other = load_domain("legal", fake_root, split_seed=2, custom_domains=plain)
    assert [r.id for r in other.train] == [r.id for r in legal.train] and other.content_hash != legal.content_hash


def test_train_and_test_roles(fake_root):
    write_jsonl(fake_root / "a/train.jsonl", rows(30, "tr"))
    write_jsonl(fake_root / "a/test.jsonl", rows(8, "te"))
    dd = load_domain_spec("x", spec(src("a/train.jsonl", "train"), src("a/test.jsonl", "test")), fake_root)
    assert sorted(r.id for r in dd.test) == sorted(f"test/{i}" for i in range(8))
    assert {r.id.split("/")[0] for r in dd.train + dd.validation} == {"train"}
    assert dd.report["official_test"] is True and dd.report["test_fraction"] is None


def test_train_role_never_reaches_test(fake_root):
    write_jsonl(fake_root / "b/extra.jsonl", rows(40, "extra"))
    write_jsonl(fake_root / "b/main.jsonl", rows(40, "main"))
    dd = load_domain_spec("x", spec(src("b/extra.jsonl", "train"), src("b/main.jsonl", "all")), fake_root,
                          test_fraction=0.25)
    assert dd.test and all(r.id.startswith("main/") for r in dd.test)
    assert len(dd.test) == round(0.25 * 40)
    assert sum(r.id.startswith("extra/") for r in dd.train + dd.validation) == 40
    check_leakage(_splits(dd))


def test_all_role_goes_to_training_when_a_test_source_exists(fake_root):
    write_jsonl(fake_root / "c/pool.jsonl", rows(30, "pool"))
    write_jsonl(fake_root / "c/gold.jsonl", rows(5, "gold"))
    dd = load_domain_spec("x", spec(src("c/pool.jsonl"), src("c/gold.jsonl", "test")), fake_root)
    assert {r.id.split("/")[0] for r in dd.test} == {"gold"} and len(dd.train) + len(dd.validation) == 30


def test_duplicates_across_roles_leave_the_training_side(fake_root):
    train = rows(20, "t")
    test = rows(4, "s") + [{"q": train[3]["q"].upper() + "!!", "a": train[3]["a"], "doc": 0}]
    write_jsonl(fake_root / "d/train.jsonl", train + [train[0]])
    write_jsonl(fake_root / "d/test.jsonl", test)
    dd = load_domain_spec("x", spec(src("d/train.jsonl", "train"), src("d/test.jsonl", "test")), fake_root)
    assert len(dd.test) == 5 and len(dd.train) + len(dd.validation) == 19
    assert dd.report["removed"]["exact_duplicates"] == 1 and dd.report["removed"]["normalized_duplicates"] == 1


def test_every_removal_is_counted(fake_root):
    good = rows(50, "g", groups=10)
    bad_lines = [b"{not json\n", b'{"q": "x", "a": 5}\n', b'{"q": "no answer"}\n']
    extra = [{"q": "   ", "a": "blank question", "doc": "d0"}, {"q": "only question", "a": "", "doc": "d0"},
             dict(good[1]), {**good[2], "q": good[2]["q"].upper()}, {"q": "\u00a0 \t", "a": "x", "doc": "d1"}]
    path = fake_root / "e/all.jsonl"
    write_jsonl(path, good + extra)
    with path.open("ab") as fh:
        fh.writelines(bad_lines)
    s = spec(src("e/all.jsonl", group_field="doc"))
    with pytest.raises(DataError, match=r"all\.jsonl:56: malformed JSON"):
        load_domain_spec("x", s, fake_root)
    dd = load_domain_spec("x", s, fake_root, skip_bad_rows=True, train_size=20)
    rep = dd.report
    lines = len(good) + len(extra) + len(bad_lines)
    assert rep["removed"] == {"empty": 3, "bad_rows": 3, "empty_after_cleaning": 0, "exact_duplicates": 1,
                              "normalized_duplicates": 1}
    assert rep["loaded"] + rep["empty"] + rep["bad_rows"] == lines
    assert rep["cleaning"]["input"] == rep["loaded"]
    assert rep["cleaning"]["output"] == sum(rep["available"].values()) == rep["loaded"] - 2 == 50
    assert rep["sizes"]["train"] == len(dd.train) == 20 < rep["available"]["train"]
    assert len(rep["bad_row_examples"]) == 3


def test_id_collision_and_prefix(fake_root):
    write_jsonl(fake_root / "f1/data.jsonl", rows(10, "one"))
    write_jsonl(fake_root / "f2/data.jsonl", rows(10, "two"))
    with pytest.raises(DataError, match=r"record id data/0 occurs twice .*give the sources different id_prefix"):
        load_domain_spec("x", spec(src("f1/data.jsonl"), src("f2/data.jsonl")), fake_root)
    dd = load_domain_spec("x", spec(src("f1/data.jsonl"), src("f2/data.jsonl", id_prefix="f2")), fake_root)
    assert len(dd.train) + len(dd.validation) + len(dd.test) == 20


def test_paths_absolute_and_missing(fake_root, tmp_path):
    outside = write_jsonl(tmp_path / "elsewhere/qa.jsonl", rows(20, "abs"))
    dd = load_domain_spec("x", spec(src(str(outside))), fake_root)
    assert dd.sources[0]["path"] == str(outside)
    dd2 = load_domain_spec("x", spec(src(str(outside))), None)  # no data root needed for absolute paths
    assert dd2.content_hash == dd.content_hash
    with pytest.raises(DataError, match=r"nope\.jsonl: not found under data root .*LORASUM_DATA_ROOT"):
        load_domain_spec("x", spec(src("nope.jsonl")), fake_root)
    with pytest.raises(DataError, match=r"nope\.jsonl: not found$"):
        load_domain_spec("x", spec(src(str(tmp_path / "nope.jsonl"))), fake_root)


def test_names(fake_root):
    custom = {"legal": spec(src("x.jsonl"))}
    with pytest.raises(ConfigError, match="unknown domain 'law'; known domains: math, medicine, finance, pubmedqa, legal"):
        load_domain("law", fake_root, custom_domains=custom)
    with pytest.raises(ConfigError, match="unknown domain 'legal'"):
        load_domain("legal", fake_root)
    with pytest.raises(ConfigError, match="custom domain 'math' has the name of a preset"):
        load_domain("legal", fake_root, custom_domains={"math": PRESETS["math"], **custom})


def test_other_formats_in_custom_domains(fake_root, monkeypatch):
    write_jsonl(fake_root / "mq/train.jsonl", [{"Problem": f"p{i} ?", "Rationale": f'"r {i}"', "options": "a ) 1",
                                                "correct": "a"} for i in range(20)])
    fin = [{"question": f"q{i}?", "answer": f"a{i}", "context": f"c{i}", "ticker": f"T{i % 5}"} for i in range(30)]
    write_jsonl(fake_root / "fin/fin.jsonl", fin)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda path, name=None, split=None, revision=None: [{"q": f"h{i}", "a": "x"} for i in range(10)]))
    cfg = ExperimentConfig.model_validate({"domains": ["mq", "fin10k"], "data": {"root": str(fake_root)}, "custom_domains": {
        "mq": {"sources": [{"format": "mathqa", "path": "mq/train.jsonl", "split": "train"},
                           {"format": "hf", "path": "org/set", "hf_split": "test", "split": "test",
                            "question_field": "q", "answer_field": "a"}]},
        "fin10k": {"sources": [{"format": "financial_qa_10k", "path": "fin/fin.jsonl"}], "test_fraction": 0.2}}})
    data = load_domains(cfg)
    mq = data["mq"]
    assert [r.id for r in mq.test] == [f"org/set/test/{i}" for i in range(10)]
    assert mq.sources[1]["path"] == "hf:org/set" and mq.sources[1]["hf_split"] == "test"
    assert all(r.answer.startswith("r ") for r in mq.train)
    f = data["fin10k"]
    tickers = [{r.group for r in s} for s in (f.train, f.validation, f.test)]
    assert not (tickers[0] & tickers[2] or tickers[1] & tickers[2] or tickers[0] & tickers[1])


@pytest.mark.parametrize(
    "domain, fragment",
    [
        ({"sources": [{"format": "tabular", "path": "x", "split": "train"}]}, "no source with split test or all"),
        ({"sources": [{"format": "tabular", "path": "x", "split": "test"}]}, "no source with split train or all"),
        ({"sources": []}, "sources"),
        ({"sources": [{"format": "gsm8k", "path": "x", "question_field": "q"}]}, "question_field applies to formats"),
        ({"sources": [{"format": "tatqa", "path": "x", "id_prefix": "t"}]}, "id_prefix does not apply to tatqa"),
        ({"sources": [{"format": "tabular", "path": "x", "test_ids": "y"}]}, "test_ids applies to format pubmedqa"),
        ({"sources": [{"format": "tabular", "path": "x", "hf_split": "dev"}]}, "hf_split applies to format hf"),
        ({"sources": [{"format": "csv", "path": "x"}]}, "format"),
        ({"sources": [{"format": "tabular", "path": "x", "qfield": "q"}]}, "qfield"),
        ({"sources": [{"format": "tabular", "path": "x"}], "prompt_template": "Q: {questoin}"}, "unknown placeholder"),
        ({"sources": [{"format": "tabular", "path": "x"}], "prompt_template": "{question} {context}"},
         "{context} must come before {question}"),
        ({"sources": [{"format": "tabular", "path": "x"}], "prompt_template": "no fields"}, "needs {question}"),
        ({"sources": [{"format": "tabular", "path": "x"}], "max_length": 4}, "max_length"),
    ],
)
def test_bad_domain_schema(tmp_path, domain, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"custom_domains": {"legal": domain}}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "custom_domains.legal" in str(e.value) and fragment in str(e.value)


def test_bad_domain_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"custom_domains": {"../x": {"sources": [{"format": "tabular", "path": "x"}]}}}))
    with pytest.raises(ConfigError, match="custom_domains"):
        load_config(path)


def test_bad_data_options(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  long_rows: cut\n")
    with pytest.raises(ConfigError, match="data.long_rows"):
        load_config(path)
    path.write_text("data:\n  skip_bad_rows: maybe\n")
    with pytest.raises(ConfigError, match="data.skip_bad_rows"):
        load_config(path)


def test_reproduce_says_a_custom_domains_max_length_is_not_used(fake_root, tmp_path, caplog):
    """An experiment cuts every domain at data.max_length; a custom domain's own max_length (used by
    `lorasum train` on that domain alone) must not be dropped silently."""
    from lorasum.errors import ModelError
    from lorasum.experiment import run_experiment

    write_jsonl(fake_root / "my/legal.jsonl", rows(30, "legal"))
    cfg = ExperimentConfig.model_validate({
        "model": str(tmp_path / "no-such-model"), "domains": ["math", "legal"],
        "data": {"root": str(fake_root), "max_length": 48},
        "custom_domains": {"legal": {"sources": [src("my/legal.jsonl")], "max_length": 20}}})
    with caplog.at_level("WARNING", logger="lorasum"), pytest.raises(ModelError):
        run_experiment(cfg, tmp_path / "run", progress=False)  # the warning comes before the model load
    assert any("custom_domains.legal.max_length (20)" in r.getMessage() and "data.max_length (48)" in r.getMessage()
               for r in caplog.records)
