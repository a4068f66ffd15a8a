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


def _lora_folder(model, path, seed, r, alpha, dropout, targets=("c_attn", "c_proj")):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                                 target_modules=list(targets), fan_in_fan_out=True,
                                                                 init_lora_weights=False))
    peft_model.save_pretrained(path)
    return peft_model.eval()


def test_merged_slot_gives_each_adapters_peft_forward_and_restores_the_base(tiny_gpt2, tmp_path):
    """Adapters of other ranks, lora_alpha and lora_dropout (GPT-2 Conv1D: fan_in_fan_out) merged in turn,
    back and forth: each forward equals the adapter loaded by PEFT (float32); the base weights come back bit
    for bit, also after an adapter that names a module the model lacks (refused before any weight changes)."""

    from lorasum.adapters import load_adapter, save_adapter
    from lorasum.compose import compose
    from lorasum.errors import AdapterError
    from lorasum.experiment.activate import merged_slot

    ids = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]])
    before = _state(tiny_gpt2)
    refs = {"a": _lora_folder(tiny_gpt2, tmp_path / "a", 1, r=2, alpha=8, dropout=0.1),
            "b": _lora_folder(tiny_gpt2, tmp_path / "b", 2, r=4, alpha=4, dropout=0.0)}
    save_adapter(compose([load_adapter(tmp_path / "a"), load_adapter(tmp_path / "b")], "sum"), tmp_path / "sum")
    with torch.no_grad():
        want = {name: ref(ids).logits for name, ref in refs.items()}
        with peft_adapter(tiny_gpt2, tmp_path / "sum") as model:
            want["sum"] = model(ids).logits
        with merged_slot(tiny_gpt2) as merged:
            for name in ("a", "sum", "b", "a"):
                with merged(tmp_path / name) as model:
                    assert model is tiny_gpt2
                    torch.testing.assert_close(model(ids).logits, want[name], rtol=1e-5, atol=1e-5)
                assert all(torch.equal(before[k], v) for k, v in _state(tiny_gpt2).items())
            bad = tmp_path / "bad"
            bad.mkdir()
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                (bad / f).write_bytes((tmp_path / "a" / f).read_bytes())
            from safetensors.torch import load_file, save_file

            tensors = load_file(bad / "adapter_model.safetensors")
            tensors = {k.replace("h.1.", "h.7."): v for k, v in tensors.items()}  # a layer the model lacks
            save_file(tensors, bad / "adapter_model.safetensors")
            with pytest.raises(AdapterError, match="not in the base model"), merged(bad):
                pass
        plain = tiny_gpt2(ids).logits
    assert all(not torch.allclose(plain, w) for w in want.values())
    after = _state(tiny_gpt2)
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (compiled layers)")
def test_compiled_merged_slot_serves_every_adapter_without_recompiling(tiny_llama, tmp_path):
    """On CUDA (bf16) the compiled decoder layers with each adapter's ΔW merged give its eager PEFT forward
    (bf16 tolerance), and merging adapters of other ranks compiles nothing new."""
    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters

    from lorasum.experiment.activate import merged_slot

    model = tiny_llama.to(device="cuda")
    ids = torch.randint(0, model.config.vocab_size, (3, 24), device="cuda")
    want, paths = {}, []
    for i, r in enumerate((2, 6, 4)):
        torch.manual_seed(i)
        p = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=2 * r + i, lora_dropout=0.1 * (i % 2),
                                                           target_modules=["q_proj", "v_proj", "down_proj"],
                                                           init_lora_weights=False))
        p.save_pretrained(tmp_path / str(i))
        paths.append(tmp_path / str(i))
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            want[i] = p.eval()(ids).logits.float()
    before = _state(model)
    torch._dynamo.reset()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16), merged_slot(model, compile=True) as m:
        got = {}
        with m(paths[0]) as merged_model:
            got[0] = merged_model(ids).logits.float()
        graphs = counters["stats"]["unique_graphs"]
        for i in (1, 2, 0):
            with m(paths[i]) as merged_model:
                got[i] = merged_model(ids).logits.float()
        assert counters["stats"]["unique_graphs"] == graphs, "merging another adapter recompiled"
    for i in want:
        err = float((got[i] - want[i]).norm() / want[i].norm())
        assert err < 3e-2, f"adapter {i}: relative error {err:.3g}"
        assert all(err < 0.1 * float((got[i] - want[j]).norm() / want[j].norm()) for j in want if j != i)
    assert all(getattr(layer, "_compiled_call_impl", None) is None for layer in model.model.layers)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
