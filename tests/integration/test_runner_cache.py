"""The runner on real data with a tiny random GPT-2: hybrids, a dense method, provenance and the cache.

Numbers are checked against independent computations: the adapters' ΔW added by hand to a fresh copy
of the base weights (Conv1D: W + ΔWᵀ) and evaluated with ``lorasum.evaluate.perplexity``.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from integration_run import DATA, DOMAINS, write_config

from lorasum.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def env(tiny_run):
    """A fresh base model, tokenizer and the test records, loaded independently of the runner."""
    from lorasum.data import load_domain
    from lorasum.models import load_model

    model, tok, _ = load_model(str(tiny_run["model"]), device="cpu", dtype="float32")
    tests = {d: load_domain(d, tiny_run["root"], split_seed=0, train_size=DATA["train_size"],
                            validation_size=DATA["validation_size"], test_size=DATA["test_size"]).test
             for d in DOMAINS}
    return model, tok, tests


def _ppl_with_deltas(env, deltas: list[dict[str, torch.Tensor]], domains) -> dict[str, float]:
    """Perplexity per domain of a copy of the base with each ΔW (nn.Linear orientation) added by hand."""
    from lorasum.evaluate import perplexity

    base, tok, tests = env
    model = copy.deepcopy(base)
    with torch.no_grad():
        for dd in deltas:
            for m, d in dd.items():
                model.get_submodule(m).weight += d.T.to(torch.float32)  # GPT-2 Conv1D stores Wᵀ
    out = {}
    for dom in domains:
        p = perplexity(model, tok, tests[dom], max_length=DATA["max_length"], batch_size=3)
        out[dom] = math.exp(p.nll_sum / p.n_tokens)
    return out


def _lora_deltas(path: Path) -> dict[str, torch.Tensor]:
    from lorasum.adapters import load_adapter

    return {m: f.scaling * (f.B.double() @ f.A.double()) for m, f in load_adapter(path).factors.items()}


def _row(results, model, seed, dom):
    return next(e for e in results["evaluations"]
                if e["model"] == model and e["seed"] == seed and e["eval_domain"] == dom)


def test_hybrids_are_exact_sums_and_their_perplexity_is_independently_reproduced(run, env):
    res, out = run["results"], run["out"]
    hybrids = [c for c in res["compositions"] if c["kind"] == "hybrid"]
    assert {(c["single"], c["seed"]) for c in hybrids} == {(d, s) for d in DOMAINS for s in (0, 1)}
    c = next(c for c in hybrids if c["single"] == "finance" and c["seed"] == 1)
    assert c["parts"] == ["merged-math+medicine", "finance"]
    parts = [_lora_deltas(out / "adapters" / "seed1" / p) for p in c["parts"]]
    composed = _lora_deltas(out / "adapters" / "seed1" / c["name"])
    for m in composed:
        torch.testing.assert_close(composed[m], sum(p[m] for p in parts if m in p), rtol=1e-5, atol=1e-7)
    expected = _ppl_with_deltas(env, parts, DOMAINS)
    for dom in DOMAINS:
        assert _row(res, c["name"], 1, dom)["ppl"] == pytest.approx(expected[dom], rel=1e-4)
        assert c["ppl"][dom] == pytest.approx(expected[dom], rel=1e-4)
    merged = c["ppl_merged"]["union"]
    assert c["ppl_change_pct"]["union"] == pytest.approx(100 * (c["ppl"]["union"] - merged) / merged)


def test_dense_methods_are_evaluated_on_merged_weights(run, env):
    from lorasum.adapters import load_adapter
    from lorasum.compose import compose_ties

    res, out = run["results"], run["out"]
    # magnitude pruning at density 1 keeps the whole sum: dense path == PEFT path of the low-rank sum
    for seed in (0, 1):
        for dom in ("math", "medicine"):
            dense = _row(res, "magnitude_prune-math+medicine", seed, dom)["ppl"]
            assert dense == pytest.approx(_row(res, "sum-math+medicine", seed, dom)["ppl"], rel=1e-4)
    # TIES (density 0.5) of the seed-0 singles, added by hand
    singles = [load_adapter(out / "adapters" / "seed0" / d) for d in ("math", "finance")]
    ties = compose_ties(singles, density=0.5)
    expected = _ppl_with_deltas(env, [ties.deltas], ["math", "finance"])
    for dom, v in expected.items():
        assert _row(res, "ties-math+finance", 0, dom)["ppl"] == pytest.approx(v, rel=1e-4)
    assert not (out / "adapters" / "seed0" / "ties-math+finance").exists()  # dense results are not stored
    # seed 1's single adapters were evaluated after seed 0's dense methods: the base was restored
    expected = _ppl_with_deltas(env, [_lora_deltas(out / "adapters" / "seed1" / "medicine")], DOMAINS)
    for dom in DOMAINS:
        assert _row(res, "medicine", 1, dom)["ppl"] == pytest.approx(expected[dom], rel=1e-4)


def test_every_number_carries_provenance(run):
    res = run["results"]
    assert res["schema_version"] == 2
    keys = {(a["name"], a["seed"]): a["key"] for a in res["adapters"]}
    for e in res["evaluations"]:
        assert e["base_model"]["config_hash"] == res["model"]["config_hash"]
        if e["kind"] != "base":
            assert e["adapter_key"] == keys[(e["model"], e["seed"])]
        if e["eval_domain"] != "union":
            assert e["test_hash"] == res["data"][e["eval_domain"]]["test_hash"] and len(e["key"]) == 64
    for a in res["adapters"]:
        if a["kind"] in ("single", "merged"):
            assert a["train_data"] == {d: res["data"][d]["train_hash"] for d in a["domains"]}
        else:
            assert a["sources"] and all(len(k) == 64 for k in a["sources"])
    for c in res["combinations"]:
        label = "+".join(c["domains"])
        assert c["adapter_keys"]["sum"] == keys[(f"sum-{label}", c["seed"])]
        assert c["adapter_keys"]["merged"] == keys[(f"merged-{label}", c["seed"])]
    methods = {(c["method"], c["kind"]) for c in res["compositions"]}
    assert methods == {("sum", "sum"), ("sum", "hybrid"), ("ties", "composed"), ("magnitude_prune", "composed")}
    assert {g["seed"] for g in res["geometry"]} == {0, 1}
    report = run["out"] / "report"
    assert (report / "layer_cosines.png").is_file() and (report / "layer_cosines_math+medicine.png").is_file()
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "merged(math+medicine) + finance" in md and "Composition methods" in md
    import hashlib
    import json

    manifest = json.loads((run["out"] / "manifest.json").read_text(encoding="utf-8"))
    outputs = {o["path"]: o for o in manifest["outputs"]}
    assert set(outputs) == {"results.json", "report", "adapters"}
    assert outputs["results.json"]["sha256"] == hashlib.sha256((run["out"] / "results.json").read_bytes()).hexdigest()
    assert {k.split("/")[1] for k in manifest["inputs"]} == set(DOMAINS)
    assert manifest["config"]["seeds"] == [0, 1] and manifest["packages"]["torch"]


def test_results_record_where_the_time_went(run):
    """results.json: seconds per phase (all of them, none negative, together within the wall time), the
    device and no GPU peak on the CPU; the report's header line shows them."""
    import json

    res = run["results"]  # the first run, which trained and evaluated everything
    t = res["timings"]
    assert set(t) == {"load_model", "data", "train_and_compose", "evaluate", "geometry"}
    assert all(v >= 0 for v in t.values()) and sum(t.values()) <= res["wall_seconds"] + 0.5
    assert t["train_and_compose"] > 0 and t["evaluate"] > 0
    assert res["device"] == "cpu" and res["peak_gpu_memory_gib"] is None
    last = json.loads((run["out"] / "results.json").read_text(encoding="utf-8"))  # the module's reruns rewrite both
    md = (run["out"] / "report" / "report.md").read_text(encoding="utf-8")
    assert f"Wall time {last['wall_seconds']:.0f} s in this process (model load" in md and " on cpu." in md


