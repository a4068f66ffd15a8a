"""lorasum.train.packing: layout, exactness against the unpacked batch, fallback; packed training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.data.tokenize import IGNORE_INDEX, Encoded, collate, encode_record
from lorasum.evaluate import answer_token_nll
from lorasum.models import describe_model
from lorasum.train import train_adapter
from lorasum.train.packing import pack, pack_rows, packing_is_exact

TEXTS = [
    ("what is 2 plus 2 ?", "4", ""),
    ("how many apples are left ?", "10 apples are left each day", "the cat and the dog eat 2 apples"),
    ("what is the dose ?", "the dose is 5", "the patient with heart disease"),
    ("which stock ?", "the bond", ""),
    ("what is the interest rate ?", "the rate is 6 %", "the market price of the bond is 100 $ and the tax"),
    ("is the sun red ?", "no the sun is not red", ""),
    ("what is the total ?", "12", "add 2 and 10"),
]
RECORDS = [Record(id=f"r{i}", domain="d", question=q, answer=a, context=c) for i, (q, a, c) in enumerate(TEXTS)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 64))
def test_pack_rows_places_every_example_once_within_capacity(lengths, row_length):
    rows = pack_rows(lengths, row_length)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    cap = max(row_length, *lengths)
    assert all(sum(lengths[i] for i in r) <= cap for r in rows)
    # first-fit: no two rows could be merged into one
    fills = sorted(sum(lengths[i] for i in r) for r in rows)
    assert len(fills) < 2 or fills[0] + fills[1] > cap


def test_pack_layout():
    a = Encoded(input_ids=[1, 5, 6, 7], labels=[IGNORE_INDEX, IGNORE_INDEX, 6, 7])
    b = Encoded(input_ids=[1, 8, 9], labels=[1, 8, 9])  # loss_on="all": the first label must go
    out = pack([a, b], row_length=16, pad_token_id=2)
    assert set(out) == {"input_ids", "position_ids", "labels"}
    assert out["input_ids"].shape == (1, 64)  # one row, rounded up to 64
    assert out["input_ids"][0, :7].tolist() == [1, 5, 6, 7, 1, 8, 9]
    assert out["position_ids"][0, :9].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1]  # padding is its own block
    assert out["labels"][0, :7].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 6, 7, IGNORE_INDEX, 8, 9]
    assert bool((out["labels"][0, 7:] == IGNORE_INDEX).all()) and bool((out["input_ids"][0, 7:] == 2).all())
    assert pack([a, b], row_length=5, pad_token_id=2)["input_ids"].shape[0] == 2
    with pytest.raises(ValueError):
        pack([], 8, 0)


def per_example_nll_alone(model, examples) -> list[float]:
    """Independent reference: each example alone, full logits, no padding."""
    device = next(model.parameters()).device
    out = []
    for e in examples:
        ids = torch.tensor([e.input_ids], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        out.append(float(F.cross_entropy(logits, torch.tensor(e.labels[1:], device=device),
                                          ignore_index=IGNORE_INDEX, reduction="sum")))
    return out


def segments(batch, examples) -> list[tuple[int, int, int]]:
    """(row, start, example index) of each example in a packed batch, found from the restarting
    positions and the tokens (padding segments match no example)."""
    index = {tuple(e.input_ids): i for i, e in enumerate(examples)}
    out = []
    for r, (ids, pos) in enumerate(zip(batch["input_ids"].tolist(), batch["position_ids"].tolist())):
        starts = [t for t, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            if tuple(ids[a:b]) in index:
                out.append((r, a, index[tuple(ids[a:b])]))
    return out


def per_example_nll_packed(model, examples, row_length) -> list[float]:
    """Per-example sums read off one packed forward pass (full logits, per-token losses)."""
    batch = pack(examples, row_length, pad_token_id=0)
    on = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    with torch.no_grad():
        logits = model(input_ids=on["input_ids"], position_ids=on["position_ids"], use_cache=False).logits
    tok = F.cross_entropy(logits[:, :-1].transpose(1, 2), on["labels"][:, 1:], ignore_index=IGNORE_INDEX,
                          reduction="none").cpu()  # (R, W-1): loss of the token after each position
    out = [math.nan] * len(examples)
    for r, start, i in segments(batch, examples):
        out[i] = float(tok[r, start : start + len(examples[i].input_ids) - 1].sum())
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40), st.sampled_from([64, 256, 1024]))
def test_pack_holds_every_example_once(lengths, row_length):
    examples = [Encoded(input_ids=[3 + i] * n, labels=[3 + i] * n) for i, n in enumerate(lengths)]
    batch = pack(examples, row_length, pad_token_id=0)
    width = batch["input_ids"].shape[1]
    assert width % 64 == 0 and width <= -(-max(row_length, *lengths) // 64) * 64
    assert batch["input_ids"].shape[0] == len(pack_rows(lengths, row_length))  # no more rows than first-fit
    assert sorted(i for _, _, i in segments(batch, examples)) == list(range(len(examples)))
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(n - 1 for n in lengths)


@pytest.mark.parametrize("loss_on", ["answer", "all"])
@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_packed_per_example_loss_equals_unpacked(request, tiny_tokenizer, model_fixture, loss_on):
    model = request.getfixturevalue(model_fixture)
    examples = [encode_record(tiny_tokenizer, r, 64, loss_on=loss_on) for r in RECORDS]
    assert packing_is_exact(model)
    ref = per_example_nll_alone(model, examples)
    got = per_example_nll_packed(model, examples, row_length=48)  # several examples per row, several rows
    assert 1 < pack(examples, 48, 0)["input_ids"].shape[0] < len(examples)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)
    # the training loss (LM head at the labelled positions only) on the packed batch
    with torch.no_grad():
        nll, n = answer_token_nll(model, pack(examples, 48, tiny_tokenizer.pad_token_id))
        nll_pad, n_pad = answer_token_nll(model, collate(examples, tiny_tokenizer.pad_token_id))
    assert n == n_pad == sum(sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in examples)
    assert float(nll) == pytest.approx(sum(ref), rel=1e-5)
    assert float(nll_pad) == pytest.approx(sum(ref), rel=1e-5)


def test_packed_loss_with_active_lora(tiny_tokenizer, tiny_llama):
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    examples = [encode_record(tiny_tokenizer, r, 64) for r in RECORDS]
    ref = per_example_nll_alone(peft_model, examples)
    with torch.no_grad():
        nll, _ = answer_token_nll(peft_model, pack(examples, 40, tiny_tokenizer.pad_token_id))
    assert float(nll) == pytest.approx(sum(ref), rel=1e-5)


class _IgnoresPositions(torch.nn.Module):
    """A causal LM that drops ``position_ids``: packed examples would see each other."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, position_ids=None, **kw):
        return self.inner(input_ids=input_ids, **kw)


