"""lorasum.train.parallel: k adapters trained in one pass equal k adapters trained one after the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import get_linear_schedule_with_warmup

from lorasum.adapters import load_adapter
from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.errors import ConfigError, OutputExistsError
from lorasum.evaluate import perplexity
from lorasum.models import describe_model
from lorasum.train import AdapterTask, train_adapter, train_adapters
from lorasum.train.checkpoint import TrainingDiverged
from lorasum.train.parallel import _AdamW, _ParallelLoRA, _Router, linear_schedule

WORDS = ["what is 2 plus 2 ?", "how many apples are left ?", "what is the dose ?", "which stock ?",
         "what is the interest rate ?", "is the sun red ?", "what is the total ?", "the patient with heart disease",
         "the market price of the bond", "add 2 and 10", "the cat and the dog eat 2 apples", "the rate is 6 %"]


def records(domain: str, n: int, shift: int) -> list[Record]:
    return [Record(id=f"{domain}{i}", domain=domain, question=WORDS[(i + shift) % len(WORDS)],
                   answer=WORDS[(2 * i + shift + 3) % len(WORDS)], context=WORDS[(i + 5) % len(WORDS)] if i % 3 else "")
            for i in range(n)]


# three adapters with different data sizes (so they finish at different steps) and two seeds
TASKS = [("math", 9, 0, 0), ("medicine", 5, 4, 0), ("finance", 13, 7, 1)]
TRAIN = dict(learning_rate=5e-3, batch_size=3, epochs=1.0, warmup_ratio=0.2, pack_length=48)


def info_of(model):
    return describe_model(model, name="tiny")


def tasks_for(tmp_path, sub: str, validation: bool = False) -> list[AdapterTask]:
    return [AdapterTask(records=records(d, n, s), seed=seed, out_dir=tmp_path / sub / d,
                        meta={"domains": [d]}, validation=records(d, 3, s + 1) if validation else None)
            for d, n, s, seed in TASKS]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_parallel_equals_sequential_without_dropout(tmp_path, tiny_tokenizer, tiny_gpt2, tiny_llama, arch,
                                                    grad_accum):
    model = tiny_gpt2 if arch == "gpt2" else tiny_llama
    if arch == "gpt2":
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    lora = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0)
    train = TrainSpec(**TRAIN, grad_accum=grad_accum)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seq = [train_adapter(model, tiny_tokenizer, t.records, lora=lora, train=train, seed=t.seed, out_dir=t.out_dir,
                         max_length=64, model_info=info_of(model), meta=t.meta, progress=False)
           for t in tasks_for(tmp_path, "seq")]
    saved = []
    par = train_adapters(model, tiny_tokenizer, tasks_for(tmp_path, "par"), lora=lora, train=train, max_length=64,
                         model_info=info_of(model), progress=False, on_saved=lambda j, r: saved.append(j))
    assert sorted(saved) == [0, 1, 2] and saved[0] == 1  # the smallest data set finishes first
    for s, p in zip(seq, par):
        assert p.steps == s.steps and p.tokens == s.tokens
        assert p.losses == pytest.approx(s.losses, rel=1e-5, abs=1e-6)
        a, b = load_file(str(s.out_dir / "adapter_model.safetensors")), load_file(
            str(p.out_dir / "adapter_model.safetensors"))
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5)  # Adam: lr 5e-3 a step
        ca = json.loads((s.out_dir / "adapter_config.json").read_text())
        cb = json.loads((p.out_dir / "adapter_config.json").read_text())
        for field in ("r", "lora_alpha", "target_modules", "fan_in_fan_out", "base_model_name_or_path", "peft_type"):
            assert cb[field] == ca[field] if field != "target_modules" else sorted(cb[field]) == sorted(ca[field])
        meta = json.loads((p.out_dir / "lorasum.json").read_text())
        assert meta["parallel_adapters"] == 3 and meta["steps"] == s.steps and meta["meta"]["domains"]
    # the trained adapters differ from each other (the test could tell a mix-up)
    assert not torch.allclose(load_adapter(par[0].out_dir).factors[next(iter(load_adapter(par[0].out_dir).factors))].B,
                              load_adapter(par[2].out_dir).factors[next(iter(load_adapter(par[2].out_dir).factors))].B)
    # the base model is untouched and has no LoRA layers left
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not any(isinstance(m, _ParallelLoRA) for m in model.modules())


def test_parallel_adapter_loads_in_peft_with_its_validation_loss(tmp_path, tiny_tokenizer, tiny_llama):
    lora = LoraSpec(r=2, lora_alpha=4, lora_dropout=0.1)
    train = TrainSpec(**TRAIN)
    tasks = tasks_for(tmp_path, "par", validation=True)
    res = train_adapters(tiny_llama, tiny_tokenizer, tasks, lora=lora, train=train, max_length=64,
                         model_info=info_of(tiny_llama), progress=False)
    for t, r in zip(tasks, res):
        peft_model = PeftModel.from_pretrained(tiny_llama, str(r.out_dir))
        try:  # PEFT's own forward with the saved files gives the loss measured inside the parallel model
            alone = perplexity(peft_model, tiny_tokenizer, t.validation, max_length=64, progress=False).mean_nll
        finally:
            peft_model.unload()
        assert r.val_loss == pytest.approx(alone, rel=1e-5)
    base = perplexity(tiny_llama, tiny_tokenizer, tasks[0].validation, max_length=64, progress=False).mean_nll
    assert res[0].val_loss != pytest.approx(base, rel=1e-4)


def test_parallel_lora_layer_matches_each_adapter_alone():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    factors = [(torch.randn(2, 6), torch.randn(5, 2)) for _ in range(3)]
    router = _Router(3, 2, scaling=1.5)
    layer = _ParallelLoRA(base, factors, 0.0, router)
    x = torch.randn(2, 4, 6)
    groups = torch.tensor([[0, 1, 2, -1], [2, 2, 0, 1]])
    router.route(groups)
    y = layer(x)
    for b in range(2):
        for t in range(4):
            g = int(groups[b, t])
            want = base(x[b, t]) + (1.5 * factors[g][1] @ factors[g][0] @ x[b, t] if g >= 0 else 0)
            torch.testing.assert_close(y[b, t], want, rtol=1e-5, atol=1e-6)
    # gradients reach only the adapters whose tokens are in the batch
    router.route(torch.tensor([[1, 1, -1, -1]]))
    layer(x[:1]).sum().backward()
    assert layer.lora_B.grad[:, 1].abs().sum() > 0 and layer.lora_A.grad[:, 1].abs().sum() > 0
    assert float(layer.lora_B.grad[:, 0].abs().sum()) == 0 and float(layer.lora_A.grad[:, 2].abs().sum()) == 0


def test_parallel_lora_layers_compile_to_one_graph_for_all_layers():
    """Every decoder layer of a training pass must reuse one compiled graph: the routing mask is built by
    route(), not cached by the first layer that asks for it (which gave the first layer a graph of its own
    and doubled the compilation of a training run)."""
    from torch._dynamo.testing import CompileCounter

    class Block(torch.nn.Module):
        def __init__(self, router):
            super().__init__()
            self.proj = _ParallelLoRA(torch.nn.Linear(6, 6), [(torch.randn(2, 6), torch.randn(6, 2))
                                                             for _ in range(3)], 0.0, router)

        def forward(self, x):
            return x + torch.tanh(self.proj(x))

    torch.manual_seed(0)
    torch._dynamo.reset()
    try:
        router = _Router(3, 2, scaling=1.5)
        blocks = [Block(router) for _ in range(3)]
        eager = [Block(router) for _ in range(3)]
        for b, e in zip(blocks, eager):
            e.load_state_dict(b.state_dict())
        counter = CompileCounter()
        for b in blocks:
            b.compile(backend=counter, dynamic=True)
        for width in (4, 7):  # two pass sizes: still one graph
            x = torch.randn(1, width, 6, requires_grad=True)
            router.route(torch.randint(-1, 3, (1, width)))
            y = x
            for b in blocks:
                y = b(y)
            want = x
            for e in eager:
                want = e(want)
            torch.testing.assert_close(y, want)
            router.clear()
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()


def test_stacked_adamw_flat_buffers_take_autograd_gradients_of_every_module():
    """The optimiser moves the factors of all modules into flat buffers (one buffer for the lora_A and
    lora_B of modules of different widths): values kept, gradients accumulated by autograd into the attached views over
    several passes, and the step of each adapter equal to torch.optim.AdamW on its own factors."""
    torch.manual_seed(0)
    k = 3
    router = _Router(k, 2, scaling=1.0)
    factors = [[(torch.randn(2, d_in), torch.randn(d_out, 2)) for _ in range(k)] for d_in, d_out in ((5, 4), (4, 3))]
    layers = [_ParallelLoRA(torch.nn.Linear(f[0][0].shape[1], f[0][1].shape[0]), f, 0.0, router) for f in factors]
    twins = [_ParallelLoRA(l.base, f, 0.0, router) for l, f in zip(layers, factors)]  # plain parameters
    params = [p for l in layers for p in (l.lora_A, l.lora_B)]
    before = [p.detach().clone() for p in params]
    opt = _AdamW(params, [1] * 4, k, weight_decay=0.1)
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1 and all(p.is_contiguous() for p in params)
    attached = [p.grad for p in params]
    x = torch.randn(2, 6, 5)
    for groups in (torch.randint(0, k, (2, 6)), torch.randint(-1, k, (2, 6))):  # two passes accumulate
        router.route(groups)
        layers[1](layers[0](x)).square().sum().backward()
        twins[1](twins[0](x)).square().sum().backward()
    plain = [p for l in twins for p in (l.lora_A, l.lora_B)]
    assert all(p.grad is g for p, g in zip(params, attached))
    for p, q in zip(params, plain):
        torch.testing.assert_close(p.grad, q.grad)
    lrs = torch.tensor([1e-2, 3e-3, 0.0])
    refs = [[q[:, j].detach().clone().requires_grad_() for q in plain]
            for j in range(k)]
    for j, ref in enumerate(refs):
        for r, q in zip(ref, plain):
            r.grad = q.grad[:, j].clone()
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        torch.optim.AdamW(ref, lr=float(lrs[j]), weight_decay=0.1).step()
    opt.clip(0.5)
    opt.step(lrs)
    opt.zero_grad()
    for j, ref in enumerate(refs):
        for p, r in zip(params, ref):
            torch.testing.assert_close(p[:, j], r.detach(), rtol=1e-5, atol=1e-7)
    assert all(p.grad is g and not g.any() for p, g in zip(params, attached))


def test_stacked_adamw_equals_torch_adamw_per_adapter():
    """Each adapter's slice follows torch.optim.AdamW with its own learning rate, after
    clip_grad_norm_ of its own gradients; a learning rate of 0 leaves a slice unchanged."""
    torch.manual_seed(0)
    k = 3
    A, B = torch.randn(k, 2, 5), torch.randn(4, k, 2)
    opt = _AdamW([A, B], [0, 1], k, weight_decay=0.1)
    refs = [(A[j].clone().requires_grad_(), B[:, j].clone().requires_grad_()) for j in range(k)]
    torch_opts = [torch.optim.AdamW(list(r), lr=1.0, weight_decay=0.1) for r in refs]
    rates = [[1e-2, 3e-3, 0.0], [2e-2, 1e-3, 0.0], [5e-3, 0.0, 0.0]]
    frozen = (A[2].clone(), B[:, 2].clone())
    for lrs in rates:
        gA, gB = torch.randn_like(A) * 3, torch.randn_like(B) * 3
        A.grad, B.grad = gA.clone(), gB.clone()
        opt.clip(1.0)
        opt.step(torch.tensor(lrs))
        opt.zero_grad()
        for j, ((a, b), o) in enumerate(zip(refs, torch_opts)):
            a.grad, b.grad = gA[j].clone(), gB[:, j].clone()
            torch.nn.utils.clip_grad_norm_([a, b], 1.0)
            o.param_groups[0]["lr"] = lrs[j]
            o.step()
    for j, (a, b) in enumerate(refs[:2]):
        torch.testing.assert_close(A[j], a.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(B[:, j], b.detach(), rtol=1e-5, atol=1e-7)
    assert torch.equal(A[2], frozen[0]) and torch.equal(B[:, 2], frozen[1])


def test_linear_schedule_equals_transformers():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, 3, 17)
    ours = linear_schedule(3, 17)
    for step in range(20):
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_parallel_refuses_existing_output_and_unpacked(tmp_path, tiny_tokenizer, tiny_llama):
    lora, train = LoraSpec(r=2, lora_alpha=4), TrainSpec(**TRAIN)
    tasks = tasks_for(tmp_path, "x")
    tasks[1].out_dir.mkdir(parents=True)
    (tasks[1].out_dir / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="medicine"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks, lora=lora, train=train, max_length=64,
                       model_info=info_of(tiny_llama), progress=False)
    assert (tasks[1].out_dir / "keep.txt").read_text() == "mine" and not tasks[0].out_dir.exists()
    with pytest.raises(ConfigError, match="packed"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, "y"), lora=lora,
                       train=TrainSpec(**TRAIN | {"packing": False}), max_length=64, model_info=info_of(tiny_llama),
                       progress=False)


def test_parallel_divergence_saves_nothing(tmp_path, tiny_tokenizer, tiny_llama):
    with pytest.raises(TrainingDiverged, match="diverged"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, "d"), lora=LoraSpec(r=2, lora_alpha=4),
                       train=TrainSpec(**TRAIN | {"learning_rate": 1e30, "max_grad_norm": None}), max_length=64,
                       model_info=info_of(tiny_llama), progress=False)
    assert not any((tmp_path / "d").glob("*/adapter_model.safetensors"))
    assert not any(isinstance(m, _ParallelLoRA) for m in tiny_llama.modules())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_varlen_attention_gives_the_packed_sdpa_result(tmp_path, tiny_tokenizer, tiny_gpt2, tiny_llama, arch):
    """Per-example attention (the CPU reference of lorasum.train.varlen) through transformers' attention
    interface gives the same adapters as the block-diagonal SDPA mask."""
    model = tiny_gpt2 if arch == "gpt2" else tiny_llama
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    lora, train = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0), TrainSpec(**TRAIN)
    runs = {}
    for varlen in (False, True):
        runs[varlen] = train_adapters(model, tiny_tokenizer, tasks_for(tmp_path, f"v{varlen}", validation=True),
                                      lora=lora, train=train, max_length=64, model_info=info_of(model),
                                      progress=False, varlen=varlen)
    assert model.config._attn_implementation == "sdpa"  # restored
    for a, b in zip(runs[False], runs[True]):
        assert b.losses == pytest.approx(a.losses, rel=1e-5)
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-5)
        assert json.loads((b.out_dir / "lorasum.json").read_text())["varlen_attention"] is True
        x, y = load_file(str(a.out_dir / "adapter_model.safetensors")), load_file(str(b.out_dir / "adapter_model.safetensors"))
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=2e-5)


def test_varlen_kwargs_boundaries():
    from lorasum.train.varlen import varlen_kwargs

    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    kw = varlen_kwargs(pos)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and kw["max_length_q"] == 4
    assert kw["cu_seq_lens_q"].dtype == torch.int32


def test_steps_cut_into_several_passes_give_the_same_adapters(tmp_path, tiny_tokenizer, tiny_llama):
    """parallel_max_tokens bounds a forward pass; a step taken in many passes equals one pass."""
    import lorasum.train.parallel as par

    lora = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0)
    calls = []
    real = par.token_nll

    def counting(model, batch):
        calls.append(int(batch["input_ids"].numel()))
        return real(model, batch)

    runs = {}
    for budget in (100_000, 40):
        calls.clear()
        par.token_nll = counting
        try:
            runs[budget] = train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, f"b{budget}"), lora=lora,
                                          train=TrainSpec(**TRAIN | {"parallel_max_tokens": budget}), max_length=64,
                                          model_info=info_of(tiny_llama), progress=False)
        finally:
            par.token_nll = real
        runs[budget, "passes"] = len(calls)
    assert runs[40, "passes"] > 2 * runs[100_000, "passes"]
    for a, b in zip(runs[100_000], runs[40]):
        assert b.losses == pytest.approx(a.losses, rel=1e-5)
        x, y = load_file(str(a.out_dir / "adapter_model.safetensors")), load_file(str(b.out_dir / "adapter_model.safetensors"))
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=2e-5)


def test_a_diverging_adapter_is_named_and_does_not_reach_the_others_forward(tmp_path, tiny_tokenizer, tiny_llama,
                                                                            monkeypatch):
    """An adapter whose weights become inf is the one the error names; the others' losses stay finite in the
    same pass (tokens are routed with a select, so 0 · inf never mixes into another adapter)."""
    import lorasum.train.parallel as par

    real_step, seen = par._AdamW.step, []

    def poisoned(self, lr):
        real_step(self, lr)
        if self.steps == 1:
            self.params[0].data[:, 2] = float("inf")  # adapter 2's lora_A of the first module

    def losses_seen(losses, outs, learning_rate, since=0):
        seen.append(torch.stack(losses).clone())
        return real_diverged(losses, outs, learning_rate, since=since)

    real_diverged = par._diverged
    monkeypatch.setattr(par._AdamW, "step", poisoned)
    monkeypatch.setattr(par, "_diverged", losses_seen)
    tasks = tasks_for(tmp_path, "nan")
    with pytest.raises(TrainingDiverged, match="finance.*step 2"):  # finance is task 2
        train_adapters(tiny_llama, tiny_tokenizer, tasks, lora=LoraSpec(r=2, lora_alpha=4, lora_dropout=0.0),
                       train=TrainSpec(**TRAIN), max_length=64, model_info=info_of(tiny_llama), progress=False)
    last = seen[-1]
    assert bool(torch.isfinite(last[:, :2]).all()) and not bool(torch.isfinite(last[1, 2]))


@pytest.mark.parametrize("targets", [["lm_head"], ["q_proj", "embed_tokens"]])
def test_unsupported_target_modules_are_refused_before_training(tmp_path, tiny_tokenizer, tiny_llama, targets):
    from lorasum.train.parallel import ParallelUnsupported

    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    flags = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    with pytest.raises(ParallelUnsupported, match="linear projections"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, "u"),
                       lora=LoraSpec(r=2, lora_alpha=4, target_modules=targets), train=TrainSpec(**TRAIN),
                       max_length=64, model_info=info_of(tiny_llama), progress=False)
    assert not (tmp_path / "u").exists()
    assert all(torch.equal(before[n], p) for n, p in tiny_llama.named_parameters())
    assert flags == {n: p.requires_grad for n, p in tiny_llama.named_parameters()} and any(flags.values())
    assert not any("lora" in n for n, _ in tiny_llama.named_parameters())


def _interrupt_at(monkeypatch, n: int, action) -> list:
    """Run ``action()`` before the n-th forward pass of parallel training; returns the pass counter."""
    from tiny_models import at_forward_pass

    return at_forward_pass(monkeypatch, n, action, parallel=True)


def _weights(results) -> list[dict]:
    return [load_file(str(r.out_dir / "adapter_model.safetensors")) for r in results]


def test_group_interrupted_by_a_signal_resumes_to_the_same_adapters(tmp_path, tiny_tokenizer, tiny_gpt2, monkeypatch):
    """SIGINT at step 4 (dropout on: GPT-2's and LoRA's), then resume: the same adapters as without the stop,
    the adapter that had finished is not trained again, the checkpoint is gone at the end."""
    import signal

    from lorasum.train.parallel import ParallelInterrupted
    from tiny_models import signal_self

    lora, train = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.2), TrainSpec(**TRAIN)
    kw = dict(lora=lora, train=train, max_length=64, model_info=info_of(tiny_gpt2), progress=False)
    ref = train_adapters(tiny_gpt2, tiny_tokenizer, tasks_for(tmp_path, "ref"), checkpoint=tmp_path / "ref.ckpt", **kw)
    tasks, ck = tasks_for(tmp_path, "run"), tmp_path / "run.ckpt"
    _interrupt_at(monkeypatch, 4, signal_self(signal.SIGINT))  # steps: medicine 2, math 3, finance 5
    with pytest.raises(ParallelInterrupted) as stop:
        train_adapters(tiny_gpt2, tiny_tokenizer, tasks, checkpoint=ck, **kw)
    assert stop.value.step == 4 and stop.value.checkpoint == ck and (ck / "state.json").is_file()
    assert {p.name for p in stop.value.saved} == {"medicine", "math"} and not tasks[2].out_dir.exists()
    monkeypatch.undo()
    with pytest.raises(OutputExistsError):  # never continued or discarded silently
        train_adapters(tiny_gpt2, tiny_tokenizer, tasks, checkpoint=ck, **kw)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_adapters(tiny_gpt2, tiny_tokenizer, tasks_for(tmp_path, "elsewhere"), checkpoint=ck, **kw)
    kept = tasks[1].out_dir.joinpath("adapter_model.safetensors").stat().st_mtime_ns
    calls = _interrupt_at(monkeypatch, 0, lambda: None)
    res = train_adapters(tiny_gpt2, tiny_tokenizer, tasks, checkpoint=ck, resume=True, **kw)
    assert len(calls) == 1  # only step 5 (finance's last) was left
    assert res[0] is None and res[1] is None and res[2].steps == ref[2].steps and res[2].losses == ref[2].losses
    assert tasks[1].out_dir.joinpath("adapter_model.safetensors").stat().st_mtime_ns == kept
    for want, got in zip(_weights(ref), [load_file(str(t.out_dir / "adapter_model.safetensors")) for t in tasks]):
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not ck.exists() and not (tmp_path / "ref.ckpt").exists()


def test_group_checkpoint_after_a_crash_and_its_checks(tmp_path, tiny_tokenizer, tiny_llama, monkeypatch):
    from lorasum.train.checkpoint import CheckpointError

    lora = LoraSpec(r=2, lora_alpha=4, lora_dropout=0.1)
    kw = dict(lora=lora, max_length=64, model_info=info_of(tiny_llama), progress=False)
    train = TrainSpec(**TRAIN | {"checkpoint_every": 2})
    ref = train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, "ref"), train=train, **kw)
    tasks, ck = tasks_for(tmp_path, "run"), tmp_path / "g.ckpt"

    def crash():
        raise RuntimeError("power cut")

    _interrupt_at(monkeypatch, 5, crash)
    with pytest.raises(RuntimeError, match="power cut"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks, train=train, checkpoint=ck, **kw)
    assert json.loads((ck / "state.json").read_text())["step"] == 4
    monkeypatch.undo()
    other = TrainSpec(**TRAIN | {"checkpoint_every": 2, "learning_rate": 1e-3})
    with pytest.raises(CheckpointError, match="another group"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks, train=other, checkpoint=ck, resume=True, overwrite=True, **kw)
    state = json.loads((ck / "state.json").read_text())
    (ck / "state.json").write_text(json.dumps(state | {"step": 9}))
    with pytest.raises(CheckpointError, match="not those of this group"):
        train_adapters(tiny_llama, tiny_tokenizer, tasks, train=train, checkpoint=ck, resume=True, overwrite=True, **kw)
    (ck / "state.json").write_text(json.dumps(state))
    calls = _interrupt_at(monkeypatch, 0, lambda: None)
    res = train_adapters(tiny_llama, tiny_tokenizer, tasks, train=train, checkpoint=ck, resume=True, overwrite=True,
                         **kw)
    assert len(calls) == 1 and res[2] is not None  # step 5 only; checkpoint_every 2 and 4 were saved
    for t, r in zip(tasks, ref):
        got, want = load_file(str(t.out_dir / "adapter_model.safetensors")), load_file(str(r.out_dir / "adapter_model.safetensors"))
        assert all(torch.equal(want[key], got[key]) for key in want)


@pytest.mark.parametrize("damage", ["bitrot", "nan", "negative_moment", "wrong_format", "missing_file"])
def test_damaged_group_checkpoints_are_refused_with_one_line(tmp_path, tiny_tokenizer, tiny_llama, monkeypatch,
                                                             damage):
    from safetensors.torch import save_file

    from lorasum.storage import sha256_file
    from lorasum.train.checkpoint import CheckpointError

    kw = dict(lora=LoraSpec(r=2, lora_alpha=4), train=TrainSpec(**TRAIN | {"checkpoint_every": 2}), max_length=64,
              model_info=info_of(tiny_llama), progress=False)
    tasks, ck = tasks_for(tmp_path, "run"), tmp_path / "g.ckpt"

    def crash():
        raise RuntimeError("stop")

    _interrupt_at(monkeypatch, 5, crash)
    with pytest.raises(RuntimeError):
        train_adapters(tiny_llama, tiny_tokenizer, tasks, checkpoint=ck, **kw)
    monkeypatch.undo()
    state = json.loads((ck / "state.json").read_text())
    tensors = load_file(str(ck / "group.safetensors"))
    name = next(iter(tensors))
    if damage == "bitrot":
        data = bytearray((ck / "group.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (ck / "group.safetensors").write_bytes(bytes(data))
    elif damage in ("nan", "negative_moment"):
        key = name if damage == "nan" else next(k for k in tensors if k.endswith("exp_avg_sq"))
        tensors[key] = tensors[key].clone().fill_(float("nan") if damage == "nan" else -1.0)
        save_file(tensors, str(ck / "group.safetensors"))
        state["sha256"]["group.safetensors"] = sha256_file(ck / "group.safetensors")
        (ck / "state.json").write_text(json.dumps(state))
    elif damage == "wrong_format":
        (ck / "state.json").write_text(json.dumps(state | {"format": "something/9"}))
    else:
        (ck / "rng.safetensors").unlink()
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    with pytest.raises(CheckpointError) as err:
        train_adapters(tiny_llama, tiny_tokenizer, tasks, checkpoint=ck, resume=True, **kw)
    assert "\n" not in str(err.value) and str(ck) in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in tiny_llama.named_parameters())
    assert not any("lora" in n for n, _ in tiny_llama.named_parameters())


@pytest.mark.parametrize(("arch", "loss_on"), [("gpt2", "answer"), ("llama", "answer"), ("llama", "all")])
def test_static_passes_give_the_adapters_of_the_packed_passes(tmp_path, tiny_tokenizer, tiny_gpt2, tiny_llama, arch,
                                                              loss_on):
    """The static layout of the CUDA-graph path (one padded row, padding in segments of its own, zero-length
    segments, padded scored positions with weight 0, per-token loss weights 1/n_j, the optimiser with its
    bias corrections in tensors), run eagerly on the CPU, trains the adapters of the ordinary passes."""
    import lorasum.train.parallel_graphs as pg

    model = tiny_gpt2 if arch == "gpt2" else tiny_llama
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    lora = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0)
    # several passes a step; on llama no gradient clip, so that the per-token loss weights are seen by Adam
    train = TrainSpec(**TRAIN | {"parallel_max_tokens": 70, "max_grad_norm": 1.0 if arch == "gpt2" else None,
                                 "loss_on": loss_on})
    layouts = []
    real = pg.static_layout

    def small_granule(*args, **kw):
        out = real(*args, **kw, granule=32)  # padding tokens and padded scored positions in every pass
        layouts.append(out)
        return out

    runs = {}
    for graphs in (False, True):
        pg.static_layout = small_granule
        try:
            runs[graphs] = train_adapters(model, tiny_tokenizer, tasks_for(tmp_path, f"g{graphs}", validation=True),
                                          lora=lora, train=train, max_length=64, model_info=info_of(model),
                                          progress=False, varlen=True, graphs=graphs)
        finally:
            pg.static_layout = real
    assert layouts and all(lay["input_ids"].shape[1] % 32 == 0 for lay in layouts)
    assert any((lay["groups"] == -1).any() for lay in layouts) and any((lay["weight"] == 0).any() for lay in layouts)
    assert any((lay["cu_seqlens"][1:] == lay["cu_seqlens"][:-1]).any() for lay in layouts)  # zero-length segments
    for a, b in zip(runs[False], runs[True]):
        assert b.steps == a.steps and b.tokens == a.tokens
        assert b.losses == pytest.approx(a.losses, rel=1e-5)
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-5)
        x, y = load_file(str(a.out_dir / "adapter_model.safetensors")), load_file(str(b.out_dir / "adapter_model.safetensors"))
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=2e-5)
        assert json.loads((b.out_dir / "lorasum.json").read_text())["cuda_graphs"] is False  # nothing captured on CPU


def test_static_layout_fields():
    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel_graphs import static_layout

    ex = [(Encoded(input_ids=[5, 6, 7, 8], labels=[-100, -100, 7, 8]), 1),
          (Encoded(input_ids=[9, 10, 11], labels=[-100, 10, 11]), 0)]
    lay = static_layout(ex, pad_id=0, n_answer=torch.tensor([2.0, 2.0]), k=2, max_seqlen=5, granule=8)
    assert lay["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 0]]
    assert lay["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert lay["groups"].tolist() == [[1, 1, 1, 1, 0, 0, 0, -1]]
    assert lay["cu_seqlens"][:4].tolist() == [0, 4, 7, 8] and set(lay["cu_seqlens"][4:].tolist()) == {8}
    assert lay["cu_seqlens"].shape[0] % 64 == 0
    # position t predicts token t + 1: 1 -> 7, 2 -> 8, 4 -> 10, 5 -> 11; then 4 padded slots
    assert lay["flat"].tolist() == [1, 2, 4, 5, 0, 0, 0, 0]
    assert lay["targets"].tolist() == [7, 8, 10, 11, 0, 0, 0, 0]
    assert lay["owner"].tolist() == [1, 1, 0, 0, 2, 2, 2, 2]
    assert lay["weight"].tolist() == [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="longer than max_seqlen"):
        static_layout(ex, pad_id=0, n_answer=torch.ones(2), k=2, max_seqlen=3)


def test_passes_are_cut_evenly_and_within_the_budget():
    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel import _passes

    items = [(Encoded(input_ids=[1] * n, labels=[1] * n), i % 3) for i, n in enumerate([30, 50, 20, 40, 60, 10, 45, 35])]
    for budget in (500, 290, 200, 120, 60, 55):
        parts = _passes(items, budget)
        sizes = [sum(len(e.input_ids) for e, _ in p) for p in parts]
        assert [x for p in parts for x in p] == items  # a partition, in order
        assert all(s <= budget or len(p) == 1 for s, p in zip(sizes, parts))  # a longer example: alone
        assert len(parts) <= -(-290 // budget) + 1 or budget < 60  # (about) the fewest passes
        if len(parts) == 2:
            assert abs(sizes[0] - sizes[1]) <= 60  # even, not one full and one small
    assert [len(p) for p in _passes(items, 40)] == [1, 1, 1, 1, 1, 1, 1, 1]  # longer examples: a pass each


def test_passes_are_as_few_as_an_in_order_cut_allows_and_none_is_a_small_remainder():
    """Against an independent count: filling each pass as far as it goes gives the fewest passes of an in-order
    cut. A step a little over two budgets (the paper run's 21-adapter steps) gets three even passes, not two full
    ones and a remainder of a few hundred tokens (a pass of its own shape, and a recompilation of the layers)."""
    import random

    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel import _passes

    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 512) for _ in range(rng.randint(1, 60))]
        budget = rng.choice([512, 700, 1024, 2048, 4096])
        items = [(Encoded(input_ids=[1] * n, labels=[1] * n), 0) for n in lengths]
        fewest, size = 1, 0
        for n in lengths:
            if size and size + n > budget:
                fewest, size = fewest + 1, 0
            size += n
        parts = _passes(items, budget)
        sizes = [sum(len(e.input_ids) for e, _ in p) for p in parts]
        assert [x for p in parts for x in p] == items and all(parts)
        assert all(s <= budget for s in sizes)
        assert len(parts) == fewest
        share = sum(lengths) / len(parts)
        assert max(sizes) <= share + max(lengths)  # even: the largest near the mean
        if budget >= share + max(lengths):  # cuts at the nearest boundaries fit: every pass near the mean
            assert min(sizes) >= share - max(lengths), (sizes, share)
    step = [(Encoded(input_ids=[1] * 250, labels=[1] * 250), 0)] * 168  # 42,000 tokens, budget 20,480
    assert [sum(len(e.input_ids) for e, _ in p) for p in _passes(step, 20480)] == [14000, 14000, 14000]
    tail = [(Encoded(input_ids=[1] * n, labels=[1] * n), 0) for n in (10, 10, 10, 10, 1)]
    assert [sum(len(e.input_ids) for e, _ in p) for p in _passes(tail, 20)] == [10, 20, 11]  # not 20, 20, 1


def test_static_passes_fall_back_when_logits_are_more_than_the_head(tmp_path, tiny_tokenizer, tiny_llama, caplog):
    """A model whose logits are transformed after the LM head (here a logit scale in its config) gets the
    ordinary passes, with one warning, and the same adapters."""
    tiny_llama.config.logit_scale = 0.5
    lora, train = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0), TrainSpec(**TRAIN)
    runs = {}
    for graphs in (False, True):
        with caplog.at_level("WARNING", logger="lorasum"):
            runs[graphs] = train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, f"s{graphs}"), lora=lora,
                                          train=train, max_length=64, model_info=info_of(tiny_llama), progress=False,
                                          varlen=True, graphs=graphs)
    assert caplog.text.count("CUDA graphs off") == 1
    for a, b in zip(runs[False], runs[True]):
        assert b.losses == a.losses


def test_divergence_checks_name_the_step_of_the_whole_run():
    """Each check looks only at the losses after the previous one, and names the step counted from the start."""
    from lorasum.train.parallel import _diverged

    outs = [Path("a"), Path("b")]
    losses = [torch.tensor([1.0, 2.0]) for _ in range(30)]
    losses[25] = torch.tensor([1.0, float("nan")])
    assert _diverged(losses[:20], outs, 1e-3) is None
    error = _diverged(losses, outs, 1e-3, since=20)
    assert error is not None and "b: training diverged" in str(error) and "at step 26 " in str(error)
    assert _diverged(losses, outs, 1e-3, since=26) is None  # the steps before `since` were checked already


def test_bucket_sizes_bound_the_padding_and_the_number_of_shapes():
    from lorasum.train.parallel_graphs import bucket

    sizes = [bucket(n, 64, 8) for n in range(1, 20001)]
    for n, b in enumerate(sizes, start=1):
        assert b >= n and b % 64 == 0 and b < n + max(64, n / 8)
    assert sizes == sorted(sizes)  # monotone: a larger pass never gets a smaller shape
    assert len(set(sizes)) <= 8 * 9  # log2(20000 / 64) < 9 octaves of 8 sizes
    assert bucket(18000, 1024, 8) == 18432 and bucket(5000, 1024, 8) == 5120 and bucket(1000, 1024, 8) == 1024


def test_static_layout_never_predicts_an_example_from_the_one_before():
    """With loss_on: all an example's first token carries a label; it must not become the target of the
    previous example's last position (the packed passes leave it out too)."""
    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel_graphs import static_layout

    a, b = Encoded(input_ids=[11, 12, 13], labels=[11, 12, 13]), Encoded(input_ids=[21, 22, 23], labels=[21, 22, 23])
    lay = static_layout([(a, 0), (b, 1)], pad_id=0, n_answer=torch.tensor([2.0, 2.0]), k=2, max_seqlen=3, granule=8)
    scored = lay["weight"] > 0
    assert lay["flat"][scored].tolist() == [0, 1, 3, 4] and lay["targets"][scored].tolist() == [12, 13, 22, 23]
    assert lay["owner"][scored].tolist() == [0, 0, 1, 1]
    assert [float(lay["weight"][scored & (lay["owner"] == j)].sum()) for j in (0, 1)] == [1.0, 1.0]


@pytest.mark.parametrize("bad", [dict(part=[]), dict(max_seqlen=0), dict(k=1)])
def test_static_layout_refuses_what_it_cannot_lay_out(bad):
    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel_graphs import bucket, static_layout

    args = dict(part=[(Encoded(input_ids=[5, 6], labels=[-100, 6]), 1)], pad_id=0, n_answer=torch.ones(2), k=2,
                max_seqlen=4, granule=8) | bad
    with pytest.raises(ValueError, match="static_layout"):
        static_layout(**args)
    with pytest.raises(ValueError, match="at least 1"):
        bucket(5, 0, 8)


def test_a_pass_laid_out_in_a_larger_shape_fits_and_keeps_its_tokens():
    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel_graphs import fits, shape_of, static_layout

    ex = [(Encoded(input_ids=[5, 6, 7, 8], labels=[-100, -100, 7, 8]), 1),
          (Encoded(input_ids=[9, 10, 11], labels=[-100, 10, 11]), 0)]
    n = torch.tensor([2.0, 2.0])
    small = static_layout(ex, pad_id=0, n_answer=n, k=2, max_seqlen=5, granule=8)
    assert shape_of(small) == (8, 8, 64)
    assert fits(ex, small, (32, 8, 64), max_seqlen=5)
    assert not fits(ex, small, (4, 8, 64), max_seqlen=5)  # 7 tokens
    assert not fits(ex, small, (32, 2, 64), max_seqlen=5)  # 4 scored positions
    assert not fits(ex, small, (320, 8, 64), max_seqlen=5)  # 2 examples + 63 padding segments + the total > 64
    assert fits(ex, small, (300, 8, 64), max_seqlen=5)  # 2 + 59 + 1 <= 64
    big = static_layout(ex, pad_id=0, n_answer=n, k=2, max_seqlen=5, shape=(32, 16, 64))
    assert shape_of(big) == (32, 16, 64)
    assert big["input_ids"][0, :7].tolist() == small["input_ids"][0, :7].tolist()
    assert (big["groups"][0, 7:] == -1).all() and (big["weight"][4:] == 0).all() and (big["owner"][4:] == 2).all()
    segs = big["cu_seqlens"].tolist()
    assert segs[:3] == [0, 4, 7] and max(b - a for a, b in zip(segs, segs[1:])) <= 5  # padding cut at max_seqlen
    with pytest.raises(ValueError, match="does not fit"):
        static_layout(ex, pad_id=0, n_answer=n, k=2, max_seqlen=5, shape=(4, 8, 64))


def test_passes_padded_to_a_larger_shape_train_the_same_adapters(tmp_path, tiny_tokenizer, tiny_llama):
    """The fallback past the graph cap lays a pass out in a larger captured shape: more padding tokens, padded
    scored positions and segments change nothing (run eagerly on the CPU against the natural layout)."""
    import lorasum.train.parallel_graphs as pg

    for m in tiny_llama.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    lora = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0)
    train = TrainSpec(**TRAIN | {"parallel_max_tokens": 70})
    real = pg.static_layout

    def padded(part, pad_id, n_answer, k, max_seqlen, granule=pg.GRANULE, shape=None):
        natural = real(part, pad_id, n_answer, k, max_seqlen, granule=32)
        t, n, s = pg.shape_of(natural)
        wider = (t + 96, n + 32, s + 64)
        assert pg.fits(part, natural, wider, max_seqlen)
        return real(part, pad_id, n_answer, k, max_seqlen, shape=wider)

    runs = {}
    for name, layout in (("natural", lambda *a, **kw: real(*a, **kw, granule=32)), ("padded", padded)):
        pg.static_layout = layout
        try:
            runs[name] = train_adapters(tiny_llama, tiny_tokenizer, tasks_for(tmp_path, name), lora=lora, train=train,
                                        max_length=64, model_info=info_of(tiny_llama), progress=False, varlen=True,
                                        graphs=True)
        finally:
            pg.static_layout = real
    for a, b in zip(runs["natural"], runs["padded"]):
        assert b.losses == pytest.approx(a.losses, rel=1e-5)
        x, y = load_file(str(a.out_dir / "adapter_model.safetensors")), load_file(str(b.out_dir / "adapter_model.safetensors"))
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=2e-5)