def _adapter_files(out: Path) -> dict[Path, int]:
    return {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "adapters").rglob("adapter_model.safetensors")}


def _cache_files(out: Path, kind: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "cache" / kind).glob("*.json")}


def test_changing_test_size_reruns_evaluations_only(run):
    out = run["tmp"] / "test-size"
    shutil.copytree(run["out"], out)
    adapters, adapter_cache = _adapter_files(out), _cache_files(out, "adapters")
    evals = _cache_files(out, "evals")
    cfg = write_config(run["tmp"], run["model"], test_size=4)
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    assert _adapter_files(out) == adapters, "no adapter may be retrained or recomposed"
    assert _cache_files(out, "adapters") == adapter_cache
    new_evals = _cache_files(out, "evals")
    assert all(new_evals[k] == t for k, t in evals.items())  # old entries untouched
    assert len(new_evals) > len(evals)  # every evaluation of the new test sets is new
    from lorasum.report import load_results

    res = load_results(out / "results.json")
    assert {e["n_examples"] for e in res["evaluations"] if e["eval_domain"] in DOMAINS} == {4}
    assert [a["key"] for a in res["adapters"]] == [a["key"] for a in run["results"]["adapters"]]


def test_interrupted_run_redoes_only_the_missing_pieces(run):
    out = run["tmp"] / "interrupted"
    shutil.copytree(run["out"], out)
    res = run["results"]
    lost_adapter = Path("adapters/seed0/merged-math+medicine/adapter_model.safetensors")
    lost_eval = _row(res, "sum-math+finance", 1, "finance")["key"] + ".json"
    shutil.rmtree(out / lost_adapter.parent)
    (out / "cache" / "evals" / lost_eval).unlink()
    (out / "results.json").unlink()
    (out / "report").rename(out / "old-report")  # as if stopped before the end
    adapters, evals = _adapter_files(out), _cache_files(out, "evals")
    assert main(["reproduce", "-q", "--config", str(run["cfg"]), "--out", str(out)]) == 0
    after = _adapter_files(out)
    assert set(after) == set(adapters) | {lost_adapter}
    assert all(after[p] == t for p, t in adapters.items()), "only the missing adapter may be trained"
    after_evals = _cache_files(out, "evals")
    assert set(after_evals) == set(evals) | {lost_eval}
    assert all(after_evals[k] == t for k, t in evals.items()), "only the missing evaluation may run"
    from lorasum.report import load_results

    again = load_results(out / "results.json")
    assert again["combinations"] == res["combinations"] and again["compositions"] == res["compositions"]


