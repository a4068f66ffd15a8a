"""Checkpoints and --resume: a run stopped at step k and resumed ends with the same adapter as a run
that was never stopped (issue 7: 1e-6; on the CPU it is bit for bit)."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
import torch
from safetensors.torch import load_file

from tiny_models import at_forward_pass, signal_self

from lorasum.config import LoraSpec, TrainSpec
from lorasum.data.records import Record
from lorasum.errors import OutputExistsError
from lorasum.models import describe_model
from lorasum.train import train_adapter
from lorasum.train.checkpoint import CheckpointError, TrainingInterrupted, TrainingStopped, checkpoint_dir

RECORDS = [Record(id=f"r{i}", domain="d", question=q, answer=a, context=c) for i, (q, a, c) in enumerate([
    ("what is the dose ?", "the dose is 5", ""), ("is the sun red ?", "no the sun is not red", ""),
    ("which drug ?", "the red drug", "the patient with heart disease"), ("what is 2 plus 2 ?", "4", ""),
    ("how many apples are left ?", "10 apples are left", "the cat eat 2 apples"), ("which stock ?", "the bond", ""),
    ("what is the rate ?", "the rate is 6 %", "the market price of the bond"), ("what is the total ?", "12", ""),
] * 2)]
# dropout on, warm-up and decay, accumulation, clipping: every piece of state matters
LORA = LoraSpec(r=4, lora_alpha=16, lora_dropout=0.2)
TRAIN = TrainSpec(learning_rate=5e-3, batch_size=3, grad_accum=2, max_steps=9, warmup_ratio=0.2, checkpoint_every=None)


def _train(model, tok, out, train=TRAIN, **kw):
    return train_adapter(model, tok, RECORDS, lora=LORA, train=train, seed=3, out_dir=out, max_length=40,
                         model_info=describe_model(model, name="tiny", source="in-memory"), progress=False, **kw)


def _weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_same_adapter(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6), k
    la = json.loads((a / "lorasum.json").read_text())
    lb = json.loads((b / "lorasum.json").read_text())
    assert la["losses"] == pytest.approx(lb["losses"], rel=1e-6) and la["steps"] == lb["steps"] == TRAIN.max_steps
    assert la["tokens"] == lb["tokens"]


def _stop_at_call(monkeypatch, n, action):
    return at_forward_pass(monkeypatch, n, action)


def _interrupted(model, tok, out, monkeypatch, sig=signal.SIGINT, at=3):
    """Train into ``out`` and stop it by ``sig`` during forward pass ``at``; the checkpoint stays."""
    _stop_at_call(monkeypatch, at, signal_self(sig))
    with pytest.raises(TrainingInterrupted):
        _train(model, tok, out)
    monkeypatch.undo()


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def reference(model, tiny_tokenizer, tmp_path):
    return _train(model, tiny_tokenizer, tmp_path / "uninterrupted")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_gives_the_same_adapter(model, tiny_tokenizer, tmp_path, reference,
                                                                      monkeypatch, sig):
    out = tmp_path / "stopped"
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _stop_at_call(monkeypatch, 8, signal_self(sig))  # during step 4 (2 micro-batches a step)
    with pytest.raises(TrainingInterrupted) as info:
        _train(model, tiny_tokenizer, out)
    assert (info.value.signum, info.value.step, info.value.total) == (sig, 4, 9)
    assert not out.exists() and checkpoint_dir(out).is_dir()
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    state = json.loads((checkpoint_dir(out) / "state.json").read_text())
    assert state["step"] == 4 and len(state["losses"]) == 4
    monkeypatch.undo()
    res = _train(model, tiny_tokenizer, out, resume=True)
    assert res.steps == 9 and not checkpoint_dir(out).exists()  # removed once the adapter is saved
    _assert_same_adapter(out, reference.out_dir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_in_the_last_step_saves_the_adapter_then_stops(model, tiny_tokenizer, tmp_path, reference,
                                                               monkeypatch, sig):
    """A signal during the last step (forward pass 17 of 18) is not lost: the adapter, complete, is saved and equals
    the uninterrupted one, no checkpoint is left, and TrainingStopped stops the caller (exit 128 + signal)."""
    out = tmp_path / "last"
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    _stop_at_call(monkeypatch, 2 * TRAIN.max_steps - 1, signal_self(sig))
    with pytest.raises(TrainingStopped) as info:
        _train(model, tiny_tokenizer, out)
    assert info.value.signum == sig and info.value.out_dir == out and info.value.complete
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored
    assert not checkpoint_dir(out).exists()
    _assert_same_adapter(out, reference.out_dir)


def test_periodic_checkpoint_survives_a_crash(model, tiny_tokenizer, tmp_path, reference, monkeypatch):
    out = tmp_path / "crashed"
    train = TRAIN.model_copy(update={"checkpoint_every": 3})

    def crash():
        raise RuntimeError("power cut")

    _stop_at_call(monkeypatch, 15, crash)  # during step 8: the last checkpoint is after step 6
    with pytest.raises(RuntimeError, match="power cut"):
        _train(model, tiny_tokenizer, out, train=train)
    assert json.loads((checkpoint_dir(out) / "state.json").read_text())["step"] == 6
    monkeypatch.undo()
    calls = _stop_at_call(monkeypatch, 10**9, lambda: None)
    _train(model, tiny_tokenizer, out, train=train, resume=True)
    assert len(calls) == 2 * (9 - 6)  # only the missing steps ran
    _assert_same_adapter(out, reference.out_dir)


def test_resume_without_checkpoint_starts_from_step_zero(model, tiny_tokenizer, tmp_path, reference):
    _train(model, tiny_tokenizer, tmp_path / "fresh", resume=True)
    _assert_same_adapter(tmp_path / "fresh", reference.out_dir)


def test_checkpoint_is_not_silently_ignored_or_misused(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch)
    with pytest.raises(OutputExistsError, match=r"a\.ckpt.*--resume"):
        _train(tiny_gpt2, tiny_tokenizer, out)  # neither --resume nor --overwrite
    other = TRAIN.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(CheckpointError, match="other settings"):
        _train(tiny_gpt2, tiny_tokenizer, out, train=other, resume=True)
    # checkpoint_every does not change the adapter, so it may differ between the two runs
    _train(tiny_gpt2, tiny_tokenizer, out, train=TRAIN.model_copy(update={"checkpoint_every": 2}), resume=True)
    assert out.is_dir() and not checkpoint_dir(out).exists()


def test_overwrite_discards_the_checkpoint(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch, signal.SIGTERM)
    calls = _stop_at_call(monkeypatch, 10**9, lambda: None)
    _train(tiny_gpt2, tiny_tokenizer, out, overwrite=True)
    assert len(calls) == 2 * 9 and not checkpoint_dir(out).exists()


@pytest.mark.parametrize("damage", ["state", "tensors", "missing"])
def test_damaged_checkpoint_gives_one_clear_error(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch, damage):
    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch)
    ckpt = checkpoint_dir(out)
    if damage == "state":
        (ckpt / "state.json").write_text("{not json")
    elif damage == "tensors":
        (ckpt / "optimizer.safetensors").write_bytes(b"\x00" * 7)
    else:
        (ckpt / "trainable.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"a\.ckpt.*(unreadable|not a lorasum|damaged)"):
        _train(tiny_gpt2, tiny_tokenizer, out, resume=True)


def _rehash(ckpt):
    """Make state.json's file hashes match the (tampered) tensor files, so the deeper checks are reached."""
    import hashlib

    state = json.loads((ckpt / "state.json").read_text())
    state["sha256"] = {f: hashlib.sha256((ckpt / f).read_bytes()).hexdigest() for f in state["sha256"]}
    (ckpt / "state.json").write_text(json.dumps(state))


