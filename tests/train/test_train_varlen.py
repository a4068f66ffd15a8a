"""train.attention_dropout (lorasum.train.varlen.attention_dropout): what it sets, that it acts on the forward, and
that it is undone; the CPU reference of variable-length attention is tested in test_train_parallel.py."""

from __future__ import annotations

import json

import pytest
import torch

from lorasum.config import LoraSpec, TrainSpec
from lorasum.errors import ConfigError
from lorasum.models import describe_model
from lorasum.train import train_adapter
from lorasum.train.varlen import attention_dropout, has_attention_dropout

from test_train_cuda import RECORDS


def _attention_dropouts(model) -> list[float]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and name.endswith("attn_dropout"):
            out.append(m.p)
        elif isinstance(getattr(m, "attention_dropout", None), float):
            out.append(m.attention_dropout)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attention_dropout_is_set_for_the_duration_and_restored(tiny_gpt2, tiny_llama, arch):
    model = tiny_gpt2 if arch == "gpt2" else tiny_llama
    key = "attn_pdrop" if arch == "gpt2" else "attention_dropout"
    before, modules = getattr(model.config, key), _attention_dropouts(model)
    assert modules and has_attention_dropout(model) == (before > 0)
    with attention_dropout(model, 0.25):
        assert getattr(model.config, key) == 0.25 and set(_attention_dropouts(model)) == {0.25}
        assert has_attention_dropout(model)
    assert getattr(model.config, key) == before and _attention_dropouts(model) == modules
    with attention_dropout(model, 0.0):
        assert not has_attention_dropout(model) and set(_attention_dropouts(model)) == {0.0}
    with attention_dropout(model, None):  # the model's own
        assert getattr(model.config, key) == before
    assert _attention_dropouts(model) == modules


def test_attention_dropout_acts_on_the_forward_in_training_mode(tiny_gpt2):
    """GPT-2 in training mode with every other dropout off: two forwards differ with the config's attention
    dropout (0.1) and agree with attention_dropout 0, which gives the eval-mode logits."""
    model = tiny_gpt2
    model.config.resid_pdrop = model.config.embd_pdrop = 0.0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and not name.endswith("attn_dropout"):
            m.p = 0.0
    ids = torch.arange(1, 25).reshape(2, 12) % model.config.vocab_size
    with torch.no_grad():
        reference = model.eval()(ids).logits
        model.train()
        torch.manual_seed(0)
        a, b = model(ids).logits, model(ids).logits
        assert not torch.allclose(a, b)
        with attention_dropout(model, 0.0):
            c, d = model(ids).logits, model(ids).logits
    model.eval()
    torch.testing.assert_close(c, d)
    torch.testing.assert_close(c, reference)


def test_a_model_without_attention_dropout_is_refused():
    with pytest.raises(ValueError, match="Linear: no attention dropout"):
        with attention_dropout(torch.nn.Linear(2, 2), 0.0):
            pass
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        with attention_dropout(torch.nn.Linear(2, 2), 1.5):
            pass
    with pytest.raises(Exception, match="attention_dropout"):
        TrainSpec(attention_dropout=1.0)  # the config refuses it first


def test_train_adapter_with_attention_dropout_zero(tmp_path, tiny_tokenizer, tiny_gpt2):
    """Training with train.attention_dropout: 0 records it in the adapter's metadata and leaves GPT-2's own 0.1."""
    res = train_adapter(tiny_gpt2, tiny_tokenizer, RECORDS, lora=LoraSpec(r=2, lora_alpha=4),
                        train=TrainSpec(max_steps=2, batch_size=4, attention_dropout=0.0), seed=0,
                        out_dir=tmp_path / "a", max_length=64, model_info=describe_model(tiny_gpt2, name="tiny"),
                        progress=False)
    assert res.steps == 2
    meta = json.loads((tmp_path / "a" / "lorasum.json").read_text())
    assert '"attention_dropout": 0.0' in json.dumps(meta)
    assert tiny_gpt2.config.attn_pdrop == 0.1 and set(_attention_dropouts(tiny_gpt2)) == {0.1}