def test_edited_or_damaged_adapter_folders_are_made_again(run, capsys):
    """An adapter folder changed after the run made it (a config edited by hand, weights cut short) is made
    again with a warning naming the file, never evaluated as it is: with the evaluations redone, every number
    is the original run's, and no other adapter is touched."""
    import json

    out = run["tmp"] / "edited"
    shutil.copytree(run["out"], out)
    edited = Path("adapters/seed0/sum-math+medicine/adapter_model.safetensors")
    cut = Path("adapters/seed1/medicine/adapter_model.safetensors")
    config_path = out / edited.parent / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"lora_alpha": 4 * config["lora_alpha"]}))
    weights = (out / cut).read_bytes()
    (out / cut).write_bytes(weights[: len(weights) // 2])
    shutil.rmtree(out / "cache" / "evals")
    before = _adapter_files(out)
    capsys.readouterr()
    assert main(["reproduce", "-q", "--config", str(run["cfg"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out / edited.parent}: adapter_config.json changed or missing" in err
    assert f"{out / cut.parent}: adapter_model.safetensors changed or missing" in err
    after = _adapter_files(out)
    assert {p for p in after if after[p] != before.get(p)} == {edited, cut}
    from lorasum.report import load_results

    got = {(e["model"], e["seed"], e["eval_domain"]): e["ppl"] for e in load_results(out / "results.json")["evaluations"]}
    for e in run["results"]["evaluations"]:
        assert got[(e["model"], e["seed"], e["eval_domain"])] == pytest.approx(e["ppl"], rel=1e-5), e["model"]


def test_eval_scoring_options_reach_the_evaluations_and_their_cache_keys(run, env):
    """eval.loss_on / eval.stride change the numbers, so they rerun the evaluations (not the training);
    eval.batch_size does not change them, so it reuses the cache."""
    from lorasum.evaluate import perplexity

    out = run["tmp"] / "loss-on-all"
    shutil.copytree(run["out"], out)
    adapters, evals = _adapter_files(out), _cache_files(out, "evals")
    cfg = write_config(run["tmp"], run["model"], eval="{batch_size: 2, loss_on: all, stride: 16}")
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    assert _adapter_files(out) == adapters, "no adapter may be retrained"
    new_evals = _cache_files(out, "evals")
    assert len(new_evals) == 2 * len(evals) and all(new_evals[k] == t for k, t in evals.items())
    from lorasum.report import load_results

    res = load_results(out / "results.json")
    model, tok, tests = env
    for dom in DOMAINS:
        want = perplexity(model, tok, tests[dom], max_length=DATA["max_length"], loss_on="all", stride=16)
        got = _row(res, "base", 0, dom)
        assert got["n_tokens"] == want.n_tokens > _row(run["results"], "base", 0, dom)["n_tokens"]
        assert got["ppl"] == pytest.approx(want.ppl, rel=1e-5)
    same = write_config(run["tmp"], run["model"], eval="{batch_size: 1, loss_on: all, stride: 16}")
    assert main(["reproduce", "-q", "--config", str(same), "--out", str(out)]) == 0
    assert _cache_files(out, "evals") == new_evals, "batch size alone must not rerun an evaluation"


def test_eval_compile_scores_the_lora_folders_merged_with_the_same_numbers(run, capsys):
    """eval.compile: the evaluations of a run done again (cache emptied) with the ΔW of the trained adapters,
    sums and hybrids merged into the base weights in turn (not compiled on the CPU) give every number of the
    ordinary run (PEFT adapters); the base model and the dense results (ties, magnitude_prune) too; nothing
    retrains."""
    from lorasum.report import load_results

    out = run["tmp"] / "eval-compile"
    shutil.copytree(run["out"], out)
    shutil.rmtree(out / "cache" / "evals")
    adapters = _adapter_files(out)
    cfg = write_config(run["tmp"], run["model"], eval="{batch_size: 3, compile: true}")
    capsys.readouterr()
    assert main(["reproduce", "--config", str(cfg), "--out", str(out)]) == 0
    assert _adapter_files(out) == adapters, "no adapter may be retrained"
    res, ref = load_results(out / "results.json"), run["results"]
    lora = [a for a in ref["adapters"] if a["path"] is not None]
    said = re.search(r"eval    (\d+) models scored with decoder layers, each adapter's ΔW merged into the base "
                     r"weights \(eval.compile\)", capsys.readouterr().err)
    assert said and int(said.group(1)) > len(lora)  # every LoRA folder, and the base model and dense results
    got = {(e["model"], e["seed"], e["eval_domain"]): e for e in res["evaluations"]}
    assert len(got) == len(ref["evaluations"])
    for e in ref["evaluations"]:
        g = got[(e["model"], e["seed"], e["eval_domain"])]
        assert g["n_tokens"] == e["n_tokens"] and g["ppl"] == pytest.approx(e["ppl"], rel=1e-5), e["model"]


def test_reproduce_stopped_mid_training_continues_from_the_checkpoint(run, monkeypatch, capsys):
    import signal

    from safetensors.torch import load_file
    from tiny_models import at_forward_pass, signal_self

    out = run["tmp"] / "mid-training"
    shutil.copytree(run["out"], out)
    lost = out / "adapters/seed1/merged-math+medicine"  # 12 examples, batch 3: 4 steps
    shutil.rmtree(lost)
    at_forward_pass(monkeypatch, 2, signal_self(signal.SIGINT))
    assert main(["reproduce", "-q", "--config", str(run["cfg"]), "--out", str(out)]) == 130
    assert "after step 2 of 4" in capsys.readouterr().err
    assert (out / "adapters/seed1/merged-math+medicine.ckpt/state.json").is_file() and not lost.exists()
    monkeypatch.undo()
    calls = at_forward_pass(monkeypatch, 0, lambda: None)  # only counts
    assert main(["reproduce", "-q", "--config", str(run["cfg"]), "--out", str(out)]) == 0
    assert len(calls) == 2, "only the two missing steps may be trained"
    want = load_file(str(run["out"] / "adapters/seed1/merged-math+medicine/adapter_model.safetensors"))
    got = load_file(str(lost / "adapter_model.safetensors"))
    assert want.keys() == got.keys() and all(torch.allclose(want[k], got[k], rtol=0, atol=1e-6) for k in want)
    assert not (out / "adapters/seed1/merged-math+medicine.ckpt").exists()


def test_report_rebuilt_from_results_json_equals_the_report_of_the_run(run, tmp_path):
    """results.json holds everything the report shows (and in an order that survives the JSON round trip)."""
    (tmp_path / "results.json").write_bytes((run["out"] / "results.json").read_bytes())
    assert main(["report", "-q", str(tmp_path)]) == 0
    assert (tmp_path / "report" / "report.md").read_text(encoding="utf-8") == \
        (run["out"] / "report" / "report.md").read_text(encoding="utf-8")