def _edit_state(ckpt, fn):
    state = json.loads((ckpt / "state.json").read_text())
    fn(state)
    (ckpt / "state.json").write_text(json.dumps(state))


def _edit_tensors(ckpt, name, fn):
    from safetensors.torch import save_file

    tensors = load_file(str(ckpt / name))
    fn(tensors)
    save_file(tensors, str(ckpt / name))
    _rehash(ckpt)


def _first(d):
    return d[sorted(d)[0]]


TAMPER = {  # found by a hostile tester: each used to hang, run the wrong number of steps, or exit 1 / save NaN
    "negative step": lambda c: _edit_state(c, lambda s: s.update(step=-1000)),
    "step past the end": lambda c: _edit_state(c, lambda s: s.update(step=100, losses=[1.0] * 100)),
    "losses not a list": lambda c: _edit_state(c, lambda s: s.update(losses="1234")),
    "NaN loss": lambda c: _edit_state(c, lambda s: s["losses"].__setitem__(0, float("nan"))),
    "negative tokens": lambda c: _edit_state(c, lambda s: s.update(tokens=-5)),
    "scheduler null": lambda c: _edit_state(c, lambda s: s.update(scheduler=None)),
    "scheduler moved on": lambda c: _edit_state(c, lambda s: s["scheduler"].update(last_epoch=10**6)),
    "huge base lr": lambda c: _edit_state(c, lambda s: s["scheduler"].update(base_lrs=[1e8])),
    "other weight decay": lambda c: _edit_state(
        c, lambda s: s["optimizer"]["param_groups"][0].update(weight_decay=0.5)),
    "python rng garbage": lambda c: _edit_state(c, lambda s: s["rng"].update(python=[3, [1, 2], None])),
    "numpy rng garbage": lambda c: _edit_state(c, lambda s: s["rng"].update(numpy=["XYZ", 0, 0, 0.0])),
    "tensor file swapped": lambda c: (c / "rng.safetensors").write_bytes((c / "trainable.safetensors").read_bytes()),
    "NaN LoRA weight": lambda c: _edit_tensors(c, "trainable.safetensors", lambda t: _first(t).view(-1).__setitem__(
        0, float("nan"))),
    "negative second moment": lambda c: _edit_tensors(c, "optimizer.safetensors", lambda t: t.update(
        {k: -v.abs() - 1 for k, v in t.items() if k.endswith("exp_avg_sq")})),
    "moment of wrong shape": lambda c: _edit_tensors(c, "optimizer.safetensors", lambda t: t.update(
        {k: torch.zeros(3, 3) for k in list(t) if k.endswith(".exp_avg")})),
    "rng state missing": lambda c: _edit_tensors(c, "rng.safetensors", lambda t: t.pop("torch_cpu")),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampered_checkpoint_is_refused_and_the_model_untouched(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch,
                                                                 how):
    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch, at=7)
    TAMPER[how](checkpoint_dir(out))
    before = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"a\.ckpt"):
        _train(tiny_gpt2, tiny_tokenizer, out, resume=True)
    after = tiny_gpt2.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not out.exists() and checkpoint_dir(out).is_dir()  # nothing written, nothing deleted


