"""lorasum.adapters against PEFT's own ΔW (get_delta_weight) and PEFT loading."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from lorasum.adapters import (Adapter, BaseModelRecord, LoraFactor, base_model_difference, check_adapter_base,
                              check_same_base_model, load_adapter, model_ref_key, save_adapter)
from lorasum.errors import AdapterError, OutputExistsError
from lorasum.models import ModelInfo

VOCAB = 64


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def randomize(peft_model, seed: int) -> None:
    """PEFT initialises B to zero; give every LoRA factor random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in peft_model.named_modules():
            if isinstance(module, LoraLayer):
                for name in module.lora_A:
                    for p in (module.lora_A[name].weight, module.lora_B[name].weight):
                        p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def peft_deltas(peft_model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """PEFT's get_delta_weight per module path, transposed back to nn.Linear orientation for Conv1D."""
    out = {}
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            d = module.get_delta_weight(adapter_name).detach()
            if isinstance(module.get_base_layer(), Conv1D):
                d = d.T
            out[name.removeprefix(prefix)] = d
    return out


def assert_deltas_match(adapter: Adapter, expected: dict[str, torch.Tensor]) -> None:
    assert set(adapter.factors) == set(expected)
    for module, d in expected.items():
        torch.testing.assert_close(adapter.factors[module].delta(), d, rtol=1e-5, atol=1e-6)


def make_peft(base, seed: int = 1, **lora_kwargs):
    model = get_peft_model(base, LoraConfig(**lora_kwargs))
    randomize(model, seed)
    return model.eval()


GPT2_TARGETS = dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
LLAMA_TARGETS = dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_delta_matches_peft(tmp_path, arch):
    base, targets = (tiny_gpt2(), GPT2_TARGETS) if arch == "gpt2" else (tiny_llama(), LLAMA_TARGETS)
    model = make_peft(base, r=4, lora_alpha=64, **targets)
    model.save_pretrained(tmp_path / "a")
    adapter = load_adapter(tmp_path / "a")
    expected = peft_deltas(model)
    assert len(expected) == (6 if arch == "gpt2" else 10)  # gpt2: c_attn, attn.c_proj, mlp.c_proj × 2
    assert_deltas_match(adapter, expected)
    assert adapter.fan_in_fan_out is (arch == "gpt2")
    assert all(f.A.dtype == torch.float32 and f.rank == 4 for f in adapter.factors.values())
    assert adapter.path == tmp_path / "a"


def test_rslora_scaling_matches_peft(tmp_path):
    model = make_peft(tiny_llama(), r=4, lora_alpha=8, use_rslora=True, **LLAMA_TARGETS)
    model.save_pretrained(tmp_path / "a")
    assert_deltas_match(load_adapter(tmp_path / "a"), peft_deltas(model))


@pytest.mark.filterwarnings("ignore:The following alpha_pattern keys did not match")
@pytest.mark.parametrize("rslora", [False, True])
def test_rank_and_alpha_patterns_match_peft(tmp_path, rslora):
    model = make_peft(tiny_gpt2(), r=4, lora_alpha=8, use_rslora=rslora,
                      rank_pattern={"h.0.attn.c_attn": 2, "mlp.c_proj": 6},
                      # "attn" matches no module under PEFT's (.*\.)?(key)$ rule (it is not a whole path
                      # component); "c_proj" comes first and so wins over "mlp.c_proj" for mlp.c_proj.
                      alpha_pattern={"attn": 11, r"h\.1\.attn\.c_attn": 3, "c_proj": 5, "mlp.c_proj": 7},
                      **GPT2_TARGETS)
    model.save_pretrained(tmp_path / "a")
    adapter = load_adapter(tmp_path / "a")
    assert_deltas_match(adapter, peft_deltas(model))
    ranks = {name.removeprefix("base_model.model."): m.r["default"]
             for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert {m: f.rank for m, f in adapter.factors.items()} == ranks
    assert sorted(set(ranks.values())) == [2, 4, 6]


def _logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_save_round_trip_and_peft_loads_it(tmp_path, arch):
    base, targets = (tiny_gpt2(), GPT2_TARGETS) if arch == "gpt2" else (tiny_llama(), LLAMA_TARGETS)
    pattern = {"h.0.attn.c_attn": 2} if arch == "gpt2" else {"layers.0.self_attn.q_proj": 2}
    fresh = tiny_gpt2() if arch == "gpt2" else tiny_llama()
    model = make_peft(base, r=4, lora_alpha=16, rank_pattern=pattern, **targets)
    model.save_pretrained(tmp_path / "a")
    adapter = load_adapter(tmp_path / "a")
    out = save_adapter(adapter, tmp_path / "b", base_model="tiny-base")
    again = load_adapter(out)
    for module, f in adapter.factors.items():
        torch.testing.assert_close(again.factors[module].delta(), f.delta(), rtol=1e-6, atol=1e-7)
        assert again.factors[module].rank == f.rank and again.factors[module].scaling == 1.0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-base" and cfg["use_rslora"] is False
    assert cfg["target_modules"] == sorted(t for t in targets["target_modules"])
    # PEFT itself reads the saved folder to the same ΔW and the same logits as the source adapter.
    loaded = PeftModel.from_pretrained(fresh, out).eval()
    assert_deltas_match(adapter, peft_deltas(loaded))
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=1e-4, atol=1e-4)


def test_save_refuses_to_clobber(tmp_path):
    f = LoraFactor(A=torch.ones(1, 3), B=torch.ones(2, 1), scaling=2.0)
    ad = Adapter(factors={"m.x": f}, base_model=None, fan_in_fan_out=False, config={})
    save_adapter(ad, tmp_path / "o")
    with pytest.raises(OutputExistsError):
        save_adapter(ad, tmp_path / "o")
    save_adapter(ad, tmp_path / "o", overwrite=True)
    torch.testing.assert_close(load_adapter(tmp_path / "o").factors["m.x"].delta(), 2 * torch.ones(2, 3))


# -- refusals -----------------------------------------------------------------------------------------


def write_folder(path, config: dict | None = None, tensors: dict | None = None):
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"], "fan_in_fan_out": False}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is None:
        tensors = {"base_model.model.l.q.lora_A.weight": torch.randn(2, 5),
                   "base_model.model.l.q.lora_B.weight": torch.randn(3, 2)}
    if tensors:
        save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def test_hand_written_folder_loads(tmp_path):
    ad = load_adapter(write_folder(tmp_path / "ok"))
    f = ad.factors["l.q"]
    assert f.scaling == 2.0
    torch.testing.assert_close(f.delta(), 2.0 * f.B @ f.A)


def test_refuses_pickle_only(tmp_path):
    p = write_folder(tmp_path / "bin", tensors={})
    torch.save({}, p / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"adapter_model\.bin.*pickle"):
        load_adapter(p)


@pytest.mark.parametrize("config, match", [
    ({"peft_type": "IA3"}, r"adapter_config\.json.*IA3"),
    ({"use_dora": True}, r"adapter_config\.json.*use_dora.*DoRA"),
    ({"lora_bias": True}, r"adapter_config\.json.*lora_bias"),
    ({"r": 0}, r"adapter_config\.json.*r must be a positive"),
    ({"r": 3}, r"adapter_model\.safetensors.*rank 2.*r=3"),
])
def test_refuses_bad_config(tmp_path, config, match):
    with pytest.raises(AdapterError, match=match):
        load_adapter(write_folder(tmp_path / "x", config=config))


@pytest.mark.parametrize("tensors, match", [
    ({"base_model.model.l.q.lora_A.weight": torch.full((2, 5), math.nan),
      "base_model.model.l.q.lora_B.weight": torch.randn(3, 2)}, "NaN"),
    ({"base_model.model.l.q.lora_A.weight": torch.randn(2, 5),
      "base_model.model.l.q.lora_B.weight": torch.tensor([[math.inf, 0.0]] * 3)}, "Inf"),
    ({"base_model.model.l.q.lora_A.weight": torch.randn(2, 5),
      "base_model.model.l.q.lora_B.weight": torch.randn(3, 3)}, "2 rows.*3 columns"),
    ({"base_model.model.l.q.lora_A.weight": torch.randn(2, 5)}, "no lora_B"),
    ({"base_model.model.l.q.lora_A.weight": torch.randn(2, 5),
      "base_model.model.l.q.lora_B.weight": torch.randn(3, 2),
      "base_model.model.l.q.lora_magnitude_vector": torch.randn(3)}, "DoRA"),
    ({"base_model.model.l.q.lora_A.weight": torch.randn(2, 5),
      "base_model.model.l.q.lora_B.weight": torch.randn(3, 2),
      "base_model.model.lm_head.modules_to_save.weight": torch.randn(3, 2)}, "not a LoRA factor"),
])
def test_refuses_bad_tensors(tmp_path, tensors, match):
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors.*" + match):
        load_adapter(write_folder(tmp_path / "x", tensors=tensors))


def test_refuses_missing_folder_and_files(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"adapter_config\.json: missing"):
        load_adapter(tmp_path / "empty")
    p = write_folder(tmp_path / "cfgonly", tensors={})
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors: missing"):
        load_adapter(p)


def test_factor_rejects_inconsistent_rank():
    with pytest.raises(AdapterError, match="rank mismatch"):
        LoraFactor(A=torch.zeros(2, 4), B=torch.zeros(3, 3), scaling=1.0)


# -- which base model (lorasum.json's base_model record) -------------------------------------------------

HASH_A, HASH_B = "a" * 64, "b" * 64


def with_meta(path, meta, **config):
    """A hand-written adapter folder plus ``lorasum.json`` holding ``meta`` (a dict, or raw text)."""
    folder = write_folder(path, config=config)
    (folder / "lorasum.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return folder


def rec(source="/models/tiny", config_hash=HASH_A, arch="gpt2", name="tiny"):
    return BaseModelRecord(name=name, source=source, arch=arch, config_hash=config_hash)


def ad(record=None, base_model=None, path=None):
    f = LoraFactor(A=torch.ones(1, 3), B=torch.ones(2, 1), scaling=1.0)
    return Adapter(factors={"m.x": f}, base_model=base_model, path=path, base_record=record)


def info(source="/models/tiny", config_hash=HASH_A, arch="gpt2", name="tiny"):
    return ModelInfo(name=name, source=source, arch=arch, config_hash=config_hash, fan_in_fan_out=True,
                     target_modules=(), n_params=0)


def test_load_reads_the_base_model_record(tmp_path):
    base = {"name": "tinygpt2", "source": "/abs/tinygpt2", "arch": "gpt2", "config_hash": HASH_A, "extra": 1}
    a = load_adapter(with_meta(tmp_path / "a", {"format": "lorasum-adapter/1", "base_model": base, "losses": [1.0]}))
    assert a.base_record == BaseModelRecord("tinygpt2", "/abs/tinygpt2", "gpt2", HASH_A)
    assert load_adapter(write_folder(tmp_path / "plain")).base_record is None  # no lorasum.json
    assert load_adapter(with_meta(tmp_path / "nobase", {"format": "x"})).base_record is None
    assert load_adapter(with_meta(tmp_path / "partial", {"base_model": {"config_hash": HASH_B}})).base_record == \
        BaseModelRecord(config_hash=HASH_B)
    # an empty base_model_name_or_path names no model
    assert load_adapter(write_folder(tmp_path / "empty", config={"base_model_name_or_path": " "})).base_model is None


@pytest.mark.parametrize("meta, match", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"base_model": "tinygpt2"}, "base_model must be an object"),
    ({"base_model": {"config_hash": 123}}, r"base_model\.config_hash must be a non-empty string"),
    ({"base_model": {"source": ""}}, r"base_model\.source must be a non-empty string"),
    # the fuzzing report: a blank source was taken as a model name
    ({"base_model": {"source": " \t\n", "config_hash": HASH_A}}, r"base_model\.source must be a non-empty string, "
                                                                 r"got ' \\t\\n'; a malformed base model record"),
    ({"base_model": {"name": "   "}}, r"base_model\.name must be a non-empty string"),
])
def test_a_damaged_record_is_refused(tmp_path, meta, match):
    with pytest.raises(AdapterError, match=r"lorasum\.json.*" + match):
        load_adapter(with_meta(tmp_path / "x", meta))


