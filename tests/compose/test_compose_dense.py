"""ties / dare_linear / dare_ties / magnitude_prune against straightforward numpy references,
and DenseDelta: merging into GPT-2 (Conv1D) and Llama (Linear), saving and loading."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from compose_fixtures import GPT2_SPECS, LLAMA_SPECS, build_env, dense_np, gpt2, llama, logits, rand_adapter
from transformers.pytorch_utils import Conv1D

from lorasum.compose import (METHODS, DenseDelta, compose, compose_dare_linear, load_dense_delta,
                             merge_into_base, save_dense_delta)
from lorasum.errors import AdapterError, ConfigError, OutputExistsError

MODULES = ("l.0.q", "l.0.v", "l.1.q")


def _sources():
    srcs = [rand_adapter(s, modules=MODULES, shape=(5, 4)) for s in (11, 12, 13)]
    del srcs[1].factors["l.1.q"]  # one adapter lacks a module: it is a zero task vector there
    return srcs


def _tasks(srcs, weights, module):
    return [w * dense_np(a, module, (5, 4)) for w, a in zip(weights, srcs)]


def _trim(t, density):
    k = int(math.floor(density * t.size + 1e-9))
    out = np.zeros_like(t).ravel()
    order = np.argsort(-np.abs(t).ravel())[:k]
    out[order] = t.ravel()[order]
    return out.reshape(t.shape)


def _ties_entry(vals):
    s = np.sign(sum(vals))
    agree = [v for v in vals if v != 0 and np.sign(v) == s]
    return float(np.mean(agree)) if agree and s != 0 else 0.0


def _ties_ref(tasks):
    out = np.zeros_like(tasks[0])
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = _ties_entry([t[i, j] for t in tasks])
    return out


def _dare_ref(srcs, weights, p, seed):
    """Replays the documented draw order: modules sorted, adapters in order, one rand per entry."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in sorted(MODULES):
        tasks = []
        for w, a in zip(weights, srcs):
            t = w * dense_np(a, m, (5, 4))
            if m in a.factors:
                u = torch.rand((5, 4), generator=g, dtype=torch.float64).numpy()
                t = np.array([[t[i, j] / (1 - p) if u[i, j] >= p else 0.0 for j in range(4)] for i in range(5)])
            tasks.append(t)
        out[m] = tasks
    return out


@pytest.mark.parametrize("density", [0.25, 0.5, 1.0])
def test_ties_matches_reference(density):
    srcs, weights = _sources(), [1.0, -0.5, 2.0]
    dd = compose(srcs, "ties", density=density, weights=weights)
    assert isinstance(dd, DenseDelta) and dd.modules == sorted(MODULES)
    for m in MODULES:
        ref = _ties_ref([_trim(t, density) for t in _tasks(srcs, weights, m)])
        np.testing.assert_allclose(dd.deltas[m].double().numpy(), ref, rtol=1e-6, atol=1e-6)
        assert dd.deltas[m].dtype == torch.float32 and dd.deltas[m].shape == (5, 4)