def _set(path, value):
    """A state.json editor: ``path`` is a tuple of keys and indices into the state."""
    def edit(state):
        for key in path[:-1]:
            state = state[key]
        state[path[-1]] = value
    return edit


# found by a fuzzing colleague: fields of the wrong type in state.json used to end in an internal error (a
# TypeError, OverflowError or IndexError, exit 1) or to be taken as they were; (edit, JSON path in the message)
WRONG_TYPES = {
    "lr a string": (_set(("optimizer", "param_groups", 0, "lr"), "x"), "optimizer.param_groups[0].lr"),
    "lr a huge integer": (_set(("optimizer", "param_groups", 0, "lr"), 10**400), "optimizer.param_groups[0].lr"),
    "initial_lr null": (_set(("optimizer", "param_groups", 0, "initial_lr"), None),
                        "optimizer.param_groups[0].initial_lr"),
    "params strings": (_set(("optimizer", "param_groups", 0, "params"), ["a", "b"]),
                       "optimizer.param_groups[0].params"),
    "param_groups empty": (_set(("optimizer", "param_groups"), []), "optimizer.param_groups"),
    "scalars a list": (_set(("optimizer", "scalars"), [1]), "optimizer.scalars"),
    "step a string": (_set(("step",), "3"), "step"),
    "step true": (_set(("step",), True), "step"),
    "losses with a string": (lambda s: s["losses"].__setitem__(1, "0.5"), "losses[1]"),
    "loss a huge integer": (lambda s: s["losses"].__setitem__(0, 10**400), "losses[0]"),
    "tokens a float": (_set(("tokens",), 12.5), "tokens"),
    "seconds a huge integer": (_set(("seconds",), 10**400), "seconds"),
    "seconds missing": (lambda s: s.pop("seconds"), "seconds: missing"),
    "sha256 a list": (_set(("sha256",), []), "sha256"),
    "scheduler base_lrs a string": (_set(("scheduler", "base_lrs"), "x"), "scheduler.base_lrs"),
    "scheduler last_epoch a float": (_set(("scheduler", "last_epoch"), 3.0), "scheduler.last_epoch"),
    "scheduler lr_lambdas of code": (_set(("scheduler", "lr_lambdas"), [{"__code__": 1}]), "scheduler.lr_lambdas"),
    "python rng word too large": (lambda s: s["rng"]["python"][1].__setitem__(0, 2**64), "rng.python[1][0]"),
    "python rng word negative": (lambda s: s["rng"]["python"][1].__setitem__(5, -1), "rng.python[1][5]"),
    "python rng not a list": (_set(("rng", "python"), "x"), "rng.python"),
    "numpy rng position past the end": (lambda s: s["rng"]["numpy"].__setitem__(1, 10**6), "rng.numpy[1]"),
    "numpy rng gauss a string": (lambda s: s["rng"]["numpy"].__setitem__(3, "x"), "rng.numpy[3]"),
    "rng missing": (lambda s: s.pop("rng"), "rng: missing"),
}
# found at restore time, against the freshly built run (the state is of the right types but does not fit it)
DO_NOT_FIT = {
    "scheduler _last_lr a string": _set(("scheduler", "_last_lr"), "x"),
    "scheduler lr_lambdas one too many": _set(("scheduler", "lr_lambdas"), [None, None]),
    "params in another order": lambda s: s["optimizer"]["param_groups"][0]["params"].reverse(),
}


