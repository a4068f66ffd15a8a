"""lorasum.train.train_adapter on tiny models: learning, determinism, saving, base model left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraModel
from safetensors.torch import load_file

from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.data.tokenize import collate, encode_record
from lorasum.errors import ConfigError, OutputExistsError
from lorasum.evaluate import perplexity
from lorasum.models import describe_model
from lorasum.train import TrainResult, train_adapter

PAIRS = [
    ("what is the dose ?", "the dose is 5"),
    ("what is the price ?", "the price is 100 $"),
    ("is the sun red ?", "no the sun is blue"),
    ("how many eggs are left ?", "2 eggs are left"),
    ("which drug ?", "the red drug"),
    ("what is the rate ?", "the rate is 6 %"),
    ("who is the patient ?", "the cat is the patient"),
    ("what is 2 plus 2 ?", "4"),
]
RECORDS = [Record(id=f"r{i}", domain="d", question=q, answer=a, context="the market" if i % 3 == 0 else "")
           for i, (q, a) in enumerate(PAIRS)]
LORA = LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0)
FAST = TrainSpec(learning_rate=3e-2, max_steps=20, batch_size=4, warmup_ratio=0.1)


def run(model, tok, out, *, seed=0, lora=LORA, train=FAST, **kw) -> TrainResult:
    info = describe_model(model, name="tiny-test-model", source="in-memory")
    return train_adapter(model, tok, RECORDS, lora=lora, train=train, seed=seed, out_dir=out, max_length=64,
                         model_info=info, progress=False, **kw)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def adapter_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_training_reduces_loss_and_leaves_base_untouched(request, tmp_path, tiny_tokenizer, model_fixture):
    model = request.getfixturevalue(model_fixture)
    before = state(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    base_ppl = perplexity(model, tiny_tokenizer, RECORDS, max_length=64)

    res = run(model, tiny_tokenizer, tmp_path / "a")

    assert res.steps == 20 == len(res.losses) and res.tokens > 0 and res.seconds > 0
    assert sum(res.losses[-3:]) / 3 < 0.7 * sum(res.losses[:3]) / 3
    # the caller's model is the base model again: same class, same weights, no LoRA modules, same flags
    assert not isinstance(model, PeftModel)
    assert not any("lora" in name for name, _ in model.named_modules())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert not model.training
    # independent check of learning: the saved adapter lowers the perplexity on its training set
    loaded = PeftModel.from_pretrained(model, str(tmp_path / "a"))
    tuned_ppl = perplexity(loaded, tiny_tokenizer, RECORDS, max_length=64)
    assert tuned_ppl.ppl < 0.5 * base_ppl.ppl


def test_same_seed_same_adapter_and_other_seed_differs(tmp_path, tiny_tokenizer, tiny_gpt2):
    lora = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.1)  # dropout draws from the seeded generator too
    train = TrainSpec(learning_rate=1e-2, max_steps=5, batch_size=3)
    tiny_gpt2.train()  # base dropout on as well
    run(tiny_gpt2, tiny_tokenizer, tmp_path / "a", seed=7, lora=lora, train=train)
    run(tiny_gpt2, tiny_tokenizer, tmp_path / "b", seed=7, lora=lora, train=train)
    run(tiny_gpt2, tiny_tokenizer, tmp_path / "c", seed=8, lora=lora, train=train)
    a, b, c = (adapter_weights(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and len(a) == 2 * 3 * 2  # 2 layers x (c_attn, attn.c_proj, mlp.c_proj) x (A, B)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert tiny_gpt2.training  # mode restored


def test_saved_adapter_reproduces_trained_logits(tmp_path, tiny_tokenizer, tiny_llama, monkeypatch):
    batch = collate([encode_record(tiny_tokenizer, r, 64) for r in RECORDS], tiny_tokenizer.pad_token_id)
    seen = {}
    original_unload = LoraModel.unload

    def capture_then_unload(self, *a, **kw):  # logits of the trained model, just before LoRA is removed
        self.model.eval()
        with torch.no_grad():
            seen["logits"] = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return original_unload(self, *a, **kw)

    monkeypatch.setattr(LoraModel, "unload", capture_then_unload)
    res = run(tiny_llama, tiny_tokenizer, tmp_path / "a", validation=RECORDS[:5])
    with torch.no_grad():
        base_logits = tiny_llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loaded = PeftModel.from_pretrained(tiny_llama, str(tmp_path / "a")).eval()
    with torch.no_grad():
        logits = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(logits, seen["logits"], atol=1e-5)
    assert not torch.allclose(base_logits, seen["logits"], atol=1e-2)
    val = perplexity(loaded, tiny_tokenizer, RECORDS[:5], max_length=64)
    assert res.val_loss == pytest.approx(val.mean_nll, rel=1e-5)


def test_adapter_folder_contents(tmp_path, tiny_tokenizer, tiny_gpt2):
    meta = {"sources": ["gsm8k/train.jsonl"], "content_hash": "abc123"}
    res = run(tiny_gpt2, tiny_tokenizer, tmp_path / "a", seed=3, meta=meta)
    folder = tmp_path / "a"
    assert res.out_dir == folder
    assert {"adapter_model.safetensors", "adapter_config.json", "lorasum.json"} <= {p.name for p in folder.iterdir()}
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-test-model"
    assert (cfg["r"], cfg["lora_alpha"], cfg["fan_in_fan_out"]) == (4, 16, True)
    assert sorted(cfg["target_modules"]) == ["c_attn", "c_proj"]
    info = json.loads((folder / "lorasum.json").read_text())
    model_info = describe_model(tiny_gpt2, name="tiny-test-model", source="in-memory")
    assert info["base_model"] == {"name": "tiny-test-model", "source": "in-memory", "arch": "gpt2",
                                  "config_hash": model_info.config_hash}
    assert info["meta"] == meta
    assert info["lora"]["r"] == 4 and info["lora"]["lora_alpha"] == 16
    assert info["train"] == FAST.model_dump()
    assert info["seed"] == 3 and info["max_length"] == 64 and info["n_examples"] == len(RECORDS)
    assert info["losses"] == res.losses and info["steps"] == res.steps == 20
    assert info["tokens"] == res.tokens and info["final_loss"] == res.final_loss
    assert info["val_loss"] is None
    assert {"torch", "transformers", "peft"} <= info["versions"].keys()


def test_refuses_to_clobber_before_training(tmp_path, tiny_tokenizer, tiny_gpt2):
    out = tmp_path / "a"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        run(tiny_gpt2, tiny_tokenizer, out)
    assert (out / "keep.txt").exists()
    assert not any("lora" in n for n, _ in tiny_gpt2.named_modules())
    run(tiny_gpt2, tiny_tokenizer, out, overwrite=True, train=TrainSpec(max_steps=1, batch_size=4))
    assert (out / "lorasum.json").exists() and not (out / "keep.txt").exists()


def test_grad_accumulation_equals_larger_batch(tmp_path, tiny_tokenizer, tiny_llama):
    big = TrainSpec(learning_rate=1e-2, max_steps=3, batch_size=8, grad_accum=1, max_grad_norm=None)
    small = TrainSpec(learning_rate=1e-2, max_steps=3, batch_size=4, grad_accum=2, max_grad_norm=None)
    run(tiny_llama, tiny_tokenizer, tmp_path / "big", train=big)
    run(tiny_llama, tiny_tokenizer, tmp_path / "small", train=small)
    a, b = adapter_weights(tmp_path / "big"), adapter_weights(tmp_path / "small")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_epochs_set_the_number_of_steps(tmp_path, tiny_tokenizer, tiny_llama):
    # 8 records, batch 3 -> 3 micro-batches per epoch; grad_accum 2 -> 2 steps per epoch
    res = run(tiny_llama, tiny_tokenizer, tmp_path / "a",
              train=TrainSpec(epochs=2, batch_size=3, grad_accum=2, learning_rate=1e-3))
    assert res.steps == 4


def test_unknown_target_modules(tmp_path, tiny_tokenizer, tiny_llama):
    before = state(tiny_llama)
    with pytest.raises(ConfigError, match="target_modules"):
        run(tiny_llama, tiny_tokenizer, tmp_path / "a", lora=LoraSpec(target_modules=["no_such_module"]))
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
    assert not (tmp_path / "a").exists()


def test_a_target_peft_cannot_wrap_is_named_on_one_line(tmp_path, tiny_tokenizer, tiny_gpt2):
    """PEFT's message holds the module's multi-line repr; its first line alone read 'Target module GPT2Attention('."""
    with pytest.raises(ConfigError) as e:
        run(tiny_gpt2, tiny_tokenizer, tmp_path / "a", lora=LoraSpec(target_modules=["attn"]))
    message = str(e.value)
    assert "\n" not in message and "Target module GPT2Attention is not supported" in message, message
    assert "Conv1D" in message and len(message) < 400


@pytest.mark.parametrize(("arch", "targets", "named"), [("tiny_gpt2", ["wte"], "transformer.wte (Embedding)"),
                                                         ("tiny_llama", ["q_proj", "embed_tokens"],
                                                          "model.embed_tokens (Embedding)")])
def test_embedding_targets_are_refused_before_training(request, tmp_path, tiny_tokenizer, arch, targets, named):
    """An embedding LoRA (PEFT's lora_embedding_A/B) would train, then be refused by compose, similarity and eval:
    refused up front, naming the module; the model is left as it was (no LoRA layer, same weights)."""
    model = request.getfixturevalue(arch)
    before = state(model)
    with pytest.raises(ConfigError, match=r"linear projections .*not " + named.replace("(", r"\(").replace(")", r"\)")):
        run(model, tiny_tokenizer, tmp_path / "a", lora=LoraSpec(target_modules=targets))
    assert not (tmp_path / "a").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("lora" in n for n, _ in model.named_parameters())
