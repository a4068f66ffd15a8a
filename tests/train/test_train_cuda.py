"""The CUDA path of training and evaluation (bfloat16 weights, bf16 autocast, fused AdamW); skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.data.tokenize import collate, encode_record
from lorasum.evaluate import answer_token_nll, perplexity
from lorasum.models import describe_model, resolve_dtype
from lorasum.train import train_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RECORDS = [
    Record(id=f"r{i}", domain="d", question=q, answer=a)
    for i, (q, a) in enumerate([("what is the dose ?", "the dose is 5"), ("is the sun red ?", "no the sun is blue"),
                                ("which drug ?", "the red drug"), ("what is 2 plus 2 ?", "4")] * 2)
]


def _no_attention_dropout(model):
    """GPT-2's configs default to attention dropout 0.1, which variable-length attention does not have (the
    parallel trainer then takes the masked-SDPA passes without CUDA graphs): set it to 0 where varlen is tested."""
    for key in ("attn_pdrop", "attention_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and name.endswith("attn_dropout"):
            m.p = 0.0
    return model


def _no_dropout(model):
    """Every dropout of the base model off (GPT-2's residual and embedding dropout too): two runs that draw their
    masks differently (eager passes, CUDA graphs) can then be compared step by step. With GPT-2's 0.1 they differed
    by up to 8 % at some steps on the H200 (7.5 % on the CPU with the eager static layout), 2e-7 without."""
    _no_attention_dropout(model)
    for key in ("resid_pdrop", "embd_pdrop"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_gpt2_with_attention_dropout_is_trained_with_varlen_attention(tiny_gpt2):
    from lorasum.train.varlen import varlen_supported

    model = tiny_gpt2.to(device="cuda", dtype=torch.bfloat16)
    assert model.config.attn_pdrop > 0 and varlen_supported(model)


def _flash(q, k, v, cu, longest, p, scale=None):
    from lorasum.train.varlen import flash_varlen_attention

    return flash_varlen_attention(q, k, v, cu, longest, dropout_p=p, scale=scale)


def _segments(lengths, heads=4, dim=32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, heads, dim, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return q, k, v, cu


def test_flash_varlen_without_dropout_equals_sdpa_per_example():
    """lorasum::flash_varlen with p = 0: outputs and gradients of causal SDPA run example by example (fp32),
    up to bfloat16 rounding; torch.library.opcheck passes (schema, fake kernel, autograd registration)."""
    from lorasum.train.varlen import flash_varlen_attention

    lengths = [5, 17, 1, 40]
    q, k, v, cu = _segments(lengths)
    out = _flash(q, k, v, cu, max(lengths), 0.0)
    grad = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    bounds = cu.tolist()
    ref = torch.cat([F.scaled_dot_product_attention(qf[a:b].transpose(0, 1), kf[a:b].transpose(0, 1),
                                                    vf[a:b].transpose(0, 1), is_causal=True).transpose(0, 1)
                     for a, b in zip(bounds[:-1], bounds[1:])])
    rq, rk, rv = torch.autograd.grad(ref, (qf, kf, vf), grad.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)
    flash_varlen_attention(q, k, v, cu, max(lengths), 0.0)  # defines the op
    # the random state it returns advances at every call, so the eager-vs-traced comparison does not apply
    torch.library.opcheck(torch.ops.lorasum.flash_varlen.default, (q, k, v, cu, max(lengths), 0.0, 32 ** -0.5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_flash_varlen_dropout_zeroes_probabilities_and_rescales_the_rest():
    """With queries and keys 0 every attention probability of row i is 1/(i+1); with the values one-hot,
    the output is the attention matrix after dropout: entries 0 (dropped, a fraction p of them) or
    1/((i+1)(1-p)) (kept and rescaled), nothing above the diagonal. The same seed gives the same mask."""
    L, H, p = 64, 4, 0.3
    q = torch.zeros(L, H, L, device="cuda", dtype=torch.bfloat16)
    v = torch.eye(L, device="cuda", dtype=torch.bfloat16).unsqueeze(1).expand(L, H, L).contiguous()
    cu = torch.tensor([0, L], dtype=torch.int32, device="cuda")
    torch.manual_seed(1)
    out = _flash(q, q, v, cu, L, p).float()  # (L, H, L): row i, head h, key j
    torch.manual_seed(1)
    again = _flash(q, q, v, cu, L, p).float()
    other = _flash(q, q, v, cu, L, p).float()
    assert torch.equal(out, again) and not torch.equal(out, other)
    i = torch.arange(L, device="cuda").view(L, 1, 1)
    j = torch.arange(L, device="cuda").view(1, 1, L)
    below = (j <= i).expand(L, H, L)
    assert torch.all(out[~below] == 0)
    kept = out[below] != 0
    assert float(1 - kept.float().mean()) == pytest.approx(p, abs=0.03)  # 8,320 draws: std 0.005
    expected = (1 / ((i + 1) * (1 - p))).expand(L, H, L)[below]
    torch.testing.assert_close(out[below][kept], expected[kept], rtol=1e-2, atol=0)


def test_flash_varlen_backward_uses_the_forward_mask():
    """out = P_drop V is linear in V, so <G, out> = <V, dL/dV> with L = <G, out> exactly when the backward
    regenerates the forward's dropout mask; another mask would give an unrelated number."""
    lengths = [30, 64, 7]
    q, k, v, cu = _segments(lengths, seed=3)
    torch.manual_seed(5)
    out = _flash(q, k, v, cu, max(lengths), 0.5)
    grad = torch.randn_like(out)
    (dv,) = torch.autograd.grad(out, (v,), grad)
    lhs = float((grad.float() * out.float()).sum())
    rhs = float((dv.float() * v.float()).sum())
    assert rhs == pytest.approx(lhs, rel=2e-2)
    torch.manual_seed(6)
    out2 = _flash(q, k, v, cu, max(lengths), 0.5)
    assert abs(float((grad.float() * out2.float()).sum()) - lhs) > 5 * abs(rhs - lhs)  # masks matter


def test_flash_varlen_dropout_draws_a_new_mask_at_each_cuda_graph_replay():
    L, H, p = 32, 2, 0.5
    q = torch.zeros(L, H, L, device="cuda", dtype=torch.bfloat16)
    v = torch.eye(L, device="cuda", dtype=torch.bfloat16).unsqueeze(1).expand(L, H, L).contiguous()
    cu = torch.tensor([0, L], dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _flash(q, q, v, cu, L, p)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _flash(q, q, v, cu, L, p)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.float().clone())
    below = torch.ones(L, L, device="cuda").tril().bool().unsqueeze(1).expand(L, H, L)
    for d in draws:
        assert float((d[below] == 0).float().mean()) == pytest.approx(p, abs=0.06)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


@pytest.mark.parametrize(("graphs", "compile"), [(False, False), (True, False), (True, True)])
def test_gpt2_with_attention_dropout_trains_with_varlen_attention(tmp_path, tiny_tokenizer, tiny_gpt2, graphs,
                                                                  compile, monkeypatch):
    """GPT-2's default attention dropout (0.1) through lorasum::flash_varlen, eager, in CUDA graphs and compiled:
    the adapters learn, and their losses are those of the masked-SDPA passes up to the noise of other dropout
    draws (the other dropouts of the base model off). Compiled from a fresh process's state (operator not yet
    defined), the attention call stays inside the layer's graph: dynamo never compiles it as a frame of its own
    (it did when the operator was defined during tracing: a graph break and a recompilation)."""
    import json

    import lorasum.train.varlen as varlen_module
    from lorasum.train import AdapterTask, train_adapters

    monkeypatch.setattr(varlen_module, "_FLASH_OP", None)
    torch._dynamo.reset()  # no compiled frame left from an earlier test

    model = tiny_gpt2.to(device="cuda", dtype=torch.bfloat16)
    for key in ("resid_pdrop", "embd_pdrop"):
        setattr(model.config, key, 0.0)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and not name.endswith("attn_dropout"):
            m.p = 0.0
    assert model.config.attn_pdrop == pytest.approx(0.1)
    info = describe_model(model, name="tiny")
    recs = [RECORDS, RECORDS[::-1], RECORDS[2:] + RECORDS[:2]]
    train = TrainSpec(learning_rate=1e-2, max_steps=16, batch_size=3, pack_length=64, parallel_max_tokens=40,
                      compile=compile)
    runs = {}
    for varlen in (False, True):
        tasks = [AdapterTask(records=r, seed=s, out_dir=tmp_path / f"v{varlen}-{s}") for s, r in enumerate(recs)]
        runs[varlen] = train_adapters(model, tiny_tokenizer, tasks, lora=LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0),
                                      train=train, max_length=64, model_info=info, progress=False, varlen=varlen,
                                      graphs=graphs if varlen else False)
    for a, b in zip(runs[False], runs[True]):
        meta = json.loads((b.out_dir / "lorasum.json").read_text())
        assert meta["varlen_attention"] is True and meta["cuda_graphs"] is graphs
        assert sum(b.losses[-3:]) < 0.8 * sum(b.losses[:3])
        assert sum(b.losses[-4:]) == pytest.approx(sum(a.losses[-4:]), rel=0.1)
    assert model.config._attn_implementation == "sdpa" and model.config.attn_pdrop == pytest.approx(0.1)
    entries = getattr(torch._dynamo.eval_frame, "_debug_get_cache_entry_list", None)
    if compile and entries is not None:
        assert not entries(varlen_module.flash_varlen_attention.__code__)