def test_training_a_model_without_attention_dropout_settings_names_the_key(tmp_path, tiny_tokenizer, tiny_gpt2,
                                                                           monkeypatch):
    import lorasum.train.varlen as varlen

    monkeypatch.setattr(varlen, "_DROPOUT_KEYS", ())
    for m in tiny_gpt2.modules():  # hide GPT-2's attn_dropout modules from the lookup
        for child_name, child in list(m.named_children()):
            if child_name == "attn_dropout":
                m._modules["attention_drop"] = m._modules.pop("attn_dropout")
    with pytest.raises(ConfigError, match="train.attention_dropout: GPT2LMHeadModel: no attention dropout"):
        train_adapter(tiny_gpt2, tiny_tokenizer, RECORDS, lora=LoraSpec(r=2, lora_alpha=4),
                      train=TrainSpec(max_steps=1, batch_size=4, attention_dropout=0.0), seed=0,
                      out_dir=tmp_path / "b", max_length=64, model_info=describe_model(tiny_gpt2, name="tiny"),
                      progress=False)


def test_an_integer_attention_dropout_in_the_config_is_settable(tiny_tokenizer):
    """A config.json may say ``"attention_dropout": 0``: an int on every attention module."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, attention_dropout=0))
    assert _attention_dropouts(model) == [] and model.model.layers[0].self_attn.attention_dropout == 0
    with attention_dropout(model, 0.2):
        assert model.model.layers[0].self_attn.attention_dropout == 0.2 and model.config.attention_dropout == 0.2
    assert model.model.layers[0].self_attn.attention_dropout == 0 and model.config.attention_dropout == 0


@pytest.mark.parametrize("value", ["0.1", True, False])
def test_attention_dropout_takes_numbers_only(value):
    with pytest.raises(Exception, match="attention_dropout"):
        TrainSpec(attention_dropout=value)


def test_negative_zero_is_zero():
    """-0.0 and 0.0 are one setting, so one cache key."""
    assert str(TrainSpec(attention_dropout=-0.0).attention_dropout) == "0.0"
    assert TrainSpec(attention_dropout=0).attention_dropout == 0.0


def test_flash_varlen_op_shapes_and_autograd_on_the_meta_device():
    """lorasum::flash_varlen's fake kernels and autograd registration (the CUDA kernels are tested in
    test_train_cuda.py): output (T, H, D) in the input dtype, gradients of q, k and v of their shapes."""
    from lorasum.train.varlen import flash_varlen_attention

    q, k, v = (torch.empty(10, 2, 16, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32, device="meta")
    out = flash_varlen_attention(q, k, v, cu, 6, dropout_p=0.1)
    assert out.shape == (10, 2, 16) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in (q, k, v))


def test_varlen_reference_applies_attention_dropout(tmp_path, tiny_tokenizer, tiny_gpt2):
    """Variable-length attention with GPT-2's attention dropout on (CPU reference: SDPA per example with
    dropout_p): training is reproducible under a seed, and the dropout acts (other losses than with p = 0)."""
    from lorasum.config import LoraSpec, TrainSpec
    from lorasum.data.records import Record
    from lorasum.models import describe_model
    from lorasum.train import AdapterTask, train_adapters

    model = tiny_gpt2
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and not name.endswith("attn_dropout"):
            m.p = 0.0
    records = [Record(id=f"r{i}", domain="d", question=f"what is {i} plus {i} ?", answer=f"it is {2 * i}")
               for i in range(8)]
    info = describe_model(model, name="tiny")
    losses = {}
    for run, p in (("a", 0.3), ("b", 0.3), ("c", 0.0)):
        res = train_adapters(model, tiny_tokenizer, [AdapterTask(records=records, seed=0, out_dir=tmp_path / run)],
                             lora=LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0),
                             train=TrainSpec(learning_rate=1e-2, max_steps=4, batch_size=4, pack_length=64,
                                             attention_dropout=p),
                             max_length=64, model_info=info, progress=False, varlen=True)
        losses[run] = res[0].losses
    assert losses["a"] == losses["b"]
    assert losses["a"] != pytest.approx(losses["c"], rel=1e-4)


def test_varlen_attention_defines_the_dropout_operator_before_the_first_pass(tiny_gpt2, tiny_llama, monkeypatch):
    """With attention dropout (GPT-2's 0.1), entering variable-length attention defines lorasum::flash_varlen
    at once: defined on first use inside a compiled layer, it broke the layer's graph and recompiled. A model
    without attention dropout leaves it undefined."""
    import lorasum.train.varlen as varlen

    if not varlen._flash_available():
        pytest.skip("this torch has no FlashAttention-2 operators")
    monkeypatch.setattr(varlen, "_FLASH_OP", None)
    tiny_llama.config.attention_dropout = 0.0
    with varlen.varlen_attention(tiny_llama):
        assert varlen._FLASH_OP is None
    assert tiny_gpt2.config.attn_pdrop > 0
    with varlen.varlen_attention(tiny_gpt2):
        assert varlen._FLASH_OP is not None
        op = varlen._FLASH_OP
    assert varlen._flash_op() is op  # defined once