def test_parallel_training_applies_attention_dropout_for_its_duration(tmp_path, tiny_tokenizer, tiny_gpt2, monkeypatch):
    """train.attention_dropout reaches the model before the choice of attention (GPT-2's 0.1 → 0 would allow
    variable-length attention on CUDA) and GPT-2's own value is back afterwards."""
    import lorasum.train.parallel as par

    seen = []
    real = par.varlen_supported
    monkeypatch.setattr(par, "varlen_supported",
                        lambda model: seen.append((model.config.attn_pdrop, par.has_attention_dropout(model))) or real(model))
    train_adapters(tiny_gpt2, tiny_tokenizer, tasks_for(tmp_path, "ad"), lora=LoraSpec(r=2, lora_alpha=4),
                   train=TrainSpec(**TRAIN | {"max_steps": 1, "attention_dropout": 0.0}), max_length=64,
                   model_info=info_of(tiny_gpt2), progress=False)
    assert seen == [(0.0, False)]
    assert tiny_gpt2.config.attn_pdrop == 0.1
    assert all(m.p == 0.1 for n, m in tiny_gpt2.named_modules() if n.endswith("attn_dropout"))


def test_stretch_log_counts_the_graph_captures_of_the_stretch(caplog):
    """The pace line of a stretch of steps says how many CUDA graphs were captured during it and how long the
    captures took (they are part of the stretch's time); a stretch without captures says nothing of them."""
    import logging
    from types import SimpleNamespace

    from lorasum.train.parallel import _log_phase

    graphs = SimpleNamespace(captured=0, capture_seconds=0.0)
    caplog.set_level(logging.INFO, logger="lorasum")
    phase = _log_phase((0, 0.0, None, 0, 0.0), 0, 21, graphs)  # the first stretch starts: nothing logged
    assert phase[2:] == (21, 0, 0.0) and not caplog.records
    graphs.captured, graphs.capture_seconds = 14, 9.25
    phase = _log_phase(phase, 197, 18, graphs)
    phase = _log_phase(phase, 300, 3, graphs)  # no capture in this stretch
    _log_phase(phase, 310, 0, None)  # a run without graphs
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("steps 0-197: 21 adapters, ") and lines[0].endswith("(14 CUDA graphs captured in 9.2 s)")
    assert lines[1].startswith("steps 197-300: 18 adapters, ") and "captured" not in lines[1]
    assert lines[2].startswith("steps 300-310: 3 adapters, ") and "captured" not in lines[2]