def test_train_and_evaluate_on_cuda_bfloat16(tmp_path, tiny_tokenizer, tiny_llama):
    device = torch.device("cuda")
    model = tiny_llama.to(device=device, dtype=resolve_dtype("auto", device))
    assert model.dtype == torch.bfloat16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_adapter_cuda(model, tiny_tokenizer, tmp_path / "a")
    assert sum(res.losses[-3:]) < 0.7 * sum(res.losses[:3])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    loaded = PeftModel.from_pretrained(model, str(tmp_path / "a")).eval()
    batch = collate([encode_record(tiny_tokenizer, r, 64) for r in RECORDS], tiny_tokenizer.pad_token_id)
    with torch.inference_mode():
        nll, n = answer_token_nll(loaded, batch)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            logits = loaded(**inputs).logits
    ref = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                          batch["labels"][:, 1:].reshape(-1).to(device), reduction="sum")
    assert float(nll) == pytest.approx(float(ref), rel=2e-2)
    ppl = perplexity(loaded, tiny_tokenizer, RECORDS, max_length=64, device="cuda")
    assert ppl.n_tokens == n and ppl.nll_sum == pytest.approx(float(nll), rel=1e-3)


def train_adapter_cuda(model, tok, out):
    return train_adapter(model, tok, RECORDS, lora=LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0),
                         train=TrainSpec(learning_rate=3e-2, max_steps=20, batch_size=4), seed=0, out_dir=out,
                         max_length=64, model_info=describe_model(model, name="tiny"), progress=False)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_packing_exact_on_cuda(request, tiny_tokenizer, model_fixture):
    from test_train_packing import RECORDS as LONG, per_example_nll_alone, per_example_nll_packed

    from lorasum.train.packing import pack, packing_is_exact

    model = request.getfixturevalue(model_fixture).to("cuda")  # float32: the exactness check
    examples = [encode_record(tiny_tokenizer, r, 64) for r in LONG]
    assert packing_is_exact(model)
    ref = per_example_nll_alone(model, examples)
    assert per_example_nll_packed(model, examples, 48) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    model.to(torch.bfloat16)  # the training setting: bf16 weights and autocast
    with torch.inference_mode():
        packed, n = answer_token_nll(model, pack(examples, 48, tiny_tokenizer.pad_token_id))
        padded, n_pad = answer_token_nll(model, collate(examples, tiny_tokenizer.pad_token_id))
    assert n == n_pad and float(packed) == pytest.approx(float(padded), rel=2e-2)