@pytest.mark.parametrize("density", [0.1, 0.35, 1.0])
def test_magnitude_prune_matches_reference(density):
    srcs, weights = _sources(), [0.3, 1.0, -2.0]
    dd = compose(srcs, "magnitude_prune", density=density, weights=weights)
    for m in MODULES:
        ref = _trim(sum(_tasks(srcs, weights, m)), density)
        np.testing.assert_allclose(dd.deltas[m].double().numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("p, seed", [(0.5, 0), (0.9, 3)])
def test_dare_linear_and_dare_ties_match_reference(p, seed):
    srcs, weights = _sources(), [1.0, 2.0, -0.7]
    lin = compose(srcs, "dare_linear", drop_prob=p, seed=seed, weights=weights)
    ties = compose(srcs, "dare_ties", drop_prob=p, seed=seed, weights=weights)
    for m, tasks in _dare_ref(srcs, weights, p, seed).items():
        np.testing.assert_allclose(lin.deltas[m].double().numpy(), sum(tasks), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ties.deltas[m].double().numpy(), _ties_ref(tasks), rtol=1e-6, atol=1e-6)
    other = compose(srcs, "dare_linear", drop_prob=p, seed=seed + 1, weights=weights)
    assert not torch.equal(other.deltas["l.0.q"], lin.deltas["l.0.q"])


def test_dare_is_unbiased():
    """mean over D seeds of DARE-then-sum → the exact sum; E‖mean − x‖² = ‖x‖²·p/((1−p)·D) per adapter."""
    srcs, p, draws = [rand_adapter(1, modules=("m",), shape=(6, 5), scale=1.0)], 0.5, 400
    exact = srcs[0].factors["m"].delta().double()
    mean = sum(compose_dare_linear(srcs, drop_prob=p, seed=s).deltas["m"].double() for s in range(draws)) / draws
    rel = float((mean - exact).norm() / exact.norm())
    expected = math.sqrt(p / ((1 - p) * draws))  # 0.05
    assert 0.5 * expected < rel < 1.6 * expected
    assert torch.equal(compose_dare_linear(srcs, drop_prob=0.0).deltas["m"], exact.float())


def test_registry_flags_and_parameter_errors():
    for name in ("ties", "dare_linear", "dare_ties", "magnitude_prune"):
        assert not METHODS[name].low_rank and not METHODS[name].exact and METHODS[name].reference
    for name in ("sum", "mean", "task_arithmetic"):
        assert METHODS[name].low_rank and METHODS[name].exact
    srcs = _sources()
    with pytest.raises(ConfigError, match=r"accepted: density=0\.2, weights=None"):
        compose(srcs, "ties", drop_prob=0.5)
    with pytest.raises(ConfigError, match=r"accepted: drop_prob=0\.9, seed=0, weights=None"):
        compose(srcs, "dare_ties", density=0.5)
    with pytest.raises(ConfigError, match="density"):
        compose(srcs, "magnitude_prune", density=0.0)
    with pytest.raises(ConfigError, match="drop_prob"):
        compose(srcs, "dare_linear", drop_prob=1.0)
    with pytest.raises(ConfigError, match="seed"):
        compose(srcs, "dare_linear", seed=1.5)
    with pytest.raises(ConfigError, match="2 weights for 3 adapters"):
        compose(srcs, "ties", weights=[1.0, 1.0])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_env(request, tmp_path_factory):
    make, specs = (gpt2, GPT2_SPECS) if request.param == "gpt2" else (llama, LLAMA_SPECS)
    base = make()
    sources, multi = build_env(base, specs, tmp_path_factory.mktemp(f"dense_{request.param}"))
    return dict(arch=request.param, base=base, sources=sources, multi=multi)


def test_dense_delta_merge_is_base_plus_delta(model_env):
    dd = compose(model_env["sources"], "ties", density=0.3)
    base = model_env["base"]
    merged = merge_into_base(copy.deepcopy(base), dd)
    for m, delta in dd.deltas.items():
        module = base.get_submodule(m)
        conv = isinstance(module, Conv1D)
        assert conv is (model_env["arch"] == "gpt2")
        expected = module.weight.double() + (delta.double().T if conv else delta.double())
        torch.testing.assert_close(merged.get_submodule(m).weight.double(), expected.float().double())
    # density 1 keeps the exact sum: the merged model then equals PEFT with all three adapters active
    full = merge_into_base(copy.deepcopy(base), compose(model_env["sources"], "magnitude_prune", density=1.0))
    torch.testing.assert_close(logits(full), logits(model_env["multi"]), rtol=0, atol=1e-4)


def test_dense_delta_save_load_roundtrip(tmp_path):
    dd = compose(_sources(), "dare_ties", drop_prob=0.5, seed=1)
    dd.base_model = "gpt2"
    path = save_dense_delta(dd, tmp_path / "delta.safetensors")
    back = load_dense_delta(path)
    assert back.modules == dd.modules and back.base_model == "gpt2" and back.fan_in_fan_out is False
    assert back.meta["method"] == "dare_ties" and back.meta["seed"] == 1
    for m in dd.modules:
        assert torch.equal(back.deltas[m], dd.deltas[m])
    with pytest.raises(OutputExistsError):
        save_dense_delta(dd, path)
    save_dense_delta(dd, path, overwrite=True)
    with pytest.raises(AdapterError, match="no modules"):
        save_dense_delta(DenseDelta(deltas={}), tmp_path / "empty.safetensors")
    with pytest.raises(AdapterError, match="finite 2-D"):
        save_dense_delta(DenseDelta(deltas={"x": torch.tensor([[math.nan]])}), tmp_path / "nan.safetensors")
    with pytest.raises(AdapterError, match="not found"):
        load_dense_delta(tmp_path / "missing.safetensors")


def test_merge_dense_delta_errors_leave_model_untouched():
    model = gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = {"transformer.h.0.attn.c_attn": torch.ones(96, 32)}
    with pytest.raises(AdapterError, match="no.such is not in the base model"):
        merge_into_base(model, DenseDelta(deltas=good | {"no.such": torch.ones(2, 2)}))
    with pytest.raises(AdapterError, match="weight shape"):
        merge_into_base(model, DenseDelta(deltas=good | {"transformer.h.1.attn.c_proj": torch.ones(32, 31)}))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
