"""lorasum.adapters against PEFT's own ΔW (get_delta_weight) and PEFT loading."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from lorasum.adapters import Adapter, LoraFactor, load_adapter, save_adapter
from lorasum.errors import AdapterError, OutputExistsError

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
