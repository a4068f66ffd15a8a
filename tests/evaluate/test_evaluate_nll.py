"""lorasum.evaluate: answer-position NLL against the full-logits cross-entropy, perplexity sums."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from lorasum.data.records import Record
from lorasum.data.tokenize import collate, encode_record
from lorasum.evaluate import Perplexity, answer_token_nll, perplexity

QUESTIONS = [
    ("what is 2 plus 2 ?", "4", ""),
    ("how many apples are left ?", "10 apples are left each day", "the cat and the dog eat 2 apples"),
    ("what is the dose ?", "the dose is 5", "the patient with heart disease"),
    ("which stock ?", "the bond", ""),
    ("what is the interest rate ?", "the rate is 6 %", "the market price of the bond is 100 $"),
    ("is the sun red ?", "no the sun is not red", ""),
    ("what is the total ?", "12", "add 2 and 10"),
]


def records(n: int = 7) -> list[Record]:
    return [
        Record(id=f"r{i}", domain="d", question=q, answer=a, context=c)
        for i, (q, a, c) in enumerate((QUESTIONS * 3)[:n])
    ]


def full_logits_nll(model, batch) -> tuple[float, int]:
    """Independent reference: full (B, T, V) logits, shifted labels, F.cross_entropy."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                          ignore_index=-100, reduction="sum")
    return float(nll), int((labels != -100).sum())