def test_compiled_training_matches_eager(tmp_path, tiny_tokenizer, tiny_llama):
    model = tiny_llama.to(device="cuda", dtype=torch.bfloat16)
    train = TrainSpec(learning_rate=3e-2, max_steps=8, batch_size=4)
    kw = dict(lora=LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0), seed=0, max_length=64,
              model_info=describe_model(model, name="tiny"), progress=False)
    eager = train_adapter(model, tiny_tokenizer, RECORDS, train=train, out_dir=tmp_path / "e", **kw)
    compiled = train_adapter(model, tiny_tokenizer, RECORDS, train=train.model_copy(update={"compile": True}),
                             out_dir=tmp_path / "c", **kw)
    assert compiled.losses == pytest.approx(eager.losses, rel=5e-2)
    assert all(getattr(layer, "_compiled_call_impl", None) is None for layer in model.model.layers)


@pytest.mark.parametrize("varlen", [False, True])
def test_parallel_training_on_cuda_matches_sequential(tmp_path, tiny_tokenizer, tiny_llama, varlen):
    """Three adapters trained together on CUDA (bf16 autocast, fused AdamW; varlen_attn or masked SDPA)
    against each trained alone: same losses up to bfloat16 rounding."""
    from lorasum.train import AdapterTask, train_adapters

    device = torch.device("cuda")
    model = tiny_llama.to(device=device, dtype=torch.bfloat16)
    lora = LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0)
    train = TrainSpec(learning_rate=1e-2, max_steps=12, batch_size=3, pack_length=64)
    recs = [RECORDS, RECORDS[::-1], RECORDS[2:] + RECORDS[:2]]
    info = describe_model(model, name="tiny")
    seq = [train_adapter(model, tiny_tokenizer, r, lora=lora, train=train, seed=s, out_dir=tmp_path / f"s{s}",
                         max_length=64, model_info=info, progress=False) for s, r in enumerate(recs)]
    par = train_adapters(model, tiny_tokenizer, [AdapterTask(records=r, seed=s, out_dir=tmp_path / f"p{s}")
                                                 for s, r in enumerate(recs)],
                         lora=lora, train=train, max_length=64, model_info=info, progress=False, varlen=varlen)
    for a, b in zip(seq, par):
        assert b.losses == pytest.approx(a.losses, rel=3e-2)
        assert sum(b.losses[-3:]) < 0.8 * sum(b.losses[:3])
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_varlen_attention_on_cuda_equals_masked_sdpa(request, tiny_tokenizer, model_fixture):
    """torch's varlen_attn through lorasum.train.varlen gives the packed batch's per-token NLL of masked SDPA
    (GPT-2: learned absolute positions and Conv1D; Llama: rotary positions)."""
    from test_train_packing import RECORDS as LONG

    from lorasum.evaluate.nll import token_nll
    from lorasum.train.packing import pack
    from lorasum.train.varlen import varlen_attention, varlen_kwargs, varlen_supported

    model = _no_attention_dropout(request.getfixturevalue(model_fixture)).to(device="cuda", dtype=torch.bfloat16)
    assert varlen_supported(model)
    batch = pack([encode_record(tiny_tokenizer, r, 64) for r in LONG], 40, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        ref, flat = token_nll(model, batch)
        with varlen_attention(model):
            got, flat2 = token_nll(model, batch | varlen_kwargs(batch["position_ids"]))
    assert torch.equal(flat, flat2)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("model_fixture", "compile"), [("tiny_llama", False), ("tiny_llama", True),
                                                         ("tiny_gpt2", False), ("tiny_gpt2", True)])
