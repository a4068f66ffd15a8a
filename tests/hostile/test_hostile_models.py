"""Hostile base-model folders and adapters for ``lorasum eval`` and ``lorasum train``: missing,
pickle-only, corrupt or mismatched. Each gives exit 2 and one line naming the path; a failed
``train --overwrite`` leaves the existing adapter folder as it was."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from hostile_fixtures import (
    LLAMA_MODULES, assert_user_error, existing_output, run_cli, snapshot, write_adapter, write_gsm8k,
)
from tiny_models import save_tiny_gpt2

SMALL = ["--test-size", "2", "--max-length", "32", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_gsm8k(tmp_path_factory.mktemp("data"))


def _copy(tiny_model, dst):
    return shutil.copytree(tiny_model, dst)


def missing_folder(m, d):
    return d / "no" / "model", "no such model folder"


def pickle_only(m, d):
    p = _copy(m, d / "pkl")
    from safetensors.torch import load_file

    torch.save(load_file(p / "model.safetensors"), p / "pytorch_model.bin")
    (p / "model.safetensors").unlink()
    return p, "pickle weight files are refused"


def config_malformed(m, d):
    p = _copy(m, d / "cfg")
    (p / "config.json").write_text('{"model_type": "gpt2", ')
    return p, "cannot load"


def config_invalid_utf8(m, d):
    p = _copy(m, d / "cfg8")
    (p / "config.json").write_bytes(b'{"model_type": "gpt2", "n_embd": "\xff\xfe"}')
    return p, "cannot load"


def config_negative_size(m, d):
    p = _copy(m, d / "neg")
    cfg = json.loads((p / "config.json").read_text())
    cfg["n_embd"] = -32
    (p / "config.json").write_text(json.dumps(cfg))
    return p, "cannot load"


def config_unknown_architecture(m, d):
    p = _copy(m, d / "arch")
    (p / "config.json").write_text('{"model_type": "no_such_architecture"}')
    return p, "cannot load"


def weights_truncated(m, d):
    p = _copy(m, d / "trunc")
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) // 3])
    return p, "cannot load"


def tokenizer_invalid_utf8(m, d):
    p = _copy(m, d / "tok")
    (p / "tokenizer.json").write_bytes(b"\xff\xfe not json")
    return p, "cannot load"


def model_is_a_file(m, d):
    (d / "model.txt").write_text("hello")
    return d / "model.txt", "not a model folder"


def model_symlink_loop(m, d):
    os.symlink("loop", d / "loop")
    return d / "loop", "symlink loop"


def gguf_truncated(m, d):
    """A GGUF header (magic, version 3, 10 tensors, 5 metadata entries) cut off before its first entry: the
    gguf reader unpacks past the end (struct.error, an internal error before)."""
    import struct

    p = d / "cut.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10, 5) + b"\x01\x02")
    return p, "is truncated or not a GGUF file"


MODEL_CASES = {f.__name__: f for f in (
    missing_folder, pickle_only, config_malformed, config_invalid_utf8, config_negative_size,
    config_unknown_architecture, weights_truncated, tokenizer_invalid_utf8, model_is_a_file, model_symlink_loop,
    gguf_truncated,
)}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_eval_refuses_bad_model(case, tmp_path, tiny_model, data_root, capsys):
    model, fragment = MODEL_CASES[case](tiny_model, tmp_path)
    rc, out, err = run_cli(["eval", "--model", model, "--domain", "math", "--data-root", data_root, *SMALL], capsys)
    assert_user_error(rc, err, model, fragment)
    assert out == ""


@pytest.mark.parametrize("case", ["pickle_only", "weights_truncated"])
def test_train_refuses_bad_model_and_keeps_existing_output(case, tmp_path, tiny_model, data_root, capsys):
    model, fragment = MODEL_CASES[case](tiny_model, tmp_path)
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["train", "--domain", "math", "--model", model, "--data-root", data_root, "--out", out,
                          "--overwrite", "--max-steps", "1", *SMALL], capsys)
    assert_user_error(rc, err, model, fragment)
    assert snapshot(out) == before


def test_pickle_model_loads_with_allow_pickle(tmp_path, tiny_model):
    """--allow-pickle (lorasum.storage.allow_pickle) reads pytorch_model.bin to the same weights."""
    from lorasum.models import load_model
    from lorasum.storage import allow_pickle

    p, _ = pickle_only(tiny_model, tmp_path)
    with allow_pickle():
        model, _, _ = load_model(str(p), device="cpu")
    ref, _, _ = load_model(str(tiny_model), device="cpu")
    for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_eval_refuses_adapter_of_another_model(tmp_path, tiny_model, data_root, capsys):
    llama = write_adapter(tmp_path / "llama", modules=LLAMA_MODULES, config={"fan_in_fan_out": False})
    rc, _, err = run_cli(["eval", "--model", tiny_model, "--adapter", llama, "--domain", "math",
                          "--data-root", data_root, *SMALL], capsys)
    assert_user_error(rc, err, llama, "is not in the base model")


def test_eval_refuses_adapter_with_wrong_shapes(tmp_path, tiny_model, data_root, capsys):
    wide = write_adapter(tmp_path / "wide", modules={"transformer.h.0.attn.c_proj": (64, 32)})
    rc, _, err = run_cli(["eval", "--model", tiny_model, "--adapter", wide, "--domain", "math",
                          "--data-root", data_root, *SMALL], capsys)
    assert_user_error(rc, err, wide, "ΔW is 64×32 but the base weight is 32×32")


def test_check_adapter_matches_model_accepts_peft_adapters(tmp_path, tiny_gpt2, tiny_llama):
    """Adapters PEFT itself saves for a model pass the check (also on the PeftModel); the other model's do not."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    from lorasum.adapters import check_adapter_matches_model, load_adapter
    from lorasum.errors import AdapterError

    for name, model, targets in (("g", tiny_gpt2, ["c_attn", "c_proj"]), ("l", tiny_llama, ["q_proj", "down_proj"])):
        cfg = LoraConfig(r=2, target_modules=targets, fan_in_fan_out=name == "g")
        get_peft_model(copy.deepcopy(model), cfg).save_pretrained(tmp_path / name)
    g, ll = load_adapter(tmp_path / "g"), load_adapter(tmp_path / "l")
    check_adapter_matches_model(g, tiny_gpt2)
    check_adapter_matches_model(ll, tiny_llama)
    check_adapter_matches_model(g, PeftModel.from_pretrained(copy.deepcopy(tiny_gpt2), tmp_path / "g"))
    with pytest.raises(AdapterError, match="not in the base model"):
        check_adapter_matches_model(ll, tiny_gpt2)
    with pytest.raises(AdapterError, match="not in the base model"):
        check_adapter_matches_model(g, tiny_llama)
