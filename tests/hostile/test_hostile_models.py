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


def _unprefixed(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    save_file({k.removeprefix("base_model.model."): v for k, v in tensors.items()},
              str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("command", ["eval", "similarity", "compose"])
def test_factors_without_peft_prefix_are_refused_by_every_command(tmp_path, tiny_model, data_root, command, capsys):
    """PEFT ignores keys without base_model.model. (eval scored the base model), while similarity and compose
    read them: the same folder meant two things. Now every command refuses it."""
    bare = _unprefixed(write_adapter(tmp_path / "bare"))
    other = write_adapter(tmp_path / "other", seed=1)
    argv = {"eval": ["eval", "--model", tiny_model, "--adapter", bare, "--domain", "math", "--data-root", data_root,
                     *SMALL],
            "similarity": ["similarity", bare, other],
            "compose": ["compose", bare, other, "--out", tmp_path / "out"]}[command]
    rc, _, err = run_cli(argv, capsys)
    assert_user_error(rc, err, bare / "adapter_model.safetensors", "lacks PEFT's base_model.model. prefix")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, fragment", [
    ({"exclude_modules": ["c_proj"]}, "leaves out module transformer.h.0.attn.c_proj of the weights"),
    ({"layers_to_transform": [1]}, "leaves out module transformer.h.0.attn.c_attn of the weights"),
    ({"layers_to_transform": [5]}, "leaves out module transformer.h.0.attn.c_attn of the weights (4 of 4"),
    ({"layers_to_transform": [0], "layers_pattern": "blocks"}, "leaves out module transformer.h.0.attn.c_attn"),
])
@pytest.mark.parametrize("command", ["eval", "similarity", "compose"])
def test_factors_that_peft_would_leave_out_are_refused_by_every_command(tmp_path, tiny_model, data_root, config,
                                                                        fragment, command, capsys):
    """PEFT leaves out factors outside layers_to_transform or inside exclude_modules (eval then scored without
    them, or ended in an internal error when none was left), while similarity and compose counted them."""
    folder = write_adapter(tmp_path / "a", config=config)
    other = write_adapter(tmp_path / "other", seed=1)
    argv = {"eval": ["eval", "--model", tiny_model, "--adapter", folder, "--domain", "math", "--data-root", data_root,
                     *SMALL],
            "similarity": ["similarity", folder, other],
            "compose": ["compose", folder, other, "--out", tmp_path / "out"]}[command]
    rc, _, err = run_cli(argv, capsys)
    assert_user_error(rc, err, folder / "adapter_config.json", fragment)


def test_peft_layers_of_a_module_without_factors_are_refused_when_not_zero(tmp_path, tiny_model, data_root, capsys):
    """target_modules c_proj also names GPT-2's mlp.c_proj, which the file has no factors for: PEFT initialises
    it, with B = 0 by default (no effect: accepted) but randomly with init_lora_weights false (other perplexities
    at each run: refused)."""
    for init, ok in ((True, True), (False, False)):
        folder = write_adapter(tmp_path / f"a{init}", config={"init_lora_weights": init})
        rc, _, err = run_cli(["eval", "--model", tiny_model, "--adapter", folder, "--domain", "math",
                              "--data-root", data_root, *SMALL], capsys)
        if ok:
            assert rc == 0, err
        else:
            assert_user_error(rc, err, folder, "names module transformer.h.0.mlp.c_proj, which has no factors",
                              "init_lora_weights: False")


def test_peft_from_pretrained_refuses_what_peft_drops_or_changes(tmp_path, tiny_model):
    """The cross-check itself, on adapters whose files lorasum reads in one way and PEFT in another (made so by
    editing the parsed Adapter: the files can no longer be made to disagree through load_adapter)."""
    import dataclasses

    from lorasum.adapters import LoraFactor, load_adapter, peft_from_pretrained
    from lorasum.errors import AdapterError
    from lorasum.models import load_model

    folder = write_adapter(tmp_path / "a")
    adapter = load_adapter(folder)
    model, _, _ = load_model(str(tiny_model), device="cpu")
    module = "transformer.h.0.attn.c_proj"
    more = dataclasses.replace(adapter, factors=adapter.factors | {"transformer.h.0.mlp.c_fc": adapter.factors[module]})
    with pytest.raises(AdapterError, match="PEFT does not load the factors of module transformer.h.0.mlp.c_fc"):
        peft_from_pretrained(model, more)
    f = adapter.factors[module]
    for changed in (LoraFactor(f.A, f.B * 2, f.scaling), LoraFactor(f.A, f.B, f.scaling * 2)):
        other = dataclasses.replace(adapter, factors=adapter.factors | {module: changed})
        with pytest.raises(AdapterError, match=f"other factors or another scaling for module {module}"):
            peft_from_pretrained(model, other)
    assert not any("lora" in n for n, _ in model.named_modules())  # the model is left as it was, each time


def test_peft_from_pretrained_gives_the_files_factors(tmp_path, tiny_model):
    """The check passes for a folder PEFT reads as lorasum does, and the layers hold the files' values."""
    from lorasum.adapters import load_adapter, peft_from_pretrained
    from lorasum.models import load_model

    folder = write_adapter(tmp_path / "a", r=3)
    adapter = load_adapter(folder)
    model, _, _ = load_model(str(tiny_model), device="cpu")
    peft_model = peft_from_pretrained(model, adapter)
    layer = peft_model.base_model.model.transformer.h[1].attn.c_attn
    torch.testing.assert_close(layer.lora_B["default"].weight, adapter.factors["transformer.h.1.attn.c_attn"].B,
                               rtol=0, atol=0)
    assert layer.scaling["default"] == adapter.factors["transformer.h.1.attn.c_attn"].scaling == 2.0


def test_eval_of_a_dense_compose_output_says_how_to_evaluate_it(tmp_path, tiny_model, data_root, capsys):
    """compose --method ties writes a dense ΔW, not a PEFT folder: eval --adapter on it names the way that works."""
    a, b = write_adapter(tmp_path / "a"), write_adapter(tmp_path / "b", seed=1)
    rc, _, err = run_cli(["compose", a, b, "--method", "ties", "--out", tmp_path / "t"], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["eval", "--model", tiny_model, "--adapter", tmp_path / "t", "--domain", "math",
                          "--data-root", data_root, *SMALL], capsys)
    assert_user_error(rc, err, tmp_path / "t" / "adapter_config.json", "not a PEFT adapter folder",
                      "dense_delta.safetensors", "--merge-into-base")