def test_parallel_cuda_graphs_match_eager_passes(request, tmp_path, tiny_tokenizer, model_fixture, compile):
    """Passes replayed as CUDA graphs (lorasum.train.parallel_graphs; several passes a step, so several
    graph shapes) give the losses and adapters of the eager passes, up to bfloat16 rounding; with dropout
    they train too. Also with the decoder layers compiled; GPT-2 (Conv1D, learned positions) and Llama."""
    import json

    from safetensors.torch import load_file

    from lorasum.train import AdapterTask, train_adapters

    model = _no_dropout(request.getfixturevalue(model_fixture)).to(device="cuda", dtype=torch.bfloat16)
    info = describe_model(model, name="tiny")
    recs = [RECORDS, RECORDS[::-1], RECORDS[2:] + RECORDS[:2]]
    train = TrainSpec(learning_rate=1e-2, max_steps=12, batch_size=3, pack_length=64, parallel_max_tokens=40,
                      compile=compile)
    runs = {}
    for graphs, dropout in ((False, 0.0), (True, 0.0), (True, 0.1)):
        tasks = [AdapterTask(records=r, seed=s, out_dir=tmp_path / f"g{graphs}{dropout}-{s}") for s, r in enumerate(recs)]
        runs[graphs, dropout] = train_adapters(model, tiny_tokenizer, tasks, lora=LoraSpec(r=4, lora_alpha=16,
                                                                                           lora_dropout=dropout),
                                               train=train, max_length=64, model_info=info, progress=False,
                                               varlen=True, graphs=graphs)
    for a, b, c in zip(runs[False, 0.0], runs[True, 0.0], runs[True, 0.1]):
        assert json.loads((b.out_dir / "lorasum.json").read_text())["cuda_graphs"] is True
        assert json.loads((a.out_dir / "lorasum.json").read_text())["cuda_graphs"] is False
        assert b.losses == pytest.approx(a.losses, rel=2e-2)
        x, y = load_file(str(a.out_dir / "adapter_model.safetensors")), load_file(str(b.out_dir / "adapter_model.safetensors"))
        for key in x:  # relative Frobenius norm: one compiled GPT-2 element once differed by 0.014 (bf16)
            assert float((y[key] - x[key]).norm() / x[key].norm()) < 2e-2, key
        assert sum(c.losses[-3:]) < 0.8 * sum(c.losses[:3]) and c.losses != pytest.approx(b.losses, rel=1e-4)
    assert model.config._attn_implementation == "sdpa"