def test_state_json_of_the_wrong_types_is_a_clear_user_error(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch):
    """Every field of state.json is checked when the checkpoint is read: a CheckpointError (a UserError: exit 2)
    naming the checkpoint and the field's JSON path, saying to delete it or pass --overwrite; nothing changed."""
    import shutil

    from lorasum.errors import UserError

    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch, at=7)
    good = tmp_path / "good.ckpt"
    shutil.copytree(checkpoint_dir(out), good)
    before = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    cases = {name: (fn, f"unreadable training checkpoint (state.json: {where}") for name, (fn, where)
             in WRONG_TYPES.items()} | {name: (fn, "differ") if "params" in name else (fn, "scheduler state")
                                          for name, fn in DO_NOT_FIT.items()}
    for name, (edit, fragment) in cases.items():
        shutil.rmtree(checkpoint_dir(out))
        shutil.copytree(good, checkpoint_dir(out))
        _edit_state(checkpoint_dir(out), edit)
        with pytest.raises(CheckpointError) as info:
            _train(tiny_gpt2, tiny_tokenizer, out, resume=True)
        message = str(info.value)
        assert isinstance(info.value, UserError) and "\n" not in message, name
        assert message.startswith(f"{checkpoint_dir(out)}: ") and fragment in message, (name, message)
        assert "delete" in message and "--overwrite" in message, (name, message)
        assert not out.exists() and checkpoint_dir(out).is_dir(), name  # nothing written, nothing deleted
    after = tiny_gpt2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    shutil.rmtree(checkpoint_dir(out))
    shutil.copytree(good, checkpoint_dir(out))
    _edit_state(checkpoint_dir(out), WRONG_TYPES["lr a string"][0])
    with pytest.raises(CheckpointError, match=re.escape(
            'a.ckpt: unreadable training checkpoint (state.json: optimizer.param_groups[0].lr: expected a finite '
            'number >= 0, got the string "x"); delete it or pass --overwrite to start over')):
        _train(tiny_gpt2, tiny_tokenizer, out, resume=True)
    _train(tiny_gpt2, tiny_tokenizer, out, overwrite=True)  # a damaged checkpoint is still one: --overwrite discards it
    assert (out / "adapter_model.safetensors").is_file() and not checkpoint_dir(out).exists()


def _user_thing(tmp_path, kind):
    """Something of the user's at ``a.ckpt`` that is not a lorasum checkpoint; returns a snapshot function."""
    ckpt = tmp_path / "a.ckpt"
    if kind == "file":
        ckpt.write_text("hello")
        return lambda: ckpt.read_text()
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "keep.txt").write_text("mine")
        ckpt.symlink_to(tmp_path / "elsewhere")
        return lambda: (ckpt.is_symlink(), (tmp_path / "elsewhere" / "keep.txt").read_text())
    if kind == "fifo":
        os.mkfifo(ckpt)
        return lambda: ckpt.is_fifo()
    ckpt.mkdir()
    if kind == "folder without state.json":
        (ckpt / "trainable.safetensors").write_bytes(b"my own")
        (ckpt / "optimizer.safetensors").write_bytes(b"my own")
    elif kind == "empty folder":
        pass
    return lambda: sorted((p.name, p.read_bytes()) for p in ckpt.iterdir())


