"""Hostile data files (``lorasum data stats``, ``lorasum train``) and experiment configs
(``lorasum reproduce``): invalid UTF-8, wrong JSON types, XML entity bombs, folders where files
belong, symlink loops, unknown keys, negative ranks, path-escaping names, YAML alias bombs."""

from __future__ import annotations

import json
import os
import time

import pytest

from hostile_fixtures import assert_user_error, existing_output, run_cli, snapshot, write_gsm8k
from lorasum.errors import ConfigError
from lorasum.storage import safe_name
from tiny_models import save_tiny_gpt2

GSM = "gsm8k/grade_school_math/data"
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Document id="1"><QAPairs><QAPair pid="1"><Question>q</Question><Answer>&lol9;</Answer></QAPair></QAPairs></Document>
"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Document id="1"><QAPairs><QAPair pid="1"><Question>q</Question><Answer>&x;</Answer></QAPair></QAPairs></Document>
"""


# -- data: name -> builder(root) returning (domain, file the error must name, fragment) ----------------

def gsm8k_invalid_utf8(root):
    write_gsm8k(root, train=b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    return "math", root / GSM / "train.jsonl", "UTF-8"


def gsm8k_wrong_types(root):
    write_gsm8k(root, train=b'{"question": 5, "answer": ["#### 1"]}\n' * 3)
    return "math", root / GSM / "train.jsonl", "train.jsonl"


def gsm8k_truncated_json(root):
    write_gsm8k(root, train=b'{"question": "How many?", "answ')
    return "math", root / GSM / "train.jsonl", "train.jsonl"


def gsm8k_empty_file(root):
    write_gsm8k(root, train=b"")
    return "math", root / GSM / "train.jsonl", "empty"


def gsm8k_folder_for_file(root):
    write_gsm8k(root)
    (root / GSM / "train.jsonl").unlink()
    (root / GSM / "train.jsonl").mkdir()
    return "math", root / GSM / "train.jsonl", "folder"


def gsm8k_symlink_loop(root):
    write_gsm8k(root)
    (root / GSM / "train.jsonl").unlink()
    os.symlink("train.jsonl", root / GSM / "train.jsonl")
    return "math", root / GSM / "train.jsonl", "train.jsonl"


def medquad_billion_laughs(root):
    (root / "medquad" / "1_Bomb").mkdir(parents=True)
    (root / "medquad" / "1_Bomb" / "bomb.xml").write_bytes(BILLION_LAUGHS)
    return "medicine", root / "medquad" / "1_Bomb" / "bomb.xml", "unsafe XML refused"


def medquad_external_entity(root):
    (root / "medquad" / "1_X").mkdir(parents=True)
    (root / "medquad" / "1_X" / "xxe.xml").write_bytes(XXE)
    return "medicine", root / "medquad" / "1_X" / "xxe.xml", "unsafe XML refused"


def medquad_malformed_xml(root):
    (root / "medquad" / "1_X").mkdir(parents=True)
    (root / "medquad" / "1_X" / "bad.xml").write_bytes(b"<Document><QAPairs><QAPair>")
    return "medicine", root / "medquad" / "1_X" / "bad.xml", "XML"


def tatqa_truncated(root):
    folder = root / "tatqa" / "dataset_raw"
    folder.mkdir(parents=True)
    (folder / "tatqa_dataset_dev.json").write_text('[{"table": {"uid": "t", "table": [["a"]]}, "paragr')
    (folder / "tatqa_dataset_test_gold.json").write_text("[]")
    return "finance", folder / "tatqa_dataset_dev.json", "JSON"


def tatqa_wrong_types(root):
    folder = root / "tatqa" / "dataset_raw"
    folder.mkdir(parents=True)
    (folder / "tatqa_dataset_dev.json").write_text(json.dumps({"not": "a list"}))
    (folder / "tatqa_dataset_test_gold.json").write_text("[]")
    return "finance", folder / "tatqa_dataset_dev.json", "tatqa_dataset_dev.json"


DATA_CASES = {f.__name__: f for f in (
    gsm8k_invalid_utf8, gsm8k_wrong_types, gsm8k_truncated_json, gsm8k_empty_file, gsm8k_folder_for_file,
    gsm8k_symlink_loop, medquad_billion_laughs, medquad_external_entity, medquad_malformed_xml, tatqa_truncated,
    tatqa_wrong_types,
)}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_data_refuses_bad_file(case, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    domain, named, fragment = DATA_CASES[case](root)
    t0 = time.perf_counter()
    rc, out, err = run_cli(["data", "stats", "--no-tokens", "--domains", domain, "--data-root", root], capsys)
    assert_user_error(rc, err, named, fragment)
    assert time.perf_counter() - t0 < 20 and out == ""


def test_data_root_is_a_file(tmp_path, capsys):
    (tmp_path / "root.txt").write_text("x")
    rc, _, err = run_cli(["data", "stats", "--no-tokens", "--domains", "math", "--data-root",
                          tmp_path / "root.txt"], capsys)
    assert_user_error(rc, err, tmp_path / "root.txt", "data folder")


def test_train_refuses_bad_data_and_keeps_existing_output(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    _, named, fragment = gsm8k_invalid_utf8(root)
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["train", "--domain", "math", "--model", tmp_path / "unused", "--data-root", root,
                          "--out", out, "--overwrite", "--device", "cpu"], capsys)
    assert_user_error(rc, err, named, fragment)
    assert snapshot(out) == before


# -- experiment configs: name -> (YAML bytes, fragment) ------------------------------------------------

YAML_BOMB = b"""a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
domains: *h
"""
CONFIG_CASES = {
    "invalid_utf8": (b"name: caf\xe9\ndomains: [math, medicine]\n", "UTF-8"),
    "unknown_key": (b"domains: [math, medicine]\nlora: {r: 4, rnak: 8}\n", "rnak"),
    "negative_rank": (b"domains: [math, medicine]\nlora: {r: -4}\n", "lora.r"),
    "wrong_type": (b"domains: [math, medicine]\nseeds: abc\n", "seeds"),
    "not_a_mapping": (b"- math\n- medicine\n", "mapping"),
    "yaml_syntax": (b"domains: [math, medicine\n", "YAML"),
    "yaml_alias_bomb": (YAML_BOMB, "config.yaml"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_reproduce_refuses_bad_config(case, tmp_path, capsys):
    text, fragment = CONFIG_CASES[case]
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(text)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    rc, _, err = run_cli(["reproduce", "--config", cfg, "--out", out], capsys)
    assert_user_error(rc, err, cfg, fragment)
    assert time.perf_counter() - t0 < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"], "nothing may be written"


def test_config_is_a_folder_or_missing(tmp_path, capsys):
    out, before = existing_output(tmp_path)
    (tmp_path / "cfg.yaml").mkdir()
    rc, _, err = run_cli(["reproduce", "--config", tmp_path / "cfg.yaml", "--out", out], capsys)
    assert_user_error(rc, err, tmp_path / "cfg.yaml")
    rc, _, err = run_cli(["reproduce", "--config", tmp_path / "nope.yaml", "--out", out], capsys)
    assert_user_error(rc, err, tmp_path / "nope.yaml", "not found")
    assert snapshot(out) == before


def test_path_escaping_domain_name_writes_nothing_outside_the_run(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("LORASUM_DATA_ROOT", str(tmp_path / "data"))
    cfg = tmp_path / "config.yaml"
    model = save_tiny_gpt2(tmp_path / "model")
    cfg.write_text(f"domains: [../../escape, math]\nmodel: {model}\ndevice: cpu\n")
    rc, _, err = run_cli(["reproduce", "--config", cfg, "--out", tmp_path / "runs" / "x"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "../../escape" in err, err
    outside = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")} - {"config.yaml", "data"}
    assert all(p.startswith(("runs/x", "model")) or p == "runs" for p in outside), outside
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "a..b", "", "a b", "x\0y", "é", "a" * 201,
                                  "/abs", "a\\b"])
def test_safe_name_refuses(name):
    with pytest.raises(ConfigError, match="name"):
        safe_name(name)


@pytest.mark.parametrize("name", ["math", "sum-math+medicine", "merged-a+b+c", "seed_0", "v1.2", "A-Z_0+9"])
def test_safe_name_accepts(name):
    assert safe_name(name) == name