def test_passes_past_the_graph_cap_are_padded_to_a_captured_shape(monkeypatch, tmp_path, tiny_tokenizer, tiny_llama):
    """With room for one graph, passes of other shapes replay the captured graph of a larger shape (or are
    captured when larger than it); the adapters are those of the eager passes, up to bfloat16 rounding."""
    import lorasum.train.parallel_graphs as pg
    from lorasum.train import AdapterTask, train_adapters

    model = tiny_llama.to(device="cuda", dtype=torch.bfloat16)
    info = describe_model(model, name="tiny")
    real_layout, real_run = pg.static_layout, pg.GraphedPasses.run_part
    seen = []

    def run_part(self, *args):
        real_run(self, *args)
        seen.append((self.captured, self.padded))

    monkeypatch.setattr(pg, "static_layout", lambda *a, **kw: real_layout(*a, **{"granule": 8} | kw))
    monkeypatch.setattr(pg, "_MAX_GRAPHS", 1)
    monkeypatch.setattr(pg.GraphedPasses, "run_part", run_part)
    recs = [RECORDS, RECORDS[::-1], RECORDS[2:] + RECORDS[:2]]
    train = TrainSpec(learning_rate=1e-2, max_steps=12, batch_size=3, pack_length=64, parallel_max_tokens=40)
    runs = {}
    for graphs in (False, True):
        tasks = [AdapterTask(records=r, seed=s, out_dir=tmp_path / f"g{graphs}-{s}") for s, r in enumerate(recs)]
        runs[graphs] = train_adapters(model, tiny_tokenizer, tasks, lora=LoraSpec(r=4, lora_alpha=16, lora_dropout=0.0),
                                      train=train, max_length=64, model_info=info, progress=False, varlen=True,
                                      graphs=graphs)
    assert seen and seen[-1][1] > 0, "no pass was padded to a captured shape"
    for a, b in zip(runs[False], runs[True]):
        assert b.losses == pytest.approx(a.losses, rel=2e-2)


