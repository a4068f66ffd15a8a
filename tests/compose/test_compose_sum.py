"""compose_sum / merge_into_base against PEFT's multi-adapter forward and add_weighted_adapter."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from lorasum.adapters import Adapter, LoraFactor, load_adapter, save_adapter
from lorasum.compose import (METHODS, compose, compose_mean, compose_sum, compose_task_arithmetic, get_method,
                             merge_into_base)
from lorasum.errors import AdapterError, ConfigError

VOCAB = 64


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)).eval()


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        max_position_embeddings=32)).eval()


# Three adapters per architecture with different ranks, alphas, rsLoRA and target sets
# (the second adapter lacks some modules the others have).
SPECS = {
    "gpt2": (_gpt2, [
        dict(r=4, lora_alpha=64, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
        dict(r=2, lora_alpha=8, use_rslora=True, target_modules=["c_attn"], fan_in_fan_out=True),
        dict(r=3, lora_alpha=5, rank_pattern={"h.1.attn.c_attn": 5}, target_modules=["c_attn", "c_proj"],
             fan_in_fan_out=True),
    ]),
    "llama": (_llama, [
        dict(r=4, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
        dict(r=2, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"]),
        dict(r=3, lora_alpha=5, rank_pattern={"layers.1.self_attn.q_proj": 5},
             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
    ]),
}
NAMES = ["a", "b", "c"]


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                for n in m.lora_A:
                    for p in (m.lora_A[n].weight, m.lora_B[n].weight):
                        p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def env(request, tmp_path_factory):
    """Base model, the three source adapters saved by PEFT, and a PeftModel holding all three."""
    make_base, specs = SPECS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    base = make_base()
    for i, (name, spec) in enumerate(zip(NAMES, specs)):
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(**spec))
        _randomize(pm, seed=10 + i)
        pm.save_pretrained(tmp / name)
    multi = PeftModel.from_pretrained(copy.deepcopy(base), tmp / "a", adapter_name="a")
    for name in NAMES[1:]:
        multi.load_adapter(tmp / name, adapter_name=name)
    sources = [load_adapter(tmp / n) for n in NAMES]
    return dict(arch=request.param, base=base, tmp=tmp, multi=multi.eval(), sources=sources)


def _ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _peft_deltas(peft_model, adapter_name):
    out = {}
    for name, m in peft_model.named_modules():
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A:
            d = m.get_delta_weight(adapter_name).detach().double()
            out[name.removeprefix("base_model.model.")] = d.T if isinstance(m.get_base_layer(), Conv1D) else d
    return out


def test_sum_equals_all_adapters_active_in_peft(env, tmp_path):
    composed = compose_sum(env["sources"])
    path = save_adapter(composed, tmp_path / "sum")
    peft_sum = PeftModel.from_pretrained(copy.deepcopy(env["base"]), path).eval()
    multi = env["multi"]
    multi.base_model.set_adapter(NAMES)
    assert sorted(multi.base_model.active_adapters) == NAMES
    expected = _logits(multi)
    assert (expected - _logits(env["base"])).abs().max() > 1e-2  # the adapters do change the output
    torch.testing.assert_close(_logits(peft_sum), expected, rtol=0, atol=1e-4)


def test_merge_into_base_matches_composed_adapter_active(env, tmp_path):
    composed = compose_sum(env["sources"], weights=[1.0, -0.5, 2.0])
    peft_sum = PeftModel.from_pretrained(copy.deepcopy(env["base"]),
                                         save_adapter(composed, tmp_path / "sum")).eval()
    merged = merge_into_base(copy.deepcopy(env["base"]), composed)
    torch.testing.assert_close(_logits(merged), _logits(peft_sum), rtol=0, atol=1e-4)


def test_weighted_sum_equals_peft_cat(env):
    multi, weights = env["multi"], [0.7, -1.3, 2.0]
    name = f"cat{len(multi.peft_config)}"
    multi.add_weighted_adapter(NAMES, weights, name, combination_type="cat")
    expected = _peft_deltas(multi, name)
    composed = compose_sum(env["sources"], weights=weights)
    assert set(composed.factors) == set(expected)
    for module, d in expected.items():
        torch.testing.assert_close(composed.factors[module].delta().double(), d, rtol=1e-5, atol=1e-6)


def test_weighted_sum_equals_dense_sum_of_peft_deltas(env):
    """Σ wᵢ ΔWᵢ densely from each source's PEFT get_delta_weight; modules missing from an adapter count as 0."""
    multi, weights = env["multi"], [0.5, 3.0, -1.5]
    per_adapter = [_peft_deltas(multi, n) for n in NAMES]
    composed = compose_sum(env["sources"], weights=weights)
    assert set(per_adapter[1]) < set(per_adapter[0])  # adapter b lacks some modules
    for module, f in composed.factors.items():
        dense = sum(w * d[module] for w, d in zip(weights, per_adapter) if module in d)
        torch.testing.assert_close(f.delta().double(), dense, rtol=1e-5, atol=1e-6)
        assert f.scaling == 1.0
        assert f.rank == sum(s.factors[module].rank for s in env["sources"] if module in s.factors)