def batch_of(tok, recs, max_length=64):
    return collate([encode_record(tok, r, max_length) for r in recs], tok.pad_token_id)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_fast_nll_equals_full_logits_cross_entropy(request, tiny_tokenizer, model_fixture):
    model = request.getfixturevalue(model_fixture)
    batch = batch_of(tiny_tokenizer, records())
    assert (batch["attention_mask"] == 0).any()  # padding present
    with torch.no_grad():
        nll, n = answer_token_nll(model, batch)
    ref, n_ref = full_logits_nll(model, batch)
    assert n == n_ref
    assert float(nll) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_right_padded_batches_run_unmasked_and_left_padded_ones_keep_their_mask(request, tiny_tokenizer,
                                                                                model_fixture):
    """A right-padded batch goes to the model without an attention mask (causal attention hides the padding
    after each real token) and scores each example as it scores alone; a left-padded batch keeps its mask."""
    from lorasum.evaluate.nll import _split_head, token_nll

    model = request.getfixturevalue(model_fixture)
    recs = records()
    batch = batch_of(tiny_tokenizer, recs)
    assert (batch["attention_mask"] == 0).any()
    seen = []
    hook = _split_head(model)[0].register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")), with_kwargs=True)
    try:
        with torch.no_grad():
            nll, flat = token_nll(model, batch)
            assert seen == [None]  # right padding: no mask
            alone = [float(answer_token_nll(model, batch_of(tiny_tokenizer, [r]))[0]) for r in recs]
            left = {k: torch.stack([torch.roll(row, int((m == 0).sum())) for row, m in zip(v, batch["attention_mask"])])
                    for k, v in batch.items()}
            seen.clear()
            left_nll, left_n = answer_token_nll(model, left)
    finally:
        hook.remove()
    T = batch["input_ids"].shape[1]
    per_example = [float(nll[flat // T == b].sum()) for b in range(len(recs))]
    assert per_example == pytest.approx(alone, rel=1e-5)
    assert seen and seen[0] is not None  # left padding: the mask is passed
    ref, n_ref = full_logits_nll(model, left)
    assert left_n == n_ref and float(left_nll) == pytest.approx(ref, rel=1e-5)
    labelled = dict(batch)  # a caller's batch that scores a padded position keeps its mask too
    labelled["labels"] = torch.where(batch["attention_mask"] == 0, batch["input_ids"], batch["labels"])
    seen.clear()
    hook = _split_head(model)[0].register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")),
                                                           with_kwargs=True)
    try:
        with torch.no_grad():
            token_nll(model, labelled)
    finally:
        hook.remove()
    assert seen and seen[0] is not None
    assert float(left_nll) == pytest.approx(sum(alone), rel=1e-4) or model_fixture == "tiny_gpt2"


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_fast_nll_with_active_lora_adapter(request, tiny_tokenizer, model_fixture):
    model = request.getfixturevalue(model_fixture)
    targets = ["c_attn"] if model_fixture == "tiny_gpt2" else ["q_proj", "v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets,
                                                  fan_in_fan_out=model_fixture == "tiny_gpt2"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)  # B = 0 at init would make the adapter a no-op
    batch = batch_of(tiny_tokenizer, records())
    with torch.no_grad():
        nll, _ = answer_token_nll(peft_model, batch)
        base_nll, _ = full_logits_nll(peft_model.get_base_model(), batch)  # LoRA injected: same forward
    ref, _ = full_logits_nll(peft_model, batch)
    assert float(nll) == pytest.approx(ref, rel=1e-5)
    assert base_nll == pytest.approx(ref, rel=1e-6)
    with peft_model.disable_adapter(), torch.no_grad():
        assert float(answer_token_nll(peft_model, batch)[0]) != pytest.approx(ref, rel=1e-3)


def test_nll_is_differentiable(tiny_tokenizer, tiny_llama):
    nll, n = answer_token_nll(tiny_llama, batch_of(tiny_tokenizer, records(3)))
    (nll / n).backward()
    assert tiny_llama.lm_head.weight.grad is not None


def test_perplexity_matches_per_example_reference(tiny_tokenizer, tiny_gpt2):
    recs = records()
    got = perplexity(tiny_gpt2, tiny_tokenizer, recs, max_length=64, batch_size=3)
    pairs = [full_logits_nll(tiny_gpt2, batch_of(tiny_tokenizer, [r])) for r in recs]
    assert got.n_examples == len(recs)
    assert got.n_tokens == sum(n for _, n in pairs)
    assert got.nll_sum == pytest.approx(sum(s for s, _ in pairs), rel=1e-5)
    assert got.ppl == pytest.approx(math.exp(got.nll_sum / got.n_tokens))


def test_perplexity_independent_of_batch_size_and_order(tiny_tokenizer, tiny_llama):
    recs = records(20)
    ref = perplexity(tiny_llama, tiny_tokenizer, recs, max_length=64, batch_size=1)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    for bs, rs in [(3, recs), (8, shuffled), (64, shuffled)]:
        got = perplexity(tiny_llama, tiny_tokenizer, rs, max_length=64, batch_size=bs)
        assert (got.n_tokens, got.n_examples) == (ref.n_tokens, ref.n_examples)
        assert got.nll_sum == pytest.approx(ref.nll_sum, rel=1e-5)


def test_perplexity_add_equals_pooled(tiny_tokenizer, tiny_gpt2):
    recs = records(7)
    a = perplexity(tiny_gpt2, tiny_tokenizer, recs[:2], max_length=64)
    b = perplexity(tiny_gpt2, tiny_tokenizer, recs[2:], max_length=64)
    pooled = perplexity(tiny_gpt2, tiny_tokenizer, recs, max_length=64)
    s = a + b
    assert (s.n_tokens, s.n_examples) == (pooled.n_tokens, pooled.n_examples)
    assert s.nll_sum == pytest.approx(pooled.nll_sum, rel=1e-5)
    assert s.ppl == pytest.approx(pooled.ppl, rel=1e-5)
    # token-weighted, not the mean of the two perplexities
    assert s.ppl != pytest.approx((a.ppl + b.ppl) / 2, rel=1e-4)


def test_perplexity_dataclass():
    p = Perplexity(nll_sum=6.0, n_tokens=3, n_examples=2)
    assert p.mean_nll == 2.0 and p.ppl == pytest.approx(math.exp(2.0))
    assert p.to_dict() == {"nll_sum": 6.0, "n_tokens": 3, "n_examples": 2, "mean_nll": 2.0, "ppl": math.exp(2.0)}
    assert math.isnan(Perplexity(0.0, 0, 0).mean_nll)
    q = p + Perplexity(0.0, 0, 0)
    assert q == p


def test_perplexity_restores_training_mode(tiny_tokenizer, tiny_gpt2):
    tiny_gpt2.train()
    perplexity(tiny_gpt2, tiny_tokenizer, records(2), max_length=64)
    assert tiny_gpt2.training
    with pytest.raises(ValueError):
        perplexity(tiny_gpt2, tiny_tokenizer, records(2), max_length=64, device="meta")


# -- loss_on="all", sliding windows, token-budget batches ---------------------------------------


def all_token_reference(model, tok, recs) -> tuple[float, int]:
    """Independent reference: each whole text (no truncation) through the model, labels = inputs."""
    total, count = 0.0, 0
    for r in recs:
        ids = torch.tensor([encode_record(tok, r, None).input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        total += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total, count


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_perplexity_on_all_tokens(request, tiny_tokenizer, model_fixture):
    model = request.getfixturevalue(model_fixture)
    recs = records()
    got = perplexity(model, tiny_tokenizer, recs, max_length=64, batch_size=3, loss_on="all")
    ref, n = all_token_reference(model, tiny_tokenizer, recs)
    assert got.n_tokens == n
    assert got.nll_sum == pytest.approx(ref, rel=1e-5)
    answer_only = perplexity(model, tiny_tokenizer, recs, max_length=64, batch_size=3)
    assert answer_only.n_tokens < n


def strided_reference(model, ids: torch.Tensor, labels: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """The loop of Hugging Face's guide "Perplexity of fixed-length models", written out independently:
    windows [begin, begin + window) every ``stride`` tokens; each window scores the tokens after the
    previous window's end."""
    total, count, prev_end, n = 0.0, 0, 0, ids.shape[0]
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        target = labels[begin:end].clone()
        target[: max(prev_end - begin, 0)] = -100
        with torch.no_grad():
            logits = model(input_ids=ids[None, begin:end]).logits[0]
        total += float(F.cross_entropy(logits[:-1], target[1:], ignore_index=-100, reduction="sum"))
        count += int((target[1:] != -100).sum())
        prev_end = end
        if end == n:
            break
    return total, count


@pytest.mark.parametrize("loss_on", ["answer", "all"])
@pytest.mark.parametrize("window,stride", [(16, 8), (12, 5), (20, 19)])
def test_sliding_window_perplexity_matches_strided_reference(tiny_tokenizer, tiny_llama, loss_on, window, stride):
    recs = [r for r in records(7) if r.context]  # the long ones: 20-30 tokens
    got = perplexity(tiny_llama, tiny_tokenizer, recs, max_length=window, stride=stride, batch_size=4,
                     loss_on=loss_on)
    ref, n = 0.0, 0
    for r in recs:
        e = encode_record(tiny_tokenizer, r, None, loss_on=loss_on)
        s, c = strided_reference(tiny_llama, torch.tensor(e.input_ids), torch.tensor(e.labels), window, stride)
        ref, n = ref + s, n + c
    whole = perplexity(tiny_llama, tiny_tokenizer, recs, max_length=256, loss_on=loss_on)
    assert got.n_tokens == n == whole.n_tokens  # every labelled token scored once, none cut
    assert got.nll_sum == pytest.approx(ref, rel=1e-5)
    assert got.nll_sum != pytest.approx(whole.nll_sum, rel=1e-4)  # less context than the whole text


def test_stride_with_window_longer_than_texts_equals_no_truncation(tiny_tokenizer, tiny_gpt2):
    recs = records()
    a = perplexity(tiny_gpt2, tiny_tokenizer, recs, max_length=200, stride=50)
    b = perplexity(tiny_gpt2, tiny_tokenizer, recs, max_length=200)
    assert (a.n_tokens, a.n_examples) == (b.n_tokens, b.n_examples)
    assert a.nll_sum == pytest.approx(b.nll_sum, rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        perplexity(tiny_gpt2, tiny_tokenizer, recs, max_length=16, stride=16)


def test_token_budget_batches_give_the_same_sums(tiny_tokenizer, tiny_llama):
    recs = records(20)
    ref = perplexity(tiny_llama, tiny_tokenizer, recs, max_length=64, batch_size=1)
    got = perplexity(tiny_llama, tiny_tokenizer, recs, max_length=64, batch_size=1000, max_tokens=70)
    assert got.n_tokens == ref.n_tokens and got.nll_sum == pytest.approx(ref.nll_sum, rel=1e-5)


def test_length_batches_respect_both_limits():
    from lorasum.evaluate.nll import _length_batches

    lengths = [5, 30, 7, 7, 12, 100, 3, 8]
    for batch_size, max_tokens in [(3, None), (100, 30), (2, 40), (8, 1)]:
        batches = list(_length_batches(lengths, batch_size, max_tokens))
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert len(b) <= batch_size
            assert len(b) == 1 or max_tokens is None or len(b) * max(lengths[i] for i in b) <= max_tokens


def test_score_of_pre_tokenised_examples_equals_perplexity(tiny_tokenizer, tiny_gpt2):
    from lorasum.evaluate import encode_for_eval, score

    recs = records(12)
    want = perplexity(tiny_gpt2, tiny_tokenizer, recs, max_length=20, stride=7, batch_size=5)
    examples = encode_for_eval(tiny_tokenizer, recs, max_length=20, stride=7)
    assert len(examples) > len(recs)  # cut into windows
    got = score(tiny_gpt2, examples, pad_token_id=tiny_tokenizer.pad_token_id, n_examples=len(recs), batch_size=3)
    assert (got.n_tokens, got.n_examples) == (want.n_tokens, want.n_examples)
    assert got.nll_sum == pytest.approx(want.nll_sum, rel=1e-6)
    assert score(tiny_gpt2, examples, pad_token_id=0).n_examples == len(examples)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_attention_leaves_out_cudnn_on_cuda():
    from torch.nn.attention import SDPBackend

    from lorasum.evaluate import fast_attention
    from lorasum.evaluate.nll import _SDPA_BACKENDS

    with fast_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.get_autocast_dtype("cuda") == torch.bfloat16
    assert SDPBackend.CUDNN_ATTENTION not in _SDPA_BACKENDS
