"""Helpers shared by the compose tests: tiny models, random adapters, dense references."""

from __future__ import annotations

import copy

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lorasum.adapters import Adapter, LoraFactor, load_adapter

VOCAB = 64


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)).eval()


def llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        max_position_embeddings=32)).eval()


GPT2_SPECS = [dict(r=4, lora_alpha=64, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
              dict(r=2, lora_alpha=8, use_rslora=True, target_modules=["c_attn"], fan_in_fan_out=True),
              dict(r=3, lora_alpha=5, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)]
LLAMA_SPECS = [dict(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"]),
               dict(r=2, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"]),
               dict(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"])]
NAMES = ["a", "b", "c"]


def randomize(model, seed, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                for n in m.lora_A:
                    for p in (m.lora_A[n].weight, m.lora_B[n].weight):
                        p.copy_(torch.randn(p.shape, generator=g) * std)


def build_env(base, specs, tmp):
    """Save three PEFT adapters under tmp and return (sources, PeftModel with all three loaded)."""
    for i, (name, spec) in enumerate(zip(NAMES, specs)):
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(**spec))
        randomize(pm, seed=10 + i)
        pm.save_pretrained(tmp / name)
    multi = PeftModel.from_pretrained(copy.deepcopy(base), tmp / "a", adapter_name="a")
    for name in NAMES[1:]:
        multi.load_adapter(tmp / name, adapter_name=name)
    multi.base_model.set_adapter(NAMES)
    return [load_adapter(tmp / n) for n in NAMES], multi.eval()


def ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def logits(model):
    with torch.no_grad():
        return model(input_ids=ids()).logits


def rand_adapter(seed, modules=("l.0.q", "l.0.v", "l.1.q"), shape=(5, 4), rank=2, scale=None) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for k, m in enumerate(modules):
        r = rank + k % 2
        s = float(torch.rand((), generator=g) * 3 + 0.2) if scale is None else scale
        factors[m] = LoraFactor(A=torch.randn(r, shape[1], generator=g), B=torch.randn(shape[0], r, generator=g),
                                scaling=s)
    return Adapter(factors=factors)


def dense_np(adapter: Adapter, module: str, shape=None) -> np.ndarray:
    """scaling·B·A in numpy float64 (zeros of ``shape`` if the module is absent)."""
    f = adapter.factors.get(module)
    if f is None:
        return np.zeros(shape)
    return f.scaling * (f.B.numpy().astype(np.float64) @ f.A.numpy().astype(np.float64))