def test_peft_linear_is_not_the_sum(env):
    """Documents why lorasum does not use PEFT's combination_type="linear": it multiplies the
    weighted sums of B and A, (Σ √(wᵢsᵢ) Bᵢ)(Σ √(wᵢsᵢ) Aᵢ), which adds cross terms Bᵢ Aⱼ."""
    arch, tmp = env["arch"], env["tmp"]
    spec = SPECS[arch][1][0]
    pm = get_peft_model(copy.deepcopy(env["base"]), LoraConfig(**spec), adapter_name="x")
    pm.add_adapter("y", LoraConfig(**spec))
    _randomize(pm, seed=99)
    weights = [1.0, 1.0]
    pm.add_weighted_adapter(["x", "y"], weights, "lin", combination_type="linear")
    lin, dx, dy = (_peft_deltas(pm, n) for n in ("lin", "x", "y"))
    for module in lin:
        m = pm.base_model.model.get_submodule(module)
        sx, sy = m.scaling["x"], m.scaling["y"]
        Ax, Bx = m.lora_A["x"].weight.double(), m.lora_B["x"].weight.double()
        Ay, By = m.lora_A["y"].weight.double(), m.lora_B["y"].weight.double()
        cross = ((math.sqrt(sx) * Bx + math.sqrt(sy) * By) @ (math.sqrt(sx) * Ax + math.sqrt(sy) * Ay))
        torch.testing.assert_close(lin[module], cross, rtol=1e-5, atol=1e-6)
        exact = dx[module] + dy[module]
        assert (lin[module] - exact).norm() > 0.1 * exact.norm()


def test_mean_task_arithmetic_and_dispatch(env):
    srcs = env["sources"]
    total = compose_sum(srcs)
    for composed, factor in [(compose_mean(srcs), 1 / 3), (compose_task_arithmetic(srcs, scale=0.4), 0.4),
                             (compose(srcs, "mean"), 1 / 3), (compose(srcs, "task_arithmetic", scale=-2.0), -2.0),
                             (compose(srcs, "sum", weights=[0.1, 0.1, 0.1]), 0.1)]:
        for module, f in composed.factors.items():
            torch.testing.assert_close(f.delta(), factor * total.factors[module].delta(), rtol=1e-5, atol=1e-6)


def test_registry_and_config_errors(env):
    assert {"sum", "mean", "task_arithmetic"} <= set(METHODS)
    assert get_method("sum").fn is compose_sum and get_method("sum").reference
    with pytest.raises(ConfigError, match="known methods: .*mean.*sum"):
        get_method("no_such_method")
    with pytest.raises(ConfigError, match="bad parameters"):
        compose(env["sources"], "mean", scale=2.0)
    with pytest.raises(ConfigError, match="2 weights for 3 adapters"):
        compose_sum(env["sources"], weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="finite"):
        compose_sum(env["sources"], weights=[1.0, math.nan, 1.0])


