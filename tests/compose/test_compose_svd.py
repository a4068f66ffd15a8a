"""svd re-compression against PEFT (full rank) and numpy's SVD of the dense weighted sum."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from compose_fixtures import GPT2_SPECS, LLAMA_SPECS, build_env, dense_np, gpt2, llama, logits, rand_adapter
from peft import PeftModel

from lorasum.adapters import load_adapter, save_adapter
from lorasum.compose import METHODS, compose, compose_sum, compose_svd, compose_svd_report
from lorasum.errors import ConfigError


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def env(request, tmp_path_factory):
    make, specs = (gpt2, GPT2_SPECS) if request.param == "gpt2" else (llama, LLAMA_SPECS)
    base = make()
    sources, multi = build_env(base, specs, tmp_path_factory.mktemp(f"svd_{request.param}"))
    return dict(base=base, sources=sources, multi=multi)


def test_full_rank_svd_equals_all_adapters_active_in_peft(env, tmp_path):
    sources = env["sources"]
    full = max(f.rank for f in compose_sum(sources).factors.values())
    composed = compose(sources, "svd", rank=full)
    path = save_adapter(composed, tmp_path / "svd")
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert "lorasum" not in cfg  # PEFT would warn about an unknown key
    peft_svd = PeftModel.from_pretrained(copy.deepcopy(env["base"]), path).eval()
    torch.testing.assert_close(logits(peft_svd), logits(env["multi"]), rtol=0, atol=1e-4)
    exact = compose_sum(sources)
    for m, f in load_adapter(path).factors.items():
        torch.testing.assert_close(f.delta(), exact.factors[m].delta(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_truncation_matches_numpy_svd_of_dense_sum(k):
    srcs = [rand_adapter(s, shape=(9, 7)) for s in (1, 2, 3)]
    weights = [0.5, -1.0, 2.0]
    adapter, report = compose_svd_report(srcs, rank=k, weights=weights)
    for m in srcs[0].factors:
        dense = sum(w * dense_np(a, m) for w, a in zip(weights, srcs))
        u, s, vt = np.linalg.svd(dense)
        rel = np.sqrt(np.sum(s[k:] ** 2) / np.sum(s ** 2))
        rep = report[m]
        assert rep.rel_error == pytest.approx(rel, abs=1e-6)
        assert rep.energy == pytest.approx(np.sum(s[:k] ** 2) / np.sum(s ** 2), abs=1e-6)
        assert rep.rank == k and rep.rank_in == sum(a.factors[m].rank for a in srcs)
        np.testing.assert_allclose(rep.singular_values[: len(s)], s[: rep.rank_in], rtol=1e-6, atol=1e-9)
        got = adapter.factors[m].delta().double().numpy()
        assert np.linalg.norm(dense - got) / np.linalg.norm(dense) == pytest.approx(rel, abs=1e-6)
        best = (u[:, :k] * s[:k]) @ vt[:k]  # Eckart–Young optimum (unique: distinct σ)
        np.testing.assert_allclose(got, best, rtol=0, atol=1e-5 * s[0])
        assert adapter.factors[m].rank == k and adapter.factors[m].scaling == 1.0
    assert json.loads(json.dumps(report[m].to_dict()))["rel_error"] == report[m].rel_error


def test_rank_at_least_sum_is_exact_and_deficient_sums_work():
    a = rand_adapter(4, shape=(6, 5))
    twice, report = compose_svd_report([a, a], rank=10)  # rank of a + a is that of a
    for m, f in a.factors.items():
        torch.testing.assert_close(twice.factors[m].delta(), 2 * f.delta(), rtol=1e-5, atol=1e-5)
        assert report[m].rel_error == pytest.approx(0.0, abs=1e-7)
        s = report[m].singular_values
        assert all(x < 1e-5 * s[0] for x in s[f.rank:])  # numerical rank = r


def test_svd_registry_and_errors():
    srcs = [rand_adapter(1), rand_adapter(2)]
    m = METHODS["svd"]
    assert m.low_rank and not m.exact and m.fn is compose_svd
    with pytest.raises(ConfigError, match="accepted: rank, weights=None"):
        compose(srcs, "svd")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="rank must be a positive integer"):
            compose(srcs, "svd", rank=bad)
