"""Putting an adapter on the base model for an evaluation and taking it off exactly (tiny GPT-2, Conv1D)."""

from __future__ import annotations

import copy

import pytest
import torch

from lorasum.compose import DenseDelta
from lorasum.experiment.activate import dense_delta, peft_adapter

MODULES = ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _delta(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for m in MODULES:
        d_in, d_out = model.get_submodule(m).weight.shape  # Conv1D stores (d_in, d_out)
        deltas[m] = 0.05 * torch.randn(d_out, d_in, generator=g)  # ΔW in nn.Linear orientation
    return DenseDelta(deltas=deltas)


def test_dense_delta_changes_forward_as_an_independent_merge_and_restores_bitwise(tiny_gpt2):
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    before = _state(tiny_gpt2)
    delta = _delta(tiny_gpt2)
    reference = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        for m, d in delta.deltas.items():
            reference.get_submodule(m).weight += d.T  # Conv1D: W (d_in, d_out) + ΔWᵀ
        expected = reference(ids).logits
        with dense_delta(tiny_gpt2, delta) as model:
            assert model is tiny_gpt2
            got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    after = _state(tiny_gpt2)
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights not restored exactly"


def test_dense_delta_restores_after_an_error(tiny_gpt2):
    before = _state(tiny_gpt2)
    with pytest.raises(RuntimeError, match="boom"), dense_delta(tiny_gpt2, _delta(tiny_gpt2, seed=1)):
        raise RuntimeError("boom")
    after = _state(tiny_gpt2)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_peft_adapter_matches_peft_and_unloads(tiny_gpt2, tmp_path):
    from peft import LoraConfig, get_peft_model

    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    before = _state(tiny_gpt2)
    torch.manual_seed(3)
    trained = get_peft_model(copy.deepcopy(tiny_gpt2), LoraConfig(r=2, lora_alpha=8, target_modules=["c_attn"],
                                                                  fan_in_fan_out=True, init_lora_weights=False))
    trained.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        expected = trained.eval()(ids).logits
        with peft_adapter(tiny_gpt2, tmp_path / "a") as model:
            got = model(ids).logits
        plain = tiny_gpt2(ids).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain)
    after = _state(tiny_gpt2)
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
