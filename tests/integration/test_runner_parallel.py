"""``train.parallel_adapters`` in a whole run: the same numbers as training one adapter after the other
(no dropout anywhere, so both see the same function), one shared pass, and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from integration_run import DATA, DOMAINS, data_root_or_skip

from lorasum.cli import main
from lorasum.report import load_results

pytestmark = pytest.mark.integration


def _cfg_text(model: Path, train: str, lora: str = "{r: 4, lora_alpha: 8, lora_dropout: 0.0}", seeds: str = "[0]",
              hybrids: bool = False) -> str:
    d = DATA
    return (f"name: tiny\nmodel: {model}\ndomains: [{', '.join(DOMAINS)}]\nseeds: {seeds}\ndevice: cpu\n"
            f"data: {{max_length: {d['max_length']}, train_size: {d['train_size']}, "
            f"validation_size: {d['validation_size']}, test_size: {d['test_size']}}}\n"
            f"lora: {lora}\ntrain: {train}\neval: {{batch_size: 3}}\nhybrids: {str(hybrids).lower()}\n")


def _config(tmp: Path, model: Path, parallel: int) -> Path:
    path = tmp / f"par{parallel}.yaml"
    path.write_text(_cfg_text(model, f"{{learning_rate: 1.0e-2, batch_size: 3, parallel_adapters: {parallel}}}",
                              seeds="[0, 1]", hybrids=True))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data_root_or_skip()
    from tiny_models import save_tiny_gpt2

    tmp = tmp_path_factory.mktemp("par")
    save_tiny_gpt2(tmp / "m", dropout=0.0)
    out = {}
    for parallel in (1, 0, 5):
        assert main(["reproduce", "-q", "--config", str(_config(tmp, tmp / "m", parallel)),
                     "--out", str(tmp / f"run{parallel}")]) == 0
        out[parallel] = (tmp / f"run{parallel}", load_results(tmp / f"run{parallel}" / "results.json"))
    return out


def test_parallel_run_gives_the_numbers_of_the_sequential_run(runs):
    (_, seq), (out, par) = runs[1], runs[0]
    assert len(par["adapters"]) == len(seq["adapters"])
    for a, b in zip(seq["evaluations"], par["evaluations"]):
        assert (a["model"], a["seed"], a["eval_domain"]) == (b["model"], b["seed"], b["eval_domain"])
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-4)
    trained = [a for a in par["adapters"] if a["kind"] in ("single", "merged")]
    assert len(trained) == 14  # (3 singles + 3 pairs + 1 triple) x 2 seeds, all in one pass
    for a in trained:
        meta = json.loads((out / a["path"] / "lorasum.json").read_text())
        assert meta["parallel_adapters"] == 14 and meta["steps"] == a["train"]["steps"]
    # the default (1) keeps the keys of earlier runs; another value changes them
    assert {a["key"] for a in seq["adapters"]}.isdisjoint({a["key"] for a in trained})


def test_parallel_groups_of_five_and_the_cache(runs, caplog):
    (out5, five), (_, seq) = runs[5], runs[1]
    sizes = sorted({json.loads((out5 / a["path"] / "lorasum.json").read_text())["parallel_adapters"]
                    for a in five["adapters"] if a["kind"] in ("single", "merged")})
    assert sizes == [4, 5]  # 14 adapters: 5 + 5 + 4
    for a, b in zip(seq["evaluations"], five["evaluations"]):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-4)
    before = {p: p.stat().st_mtime_ns for p in out5.glob("adapters/*/*/adapter_model.safetensors")}
    cfg = out5.parent / "par5.yaml"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out5)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out5.glob("adapters/*/*/adapter_model.safetensors")}


def test_a_folder_left_by_other_settings_is_retrained_not_reused(runs, tmp_path):
    """Sequential (lr 1e-2) -> parallel (lr 2e-2) -> sequential (lr 1e-2) in one folder: the third run must
    not pair the first run's cache entries with the second run's adapter folders."""
    model = runs[1][0].parent / "m"
    out = tmp_path / "run"
    cfgs = []
    for i, train in enumerate(["{learning_rate: 1.0e-2, batch_size: 3}",
                               "{learning_rate: 2.0e-2, batch_size: 3, parallel_adapters: 0}",
                               "{learning_rate: 1.0e-2, batch_size: 3}"]):
        cfgs.append(tmp_path / f"c{i}.yaml")
        cfgs[-1].write_text(_cfg_text(model, train))
        assert main(["reproduce", "-q", "--config", str(cfgs[-1]), "--out", str(out)]) == 0
        res = load_results(out / "results.json")
        for a in res["adapters"]:
            if a["path"] is None:
                continue
            folder = out / a["path"]
            if a["kind"] in ("single", "merged"):
                meta = json.loads((folder / "lorasum.json").read_text())
                assert meta["meta"]["job_key"] == a["key"]
                assert meta["train"]["learning_rate"] == (2e-2 if i == 1 else 1e-2)
            else:
                assert json.loads((folder / "lorasum_job.json").read_text())["job_key"] == a["key"]
        if i == 0:
            first = res
    for a, b in zip(first["evaluations"], res["evaluations"]):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-6)


def test_parallel_falls_back_to_one_at_a_time_for_unsupported_targets(runs, tmp_path, capsys):
    model = runs[1][0].parent / "m"
    cfg = tmp_path / "lm.yaml"
    cfg.write_text(_cfg_text(model, "{learning_rate: 1.0e-2, batch_size: 3, parallel_adapters: 0}",
                             "{r: 2, lora_alpha: 4, target_modules: [c_attn, lm_head]}"))
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert "lm_head (embeddings or the LM head): training the adapters one after the other" in capsys.readouterr().err
    res = load_results(tmp_path / "run" / "results.json")
    assert {a["train"]["parallel_adapters"] for a in res["adapters"] if a.get("train")} == {1}
    assert "Training:" not in (tmp_path / "run" / "report" / "report.md").read_text()


def test_sigterm_during_parallel_training_continues_from_the_group_checkpoint(runs, tmp_path, monkeypatch, capsys):
    import signal

    from safetensors.torch import load_file
    from tiny_models import at_forward_pass, signal_self

    model = runs[1][0].parent / "m"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(_cfg_text(model, "{learning_rate: 1.0e-2, batch_size: 2, parallel_adapters: 0}",
                             "{r: 4, lora_alpha: 8, lora_dropout: 0.1}"))
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(tmp_path / "ref")]) == 0
    # step 4 of 9: the 3 singles (3 steps each) are saved, the merged ones are not
    at_forward_pass(monkeypatch, 4, signal_self(signal.SIGTERM), parallel=True)
    out = tmp_path / "run"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 4 of 9; checkpoint saved in" in err and "3 adapter(s)" in err
    assert "run the same command again" in err and len(list(out.glob("adapters/parallel-*.ckpt"))) == 1
    assert {p.parent.name for p in out.glob("adapters/seed0/*/adapter_model.safetensors")} == set(DOMAINS)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("adapters/seed0/*/adapter_model.safetensors")}
    monkeypatch.undo()
    calls = at_forward_pass(monkeypatch, 0, lambda: None, parallel=True)
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    assert len(calls) == 5  # steps 5-9 only
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # the finished singles were kept
    assert not list(out.glob("adapters/parallel-*.ckpt"))
    for want in (tmp_path / "ref").glob("adapters/seed0/*/adapter_model.safetensors"):
        a, b = load_file(str(want)), load_file(str(out / want.relative_to(tmp_path / "ref")))
        assert all(torch.equal(a[k], b[k]) for k in a), want.parent.name  # as if never stopped (dropout on)


def test_group_checkpoints_overwrite_stale_and_damaged(runs, tmp_path, monkeypatch, capsys):
    """After a stop: --overwrite starts the group over; a damaged checkpoint is replaced and the whole group
    retrained (the same adapters as an uninterrupted run, dropout on); a checkpoint of other settings is
    removed; a file in the checkpoint's place is not a checkpoint: it is kept and the run refused (exit 2)."""
    import shutil
    import signal

    from safetensors.torch import load_file
    from tiny_models import at_forward_pass, signal_self

    model = runs[1][0].parent / "m"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(_cfg_text(model, "{learning_rate: 1.0e-2, batch_size: 2, parallel_adapters: 0}",
                             "{r: 4, lora_alpha: 8, lora_dropout: 0.1}"))
    ref = tmp_path / "ref"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(ref)]) == 0
    stopped = tmp_path / "stopped"
    at_forward_pass(monkeypatch, 5, signal_self(signal.SIGINT), parallel=True)
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(stopped)]) == 130
    monkeypatch.undo()
    (ckpt,) = stopped.glob("adapters/parallel-*.ckpt")

    def same_as_ref(out):
        for want in ref.glob("adapters/seed0/*/adapter_model.safetensors"):
            a, b = load_file(str(want)), load_file(str(out / want.relative_to(ref)))
            assert all(torch.equal(a[k], b[k]) for k in a), want.parent.name
        assert not list(out.glob("adapters/parallel-*"))

    cases = {
        "overwrite": (lambda out: None, ["--overwrite"], 9, "earlier run (--overwrite)"),
        "damaged": (lambda out: (out / ckpt.relative_to(stopped) / "group.safetensors").write_bytes(b"x"), [], 9,
                    "training the group from the start"),
        "other": (lambda out: shutil.copytree(out / ckpt.relative_to(stopped), out / "adapters/parallel-0.ckpt"), [], 4,
                  "other settings"),
    }
    for name, (damage, flags, steps, message) in cases.items():
        out = tmp_path / name
        shutil.copytree(stopped, out)
        damage(out)
        calls = at_forward_pass(monkeypatch, 0, lambda: None, parallel=True)
        capsys.readouterr()
        assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out), *flags]) == 0, name
        monkeypatch.undo()
        assert message in capsys.readouterr().err, name
        assert len(calls) == steps, name  # 9: the whole group again; 4: steps 6-9 from the checkpoint
        same_as_ref(out)
    out = tmp_path / "file"  # only lorasum's own checkpoints are ever deleted, even in the run folder
    shutil.copytree(stopped, out)
    shutil.rmtree(out / ckpt.relative_to(stopped))
    (out / ckpt.relative_to(stopped)).write_text("hi")
    calls = at_forward_pass(monkeypatch, 0, lambda: None, parallel=True)
    capsys.readouterr()
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"{out / ckpt.relative_to(stopped)}: exists and is not a lorasum training checkpoint (a file)" in err
    assert (out / ckpt.relative_to(stopped)).read_text() == "hi" and not calls
