"""Hostile adapter folders fed to ``lorasum compose`` and ``lorasum similarity``.

Every case must give exit code 2 and one stderr line naming the bad file, without a
traceback, and a failed ``compose --overwrite`` must leave the existing --out folder
byte for byte as it was (no temporaries left next to it either).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch

from lorasum.adapters import load_adapter
from lorasum.errors import AdapterError
from hostile_fixtures import (
    GPT2_MODULES, IS_ROOT, assert_user_error, existing_output, lora_tensors, run_cli, snapshot, write_adapter,
)

W, C = "adapter_model.safetensors", "adapter_config.json"
KEY_A = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
KEY_B = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"


def _tensors(**changes) -> dict:
    t = lora_tensors(GPT2_MODULES)
    for key, value in changes.items():
        if value is None:
            t.pop({"A": KEY_A, "B": KEY_B}[key])
        else:
            t[{"A": KEY_A, "B": KEY_B}.get(key, key)] = value
    return t


def _raw_safetensors(path: Path, header: dict, data: bytes = b"", size: int | None = None) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)
        if size is not None:
            fh.truncate(8 + len(raw) + size)


# -- the corpus: name -> builder(folder) returning (file the error must name, fragment of the message) -----


def truncated(p):
    write_adapter(p)
    data = (p / W).read_bytes()
    (p / W).write_bytes(data[: len(data) // 2])
    return p / W, "cannot read safetensors"


def corrupted_header(p):
    write_adapter(p)
    data = bytearray((p / W).read_bytes())
    data[8:40] = b"\xff\x00garbage{{{{[[[[" * 2
    (p / W).write_bytes(bytes(data))
    return p / W, "cannot read safetensors"


def header_claims_huge_tensor(p):
    write_adapter(p, tensors={})
    _raw_safetensors(p / W, {KEY_A: {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}},
                     b"\0" * 64)
    return p / W, "more than this machine's memory"


def header_offsets_beyond_file(p):
    write_adapter(p, tensors={})
    header = {KEY_A: {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]},
              KEY_B: {"dtype": "F32", "shape": [96, 2], "data_offsets": [256, 1024]}}
    _raw_safetensors(p / W, header, b"\0" * 64)
    return p / W, "cannot read safetensors"


def header_shape_overflow(p):
    write_adapter(p, tensors={})
    _raw_safetensors(p / W, {KEY_A: {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 16]}},
                     b"\0" * 16)
    return p / W, "more than this machine's memory"


def header_length_huge(p):
    write_adapter(p, tensors={})
    (p / W).write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    return p / W, "cannot read safetensors"


def empty_weights(p):
    write_adapter(p, tensors={})
    (p / W).write_bytes(b"")
    return p / W, "cannot read safetensors"


def int_lora_a(p):
    write_adapter(p, tensors=_tensors(A=torch.randint(0, 5, (2, 32))))
    return p / W, "non-float"


def bool_lora_b(p):
    write_adapter(p, tensors=_tensors(B=torch.ones(96, 2, dtype=torch.bool)))
    return p / W, "non-float"


def nan_in_b(p):
    write_adapter(p, tensors=_tensors(B=torch.full((96, 2), math.nan)))
    return p / W, "NaN or Inf"


def inf_in_a(p):
    a = torch.randn(2, 32)
    a[1, 3] = math.inf
    write_adapter(p, tensors=_tensors(A=a))
    return p / W, "NaN or Inf"


def ranks_of_a_and_b_differ(p):
    write_adapter(p, tensors=_tensors(B=torch.randn(96, 3)))
    return p / W, "rows (rank)"


def three_d_factor(p):
    write_adapter(p, tensors=_tensors(A=torch.randn(2, 32, 1)))
    return p / W, "2-D"


def missing_lora_b(p):
    write_adapter(p, tensors=_tensors(B=None))
    return p / W, "no lora_B"


def no_lora_tensors(p):
    write_adapter(p, tensors={"unrelated": torch.zeros(1)})
    return p / W, "not a LoRA factor"


def config_malformed_json(p):
    write_adapter(p)
    (p / C).write_text('{"peft_type": "LORA", "r": 2,')
    return p / C, "malformed JSON"


def config_invalid_utf8(p):
    write_adapter(p)
    (p / C).write_bytes(b'{"peft_type": "LORA", "r": 2, "note": "\xff\xfe"}')
    return p / C, "invalid UTF-8"


def config_is_a_list(p):
    write_adapter(p)
    (p / C).write_text("[1, 2, 3]")
    return p / C, "expected a JSON object"


def config_r_is_a_string(p):
    write_adapter(p, config={"r": "2"})
    return p / C, "r must be a positive integer"


def config_negative_r(p):
    write_adapter(p, config={"r": -2})
    return p / C, "r must be a positive integer"


def config_alpha_nan(p):
    write_adapter(p)
    (p / C).write_text((p / C).read_text().replace('"lora_alpha": 4', '"lora_alpha": NaN'))
    return p / C, "lora_alpha must be a finite number"


def config_unknown_semantic_key(p):
    write_adapter(p, config={"use_magic_mixing": True})
    return p / C, "unknown field 'use_magic_mixing'"


def config_rank_pattern_bad_regex(p):
    write_adapter(p, config={"rank_pattern": {"c_attn(": 2}})
    return p / C, "regular expression"


def config_rank_pattern_wrong_type(p):
    write_adapter(p, config={"rank_pattern": {"c_attn": "two"}})
    return p / C, "rank_pattern"


def config_rslora_wrong_type(p):
    write_adapter(p, config={"use_rslora": "yes"})
    return p / C, "use_rslora must be true or false"


def config_pissa_init(p):
    write_adapter(p, config={"init_lora_weights": "pissa"})
    return p / C, "init_lora_weights='pissa' is refused"


def config_dora(p):
    write_adapter(p, config={"use_dora": True})
    return p / C, "DoRA"


def config_nested_too_deep(p):
    write_adapter(p)
    (p / C).write_text("[" * 200_000 + "]" * 200_000)
    return p / C, "nested too deeply"


def config_rank_disagrees_with_tensors(p):
    write_adapter(p, config={"r": 3})
    return p / W, "r=3"


def config_missing(p):
    write_adapter(p)
    (p / C).unlink()
    return p / C, "missing"


def pickle_only(p):
    write_adapter(p, tensors={})
    (p / W).unlink()
    torch.save(lora_tensors(GPT2_MODULES), p / "adapter_model.bin")
    return p / "adapter_model.bin", "--allow-pickle"


def folder_is_a_file(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("not a folder")
    return p, "is a file, not an adapter folder"


def config_is_a_folder(p):
    write_adapter(p)
    (p / C).unlink()
    (p / C).mkdir()
    return p / C, "expected a file, found a folder"


def weights_is_a_folder(p):
    write_adapter(p, tensors={})
    (p / W).unlink()
    (p / W).mkdir()
    return p / W, "expected a file, found a folder"


def folder_symlink_loop(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(p.name + "-b", p)
    os.symlink(p.name, p.with_name(p.name + "-b"))
    return p, "symlink loop"


def config_symlink_loop(p):
    write_adapter(p)
    (p / C).unlink()
    os.symlink(C, p / C)
    return p / C, "symlink loop"


def folder_missing(p):
    return p, "not found"


def config_too_large(p):
    write_adapter(p)
    (p / C).write_bytes(b'{"peft_type": "LORA", "pad": "' + b"x" * (17 << 20) + b'"}')
    return p / C, "too large"


CASES = {f.__name__: f for f in (
    truncated, corrupted_header, header_claims_huge_tensor, header_offsets_beyond_file, header_shape_overflow,
    header_length_huge, empty_weights, int_lora_a, bool_lora_b, nan_in_b, inf_in_a, ranks_of_a_and_b_differ,
    three_d_factor, missing_lora_b, no_lora_tensors, config_malformed_json, config_invalid_utf8, config_is_a_list,
    config_r_is_a_string, config_negative_r, config_alpha_nan, config_unknown_semantic_key,
    config_rank_pattern_bad_regex, config_rank_pattern_wrong_type, config_rslora_wrong_type, config_pissa_init,
    config_dora, config_nested_too_deep, config_rank_disagrees_with_tensors, config_missing, pickle_only,
    folder_is_a_file, config_is_a_folder, weights_is_a_folder, folder_symlink_loop, config_symlink_loop,
    folder_missing, config_too_large,
)}


@pytest.fixture
def good(tmp_path):
    return write_adapter(tmp_path / "good", seed=1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_compose_refuses_and_keeps_existing_output(case, tmp_path, good, capsys):
    bad = tmp_path / "bad"
    named, fragment = CASES[case](bad)
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", good, bad, "--out", out, "--overwrite"], capsys)
    assert_user_error(rc, err, named, fragment)
    assert snapshot(out) == before, "a failed compose changed the existing --out folder"


@pytest.mark.parametrize("case", sorted(CASES))
def test_similarity_refuses(case, tmp_path, good, capsys):
    bad = tmp_path / "bad"
    named, fragment = CASES[case](bad)
    plot = tmp_path / "heat.png"
    rc, out, err = run_cli(["similarity", good, bad, "--plot", plot], capsys)
    assert_user_error(rc, err, named, fragment)
    assert out == "" and not plot.exists()


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode")
def test_unreadable_config(tmp_path, good, capsys):
    bad = write_adapter(tmp_path / "bad")
    (bad / C).chmod(0)
    try:
        rc, _, err = run_cli(["compose", good, bad, "--out", tmp_path / "o"], capsys)
    finally:
        (bad / C).chmod(0o644)
    assert_user_error(rc, err, bad / C, "Permission denied")


def test_permission_denied_is_one_line_even_as_root(tmp_path, good, capsys, monkeypatch):
    """The same refusal as the chmod 000 case, simulated so that it also runs as root."""
    bad = write_adapter(tmp_path / "bad")
    real = Path.read_bytes

    def denied(self):
        if self.name == C and self.parent == bad:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    rc, _, err = run_cli(["similarity", good, bad], capsys)
    assert_user_error(rc, err, bad / C, "Permission denied")


def test_sparse_file_claiming_a_terabyte_is_refused_without_allocating(tmp_path, good, capsys):
    """A sparse file whose size matches a header claiming 1 TB of float32: safetensors accepts the
    header, lorasum must refuse from the header alone (no read, no allocation, at once)."""
    bad = write_adapter(tmp_path / "bad", tensors={})
    n = 1 << 40
    header = {KEY_A: {"dtype": "F32", "shape": [2, n // 8], "data_offsets": [0, n]},
              KEY_B: {"dtype": "F32", "shape": [96, 2], "data_offsets": [n, n + 768]}}
    _raw_safetensors(bad / W, header, size=n + 768)
    rss0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    rc, _, err = run_cli(["compose", good, bad, "--out", tmp_path / "o"], capsys)
    assert_user_error(rc, err, bad / W, "more than this machine's memory")
    assert time.perf_counter() - t0 < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: nothing was read
    assert not (tmp_path / "o").exists()


def test_pickle_only_loads_with_allow_pickle(tmp_path, good, capsys):
    """--allow-pickle reads adapter_model.bin (torch.load weights_only=True) to the same ΔW as the tensors saved."""
    from lorasum.adapters import load_adapter

    bad = tmp_path / "pkl"
    pickle_only(bad)
    rc, _, err = run_cli(["compose", "--allow-pickle", good, bad, "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    tensors = torch.load(bad / "adapter_model.bin", weights_only=True)
    summed = load_adapter(tmp_path / "o")
    g = load_adapter(good)
    for m in GPT2_MODULES:
        a = tensors[f"base_model.model.{m}.lora_A.weight"].double()
        b = tensors[f"base_model.model.{m}.lora_B.weight"].double()
        expected = g.factors[m].delta().double() + 2.0 * (b @ a)  # lora_alpha / r = 4 / 2
        torch.testing.assert_close(summed.factors[m].delta().double(), expected, rtol=1e-5, atol=1e-6)


def test_informational_and_off_unknown_keys_are_accepted(tmp_path, good, capsys):
    """Keys that do not change ΔW (task_type, lora_dropout, an unknown key set to null/false) load fine."""
    ok = write_adapter(tmp_path / "ok", config={"lora_dropout": 0.3, "task_type": "SEQ_2_SEQ_LM",
                                                "future_variant_flag": False, "future_config": None})
    rc, _, err = run_cli(["compose", good, ok, "--out", tmp_path / "o"], capsys)
    assert rc == 0, err


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("targets, accepted", [
    (["c_attn", "c_proj"], True),  # PEFT's suffix match
    (["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", "c_proj"], True),  # full names too
    (r".*\.attn\.(c_attn|c_proj)", True),  # a string is a regular expression over the whole name
    ("all-linear", True),  # PEFT's shorthand: resolved against the model, nothing to check here
    (["c_attn"], False),  # c_proj factors that PEFT would not load
    (["nonexistent_proj"], False),
    (r"c_attn", False),  # a regex must match the whole module name
])
def test_target_modules_must_name_every_module_of_the_weights(tmp_path, targets, accepted, capsys):
    """An adapter_config.json whose target_modules leaves out modules of the weights is refused the same way by
    similarity and compose (eval crashed with PEFT's NoMatchingPeftModuleError; compose wrote other targets)."""
    bad = write_adapter(tmp_path / "a", config={"target_modules": targets})
    other = write_adapter(tmp_path / "b", seed=1)
    for args in (["similarity", bad, other], ["compose", bad, other, "--out", tmp_path / "out"]):
        rc, _, err = run_cli(args, capsys)
        if accepted:
            assert rc == 0, err
        else:
            assert_user_error(rc, err, bad / "adapter_config.json", "does not name module")
        shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_target_modules_of_the_wrong_type_or_a_bad_regex_are_refused(tmp_path):
    for i, (targets, fragment) in enumerate([({"c_attn": 1}, "must be a list of module names"),
                                             ([1, 2], "must be a list of module names"),
                                             ("c_attn(", "is not a regular expression")]):
        bad = write_adapter(tmp_path / f"a{i}", config={"target_modules": targets})
        with pytest.raises(AdapterError, match=re.escape(fragment)):
            load_adapter(bad)