def test_sum_metadata(env):
    composed = compose_sum(env["sources"])
    assert composed.fan_in_fan_out is (env["arch"] == "gpt2")
    assert composed.path is None


def _adapter(fan=False, base=None, shape=(3, 5), module="l.q"):
    f = LoraFactor(A=torch.randn(2, shape[1]), B=torch.randn(shape[0], 2), scaling=1.5)
    return Adapter(factors={module: f}, base_model=base, fan_in_fan_out=fan, config={})


def test_refuses_incompatible_adapters():
    with pytest.raises(AdapterError, match="fan_in_fan_out"):
        compose_sum([_adapter(fan=False), _adapter(fan=True)])
    with pytest.raises(AdapterError, match="different base models"):
        compose_sum([_adapter(base="gpt2"), _adapter(base="llama")])
    with pytest.raises(AdapterError, match=r"module l\.q has ΔW shape"):
        compose_sum([_adapter(shape=(3, 5)), _adapter(shape=(3, 6))])
    with pytest.raises(AdapterError, match="no adapters"):
        compose_sum([])
    ok = compose_sum([_adapter(base="gpt2"), _adapter(base=None)])  # unknown base is compatible
    assert ok.base_model == "gpt2"


def test_module_in_one_adapter_only():
    a, b = _adapter(module="l.q"), _adapter(module="l.k")
    s = compose_sum([a, b], weights=[2.0, -1.0])
    assert set(s.factors) == {"l.q", "l.k"}
    torch.testing.assert_close(s.factors["l.q"].delta(), 2.0 * a.factors["l.q"].delta())
    torch.testing.assert_close(s.factors["l.k"].delta(), -1.0 * b.factors["l.k"].delta())


def test_merge_into_base_errors_leave_model_untouched(env):
    model = copy.deepcopy(env["base"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = env["sources"][0]
    bad_path = Adapter(factors=dict(good.factors) | {"no.such.module": next(iter(good.factors.values()))},
                       fan_in_fan_out=good.fan_in_fan_out)
    with pytest.raises(AdapterError, match="no.such.module is not in the base model"):
        merge_into_base(model, bad_path)
    module = sorted(good.factors)[-1]
    wrong = Adapter(factors=dict(good.factors) | {module: LoraFactor(torch.ones(1, 7), torch.ones(9, 1), 1.0)})
    with pytest.raises(AdapterError, match="weight shape"):
        merge_into_base(model, wrong)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_merge_into_a_tied_lm_head_unties_it_and_matches_peft(tmp_path, caplog):
    """GPT-2 ties lm_head to the token embeddings: merging a ΔW of lm_head changed the embeddings too (a silently
    wrong model). The head is untied first: the merged model equals PEFT's forward with the adapter, the
    embeddings keep their values, and a saved copy reloads untied with the same logits."""
    base = _gpt2()
    assert base.lm_head.weight is base.transformer.wte.weight
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["lm_head", "c_attn"],
                                                          fan_in_fan_out=False, init_lora_weights=False))
    peft.eval()
    folder = tmp_path / "a"
    peft.save_pretrained(folder, save_embedding_layers=False)
    adapter = load_adapter(folder)
    assert "lm_head" in adapter.factors
    merged = copy.deepcopy(base)
    wte = merged.transformer.wte.weight.detach().clone()
    with caplog.at_level("WARNING", logger="lorasum"):
        merge_into_base(merged, adapter)
    assert "lm_head shares its weight with transformer.wte" in caplog.text
    assert torch.equal(merged.transformer.wte.weight, wte)
    assert merged.lm_head.weight is not merged.transformer.wte.weight and not merged.config.tie_word_embeddings
    torch.testing.assert_close(_logits(merged), _logits(peft), rtol=0, atol=1e-4)
    merged.save_pretrained(tmp_path / "m")
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    assert again.lm_head.weight.data_ptr() != again.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(_logits(again), _logits(peft), rtol=0, atol=1e-4)