def test_graph_capture_needs_the_memory_measured_per_token(monkeypatch):
    """GraphedPasses._room_for_capture: a new shape is captured only while free GPU memory covers 1.25 × the
    largest per-token growth of earlier captures × its tokens, plus 1 GiB (the CUDA calls are stubbed here; the
    path through training is tested on the GPU in test_train_cuda.py)."""
    import lorasum.train.parallel_graphs as pg

    gib = 1 << 30
    free = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * gib))
    static = object.__new__(pg.GraphedPasses)
    static.device, static._graphs, static._warned_memory = torch.device("cuda"), {(1024, 64, 8): None}, False
    static._bytes_per_token = 20 * gib / 32768  # a capture of 32k tokens added 20 GiB
    free["bytes"] = 26 * gib  # 1.25 * 20 + 1 = 26 GiB needed for 32k tokens
    assert static._room_for_capture(32768)
    free["bytes"] = 26 * gib - 1
    assert not static._room_for_capture(32768)
    assert static._room_for_capture(16384)  # half the tokens: 13.5 GiB


def test_a_pass_is_split_into_pieces_that_a_captured_shape_holds():
    """split_to_fit: an in-order partition of the pass whose pieces static_layout lays out in the shape; None
    when one example alone does not fit."""
    from lorasum.data.tokenize import Encoded
    from lorasum.train.parallel_graphs import fits, split_to_fit, static_layout

    gen = torch.Generator().manual_seed(0)
    part = []
    for i in range(40):
        n = int(torch.randint(3, 30, (1,), generator=gen))
        labels = [-100] * (n // 2) + list(range(n - n // 2))
        part.append((Encoded(input_ids=list(range(n)), labels=labels), i % 3))
    n_answer = torch.tensor([50.0, 50.0, 50.0])
    shape = (64, 32, 8)  # T, N, S
    pieces = split_to_fit(part, shape, max_seqlen=30)
    assert pieces is not None and len(pieces) > 1
    assert [x for p in pieces for x in p] == part
    for piece in pieces:
        layout = static_layout(piece, pad_id=0, n_answer=n_answer, k=3, max_seqlen=30, shape=shape)  # no error
        assert fits(piece, layout, shape, 30)
    # greedy: a piece and the first example of the next one do not fit together
    for a, b in zip(pieces, pieces[1:]):
        joined = a + b[:1]
        with pytest.raises(ValueError, match="does not fit|do not fit"):
            static_layout(joined, pad_id=0, n_answer=n_answer, k=3, max_seqlen=30, shape=shape)
    assert split_to_fit(part, (16, 32, 8), max_seqlen=30) is None  # examples of up to 29 tokens: no piece holds them


@pytest.mark.parametrize("per_adapter", [False, True])
def test_peft_initialisation_runs_once_per_seed_and_gives_each_adapter_its_factors(tmp_path, tiny_tokenizer,
                                                                                   tiny_llama, monkeypatch,
                                                                                   per_adapter):
    """Adapters of one seed share PEFT's initial factors (one initialisation per seed); with
    lora.init_per_adapter each adapter gets its own. Each adapter's factors are those of a fresh initialisation
    with its key (the memo hands out no other adapter's)."""
    import lorasum.train.parallel as par

    calls, configs = [], []
    real = par._peft_init
    monkeypatch.setattr(par, "_peft_init", lambda m, c, seed, init_seed: calls.append((seed, init_seed))
                        or configs.append(c) or real(m, c, seed, init_seed))
    seen = {}
    real_layer = par._ParallelLoRA

    def spy(base, factors, *a, **k):
        seen.setdefault("factors", factors)
        return real_layer(base, factors, *a, **k)

    monkeypatch.setattr(par, "_ParallelLoRA", spy)
    tasks = [AdapterTask(records=records(d, 6, i), seed=seed, out_dir=tmp_path / f"{d}{seed}", meta={"domains": [d]})
             for i, (d, seed) in enumerate([("a", 0), ("b", 0), ("a", 1), ("c", 0)])]
    lora = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0, init_per_adapter=per_adapter)
    train_adapters(tiny_llama, tiny_tokenizer, tasks, lora=lora, train=TrainSpec(**TRAIN | {"max_steps": 1}),
                   max_length=64, model_info=info_of(tiny_llama), progress=False)
    assert len(calls) == len(set(calls)) == (4 if per_adapter else 2)
    first = seen["factors"]  # (A, B) of each adapter for the first adapted module
    same = [torch.equal(first[0][0], first[j][0]) for j in range(4)]
    # shared by the adapters of seed 0 (tasks 0, 1, 3) unless each adapter has its own; seed 1 differs
    assert same == ([True, False, False, False] if per_adapter else [True, True, False, True])
    keys = calls if per_adapter else [calls[0], calls[0], calls[1], calls[0]]  # each adapter's own key
    for j, key in enumerate(keys):  # its factors are a fresh initialisation with that key
        fresh = real(tiny_llama, configs[0], *key)
        torch.testing.assert_close(first[j][0], fresh[sorted(fresh)[0]][0].to(first[j][0].dtype), rtol=0, atol=0)