@pytest.mark.parametrize("kind", ["file", "symlink", "fifo", "folder without state.json", "empty folder"])
def test_overwrite_never_deletes_what_is_not_a_checkpoint(tiny_gpt2, tiny_tokenizer, tmp_path, kind):
    """--overwrite used to delete whatever was at OUT.ckpt (a file, a link, a FIFO, a folder of the user's): only a
    checkpoint lorasum wrote may go. Anything else is refused with or without the flags, and left as it was."""
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    snapshot = _user_thing(tmp_path, kind)
    before = snapshot()
    for flags in ({}, {"overwrite": True}, {"resume": True}, {"resume": True, "overwrite": True}):
        with pytest.raises(OutputExistsError, match=r"a\.ckpt: exists and is not a lorasum training checkpoint "
                                                    r"\(.+\); move it away") as info:
            _train(tiny_gpt2, tiny_tokenizer, tmp_path / "a", **flags)
        assert "\n" not in str(info.value) and "--resume" not in str(info.value), str(info.value)
        assert snapshot() == before, flags
        assert not (tmp_path / "a").exists()


def test_a_checkpoint_holding_a_file_of_the_users_is_not_deleted(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch):
    """A real checkpoint into which the user put a file of their own: deleting it would lose that file."""
    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch)
    (checkpoint_dir(out) / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="a folder holding files that a checkpoint does not have: notes.txt"):
        _train(tiny_gpt2, tiny_tokenizer, out, overwrite=True)
    assert (checkpoint_dir(out) / "notes.txt").read_text() == "mine" and (checkpoint_dir(out) / "state.json").is_file()
    (checkpoint_dir(out) / "notes.txt").unlink()
    (checkpoint_dir(out) / "state.json").write_text("{not json")  # damaged, still recognisably a checkpoint
    with pytest.raises(OutputExistsError, match=r"a\.ckpt: a checkpoint of an interrupted training run exists"):
        _train(tiny_gpt2, tiny_tokenizer, out)
    _train(tiny_gpt2, tiny_tokenizer, out, overwrite=True)
    assert not checkpoint_dir(out).exists() and (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("per_adapter", [False, True])
def test_lora_a_init_shared_by_a_seed_unless_per_adapter(tiny_gpt2, tiny_tokenizer, tmp_path, per_adapter):
    """With a negligible learning rate the trained A is the initial A: the same for every adapter of a seed by
    default, independent per adapter (domains) with lora.init_per_adapter."""
    lora = LORA.model_copy(update={"init_per_adapter": per_adapter})
    train = TRAIN.model_copy(update={"learning_rate": 1e-12, "max_steps": 1})
    info = describe_model(tiny_gpt2, name="tiny", source="in-memory")
    a_of = {}
    for dom, recs in (("math", RECORDS[:6]), ("medicine", RECORDS[6:])):
        out = tmp_path / dom
        train_adapter(tiny_gpt2, tiny_tokenizer, recs, lora=lora, train=train, seed=3, out_dir=out, max_length=40,
                      model_info=info, progress=False, meta={"domains": [dom]})
        a_of[dom] = {k: v for k, v in _weights(out).items() if "lora_A" in k}
    same = all(torch.allclose(a_of["math"][k], a_of["medicine"][k], atol=1e-6) for k in a_of["math"])
    assert same is not per_adapter


def test_checkpoint_of_other_base_weights_is_refused(tiny_gpt2, tiny_tokenizer, tmp_path, monkeypatch):
    """Same name and config, other weights (e.g. a re-randomised model folder): not the same run."""
    import copy

    out = tmp_path / "a"
    _interrupted(tiny_gpt2, tiny_tokenizer, out, monkeypatch)
    other = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 0.5
    with pytest.raises(CheckpointError, match="other settings, data, model"):
        _train(other, tiny_tokenizer, out, resume=True)
    _train(tiny_gpt2, tiny_tokenizer, out, resume=True)  # the original model continues it


def test_examples_hash_memo_gives_the_same_digest_and_sees_every_change():
    """The training-data fingerprint of a checkpoint: the memo (tasks sharing examples) changes nothing,
    and a changed token, label or order changes the digest."""
    from lorasum.data.tokenize import Encoded
    from lorasum.train.loop import _examples_hash

    a, b = Encoded([1, 2, 3], [-100, 2, 3]), Encoded([4, 5], [-100, 5])
    memo: dict[int, bytes] = {}
    plain = _examples_hash([a, b])
    assert _examples_hash([a, b], memo) == plain and len(memo) == 2
    assert _examples_hash([a, b], memo) == plain  # from the memo
    changed = {_examples_hash(x) for x in ([b, a], [a], [Encoded([1, 2, 3], [-100, -100, 3]), b],
                                           [Encoded([1, 2, 4], [-100, 2, 3]), b], [Encoded([1, 2], [3, -100, 2]), b])}
    assert plain not in changed and len(changed) == 5