def test_probe_detects_models_that_mix_packed_examples(tiny_gpt2):
    assert packing_is_exact(tiny_gpt2)
    assert not packing_is_exact(_IgnoresPositions(tiny_gpt2))


def _train(model, tok, out, **train_kw):
    train = TrainSpec(learning_rate=1e-2, max_steps=4, batch_size=5, **train_kw)
    return train_adapter(model, tok, RECORDS, lora=LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0), train=train,
                         seed=0, out_dir=out, max_length=64, model_info=describe_model(model, name="tiny"),
                         progress=False)


@pytest.mark.parametrize("loss_on", ["answer", "all"])
def test_packed_training_equals_padded_training(tmp_path, tiny_tokenizer, tiny_llama, loss_on):
    # tiny Llama has no dropout, so both layouts see the same function
    packed = _train(tiny_llama, tiny_tokenizer, tmp_path / "p", packing=True, pack_length=40, loss_on=loss_on)
    padded = _train(tiny_llama, tiny_tokenizer, tmp_path / "u", packing=False, loss_on=loss_on)
    assert json.loads((tmp_path / "p" / "lorasum.json").read_text())["packed"] is True
    assert json.loads((tmp_path / "u" / "lorasum.json").read_text())["packed"] is False
    assert packed.tokens == padded.tokens
    assert packed.losses == pytest.approx(padded.losses, rel=1e-5)
    a, b = load_file(str(tmp_path / "p" / "adapter_model.safetensors")), load_file(
        str(tmp_path / "u" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_loss_on_all_trains_on_more_tokens(tmp_path, tiny_tokenizer, tiny_llama):
    ans = _train(tiny_llama, tiny_tokenizer, tmp_path / "a")
    every = _train(tiny_llama, tiny_tokenizer, tmp_path / "b", loss_on="all")
    assert ans.tokens == every.tokens and ans.losses[0] != pytest.approx(every.losses[0], rel=1e-3)