def test_a_damaged_record_is_refused_before_the_weights_are_read(tmp_path, monkeypatch):
    from lorasum import adapters

    folder = with_meta(tmp_path / "x", "{")
    monkeypatch.setattr(adapters, "_read_tensors", lambda *a: pytest.fail("tensors read before lorasum.json"))
    with pytest.raises(AdapterError, match="malformed JSON"):
        load_adapter(folder)
    (folder / "lorasum.json").unlink()
    (folder / "lorasum.json").mkdir()
    with pytest.raises(AdapterError, match="expected a file, found a folder"):
        load_adapter(folder)


def test_model_ref_key(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    os.symlink(tmp_path / "tiny", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    real = os.path.realpath(tmp_path / "tiny")
    assert {model_ref_key(r) for r in ("tiny", "./tiny", "tiny/", str(tmp_path / "tiny"), "link", "tiny/../tiny")} \
        == {real}
    assert model_ref_key("gpt2") == "gpt2" and model_ref_key("org/model") == "org/model"
    assert model_ref_key("./gpt2") == "gpt2"  # not a folder here: normalised only
    for weird in ("a\0b", "~\0x", "x" * 5000, "", "~nosuchuser-lorasum/x"):
        assert isinstance(model_ref_key(weird), str)  # never raises


@pytest.mark.parametrize("x, y, same, noted", [
    (rec(), rec(), True, False),
    (rec(), rec(config_hash=HASH_B), False, False),
    (rec(), rec(arch="llama"), False, False),
    (rec(), rec(source="/copy/tiny"), True, True),  # same config elsewhere: taken as the same, with a note
    (rec(), rec(source="/copy/tiny", config_hash=None), False, False),  # nothing to vouch for the copy
    (rec(source=None), rec(source="/other"), True, False),  # same hash, one source unknown
])
def test_base_model_difference_of_records(x, y, same, noted):
    got_same, note = base_model_difference(ad(x, path=Path("x")), ad(y, path=Path("y")))
    assert got_same is same and (note is not None) is noted
    if noted:
        assert "x and y" in note and "/copy/tiny" in note


def test_base_model_difference_without_records(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert base_model_difference(ad(base_model="gpt2"), ad(base_model="gpt2"))[0]
    assert not base_model_difference(ad(base_model="gpt2"), ad(base_model="gpt2-medium"))[0]
    assert base_model_difference(ad(base_model="./tiny"), ad(base_model=str(tmp_path / "tiny")))[0]
    assert base_model_difference(ad(base_model=None), ad(base_model="anything"))[0]  # unknown matches any
    # one record, one plain PEFT adapter: the record's name and source count
    assert base_model_difference(ad(rec(name="tiny", source="/m/tiny")), ad(base_model="tiny"))[0]
    assert base_model_difference(ad(rec(name="t", source="/m/tiny")), ad(base_model="/m/tiny"))[0]
    assert not base_model_difference(ad(rec(name="t", source="/m/tiny")), ad(base_model="gpt2"))[0]


def test_check_same_base_model_names_both_adapters_and_warns_once(caplog):
    x, y, z = ad(rec(), path=Path("ad/x")), ad(rec(config_hash=HASH_B, source="/m/other"), path=Path("ad/y")), ad(rec())
    with pytest.raises(AdapterError, match=r"different base models: ad/x on /models/tiny \(model_type gpt2, config "
                                           r"aaaaaaaaaaaa\), ad/y on /m/other \(model_type gpt2, config "
                                           r"bbbbbbbbbbbb\)"):
        check_same_base_model([x, z, y])
    with pytest.raises(AdapterError, match=r"adapter #0 on 'gpt2', adapter #1 on 'gpt2-xl'"):
        check_same_base_model([ad(base_model="gpt2"), ad(base_model="gpt2-xl")])
    copy = ad(rec(source="/copy/tiny"), path=Path("ad/c"))
    with caplog.at_level(logging.WARNING, logger="lorasum"):
        check_same_base_model([x, copy, z, ad(rec(source="/copy/tiny/"))])  # one pair of sources, 4 pairs of adapters
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "same config" in notes[0] and "ad/c" in notes[0]


def test_check_adapter_base(tmp_path, monkeypatch):
    here = info()
    assert check_adapter_base(ad(rec(), path=Path("ad/x")), here) is None
    with pytest.raises(AdapterError, match=r"ad/x: trained on base model /models/tiny \(model_type gpt2, config "
                                           r"aaaaaaaaaaaa\), not on /m/o \(model_type gpt2, config bbbbbbbbbbbb\)"):
        check_adapter_base(ad(rec(), path=Path("ad/x")), info(source="/m/o", config_hash=HASH_B))
    # the fuzzing report: the sides read alike ("/models/tiny (config aaaa…), not on /models/tiny (config aaaa…)")
    with pytest.raises(AdapterError, match=r"trained on base model /models/tiny \(model_type gpt2, config "
                                           r"aaaaaaaaaaaa\), not on /models/tiny \(model_type llama, config "
                                           r"aaaaaaaaaaaa\): a different model"):
        check_adapter_base(ad(rec()), info(arch="llama"))
    # config hashes that agree in their first 12 characters: given whole
    other = HASH_A[:12] + "f" * (len(HASH_A) - 12)
    with pytest.raises(AdapterError, match=f"config {HASH_A}\\), not on /models/tiny \\(model_type gpt2, "
                                           f"config {other}"):
        check_adapter_base(ad(rec()), info(config_hash=other))
    with pytest.raises(AdapterError, match=f"config {HASH_A}\\), adapter #1 on /models/tiny \\(model_type gpt2, "
                                           f"config {other}\\)"):
        check_same_base_model([ad(rec()), ad(rec(config_hash=other))])
    note = check_adapter_base(ad(rec(source="/copy/tiny")), here)
    assert "same model config" in note and "/copy/tiny" in note and "/models/tiny" in note
    note = check_adapter_base(ad(rec(source="/copy/tiny", config_hash=None)), here)
    assert "no config hash" in note
    assert check_adapter_base(ad(rec(source=None)), here) is None  # the config hash matches
    # no lorasum.json: the typed name is compared; an unknown base model passes
    assert check_adapter_base(ad(base_model="tiny"), here) is None
    assert check_adapter_base(ad(base_model="/models/tiny"), here) is None
    assert check_adapter_base(ad(base_model=None), here) is None
    note = check_adapter_base(ad(base_model="gpt2", path=Path("ad/p")), here)
    assert note.startswith("ad/p: records base model 'gpt2'") and "only module shapes" in note
    assert "it has no lorasum.json" in note
    # a record with only a name: compared as a typed name
    note = check_adapter_base(ad(BaseModelRecord(name="gpt2")), here)
    assert "'gpt2'" in note and "records no source or config hash" in note


def test_save_keeps_the_base_model_record(tmp_path):
    """An adapter with a base-model record keeps it in lorasum.json also without meta (a sum saved from Python
    lost it, so the saved folder could no longer be checked against its model); without a record and meta,
    no lorasum.json."""
    a = dataclasses.replace(ad(rec()), config={})
    save_adapter(a, tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "lorasum.json").read_text()) == {"base_model": rec().to_dict()}
    assert load_adapter(tmp_path / "plain").base_record == rec()
    save_adapter(ad(None), tmp_path / "bare")
    assert not (tmp_path / "bare" / "lorasum.json").exists()
    save_adapter(a, tmp_path / "meta", meta={"format": "lorasum-composed/1"})
    meta = json.loads((tmp_path / "meta" / "lorasum.json").read_text())
    assert meta == {"format": "lorasum-composed/1", "base_model": rec().to_dict()}
    assert load_adapter(tmp_path / "meta").base_record == rec()
    save_adapter(ad(None), tmp_path / "norec", meta={"k": 1})
    assert json.loads((tmp_path / "norec" / "lorasum.json").read_text()) == {"k": 1}
    with pytest.raises(ValueError, match="lorasum.json"):
        save_adapter(a, tmp_path / "both", meta={}, extra_json={"lorasum.json": {}})


def test_which_modules_peft_adapts_is_peft_own_rule():
    """lorasum's mirror of PEFT's target matching (read without importing PEFT) agrees with
    peft.tuners.tuners_utils.check_target_module_exists on names, regexes, exclusions and layer indexes."""
    from itertools import product
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    from lorasum.adapters import _peft_adapts

    modules = ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj",
               "model.layers.12.self_attn.q_proj", "model.layers.3.mlp.experts.7.down_proj", "lm_head", "c_attn",
               "model.blocks.2.attn.c_attn", "transformer.h.10.mlp.c_fc"]
    targets = [["c_attn", "c_proj"], ["q_proj", "down_proj"], ["attn.c_proj"], ["lm_head", "c_fc"], ["c_attn"],
               r".*\.h\.\d+\.attn\..*", r".*(q_proj|c_fc)", ["transformer.h.1.mlp.c_proj"]]
    excludes = [None, ["c_proj"], ["mlp.c_proj"], r".*\.1\..*", []]
    layers = [None, [], 1, [0, 12], [2, 3, 10]]
    patterns = [None, "h", ["layers", "blocks"], ""]
    checked = 0
    for m, t, e, lay, pat in product(modules, targets, excludes, layers, patterns):
        view = SimpleNamespace(target_modules=t, exclude_modules=e, modules_to_save=None, target_parameters=None,
                               layers_to_transform=lay, layers_pattern=pat)
        assert _peft_adapts(m, t, e, lay, pat) == bool(check_target_module_exists(view, m)), (m, t, e, lay, pat)
        checked += 1
    assert checked == 7200