@pytest.mark.parametrize("limit", ["memory", "out_of_memory"])
def test_graphs_bounded_by_gpu_memory_give_the_eager_adapters(monkeypatch, tmp_path, tiny_tokenizer, tiny_llama,
                                                               caplog, limit):
    """"memory": after the first capture no room is left for another, so passes of new shapes are padded to the
    captured shape or run eagerly; "out_of_memory": the second capture runs out of memory, every graph is
    released and the passes run eagerly. Either way the adapters are those of eager passes (bfloat16 rounding)."""
    import logging

    from safetensors.torch import load_file

    import lorasum.train.parallel_graphs as pg
    from lorasum.train import AdapterTask, train_adapters

    model = tiny_llama.to(device="cuda", dtype=torch.bfloat16)
    info = describe_model(model, name="tiny")
    recs = [RECORDS, RECORDS[::-1], RECORDS[2:] + RECORDS[:2]]
    train = TrainSpec(learning_rate=1e-2, max_steps=12, batch_size=3, pack_length=64, parallel_max_tokens=40)
    real_layout, real_body, real_run = pg.static_layout, pg.GraphedPasses._body, pg.GraphedPasses.run_part
    monkeypatch.setattr(pg, "static_layout", lambda *a, **kw: real_layout(*a, **{"granule": 8} | kw))
    seen = []

    def run_part(self, *args):
        real_run(self, *args)
        seen.append((self.captured, self.padded, self.eager, self.capture, len(self._graphs)))

    def body(self, s):
        if limit == "out_of_memory" and torch.cuda.is_current_stream_capturing() and self.captured >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        real_body(self, s)

    monkeypatch.setattr(pg.GraphedPasses, "run_part", run_part)
    monkeypatch.setattr(pg.GraphedPasses, "_body", body)
    if limit == "memory":
        monkeypatch.setattr(pg.GraphedPasses, "_room_for_capture", lambda self, tokens: False)
    runs = {}
    with caplog.at_level(logging.INFO, logger="lorasum"):
        for graphs in (False, True):
            tasks = [AdapterTask(records=r, seed=s, out_dir=tmp_path / f"{limit}{graphs}-{s}") for s, r in enumerate(recs)]
            runs[graphs] = train_adapters(model, tiny_tokenizer, tasks, lora=LoraSpec(r=4, lora_alpha=16,
                                                                                      lora_dropout=0.0),
                                          train=train, max_length=64, model_info=info, progress=False, varlen=True,
                                          graphs=graphs)
    if limit == "memory":
        assert seen[-1][0] == 1 and seen[-1][1] + seen[-1][2] > 0 and seen[-1][3], seen[-1]
    else:
        assert seen[-1][0] == 1 and not seen[-1][3] and seen[-1][4] == 0, seen[-1]
        assert "CUDA graphs off for this training (OutOfMemoryError" in caplog.text
    for a, b in zip(runs[False], runs[True]):
        assert b.losses == pytest.approx(a.losses, rel=2e-2)
        x, y = load_file(str(a.out_dir / "adapter_model.safetensors")), load_file(str(b.out_dir / "adapter_model.safetensors"))
        for key in x:
            assert float((y[key] - x[key]).norm() / x[key].norm()) < 2e-2, key
