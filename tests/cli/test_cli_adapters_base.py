"""Which base model an adapter belongs to, through the CLI: compose --merge-into-base loads the base model
recorded in lorasum.json, compose writes that record into what it composes, and compose, similarity and eval
refuse adapters of another base model (one line, exit 2) and warn on a copy of the model.

Adapters are made in code on tiny GPT-2 folders (no data needed, except for eval) with the lorasum.json
record that `lorasum train` writes (``lorasum.train.loop._metadata``: name, source, arch, config_hash of the
loaded model's ModelInfo)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from tiny_models import save_tiny_gpt2
from transformers import GPT2LMHeadModel

from lorasum.adapters import load_adapter
from lorasum.cli import main
from lorasum.models import load_model


def make_adapter(model_dir, out, seed: int, *, typed: str | None = None, zero: bool = False):
    """A PEFT LoRA (r=2 on c_attn and c_proj) of the model folder ``model_dir`` with random factors (B = 0,
    PEFT's initialisation, when ``zero``), plus lorasum.json as `lorasum train` writes it. ``typed``: the
    model name as typed at training time (base_model_name_or_path and the record's name; default the path)."""
    model, _, info = load_model(str(model_dir), device="cpu", dtype="float32")
    info = dataclasses.replace(info, name=typed or info.name)
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"],
                                          fan_in_fan_out=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in pm.modules():
            if isinstance(m, LoraLayer):
                for p in (m.lora_A["default"].weight, m.lora_B["default"].weight):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3 * (0 if zero and p is m.lora_B["default"].weight
                                                                      else 1))
    pm.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = info.name  # set after saving: PEFT would look the name up on the hub
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    (out / "lorasum.json").write_text(json.dumps({"format": "lorasum-adapter/1", "base_model": {
        "name": info.name, "source": info.source, "arch": info.arch, "config_hash": info.config_hash}}))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Model folders: ``base``; ``copy`` (the same files elsewhere: same config hash, other source);
    ``other`` (another config). Adapters ``a``, ``b`` of base, ``c`` of copy, ``d`` of other."""
    root = tmp_path_factory.mktemp("bases")
    base = save_tiny_gpt2(root / "base")
    copy = root / "copy"
    shutil.copytree(base, copy)
    other = save_tiny_gpt2(root / "other", n_positions=128)
    ads = root / "adapters"
    return {"root": root, "base": base, "copy": copy, "other": other,  # trained from `root` as --model base etc.
            "a": make_adapter(base, ads / "a", 1, typed="base"), "b": make_adapter(base, ads / "b", 2, typed="base"),
            "c": make_adapter(copy, ads / "c", 3, typed="copy"), "d": make_adapter(other, ads / "d", 4, typed="other")}


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for f in fragments:
        assert str(f) in err, (f, err)
    return err


def merged_expected(model_dir, adapters, weights):
    """Base weights + Σ wᵢ scalingᵢ (BᵢAᵢ)ᵀ per Conv1D module, from the saved factor files (float64)."""
    state = {k: v.double() for k, v in GPT2LMHeadModel.from_pretrained(model_dir).state_dict().items()}
    for w, folder in zip(weights, adapters):
        cfg = json.loads((folder / "adapter_config.json").read_text())
        scaling = cfg["lora_alpha"] / cfg["r"]
        t = load_file(str(folder / "adapter_model.safetensors"))
        for key in t:
            if key.endswith(".lora_A.weight"):
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                B = t[key.replace("lora_A", "lora_B")].double()
                state[f"{module}.weight"] += w * scaling * (B @ t[key].double()).T  # Conv1D: (d_in, d_out)
    return state


def assert_state_close(folder, expected):
    got = GPT2LMHeadModel.from_pretrained(folder).state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, rtol=0, atol=2e-6, msg=k)


# -- A4: compose --merge-into-base loads the recorded base model ------------------------------------------


def test_merge_into_base_loads_the_recorded_source_from_any_folder(env, tmp_path, monkeypatch, capsys):
    """base_model_name_or_path is the path as typed at training time; from another working folder only the
    recorded source (absolute) finds the model. The merged weights are W + ΔW_a + 0.5 ΔW_b."""
    relative = tmp_path / "elsewhere"
    relative.mkdir()
    monkeypatch.chdir(relative)
    out = tmp_path / "merged"
    assert main(["compose", str(env["a"]), str(env["b"]), "--weights", "1,0.5", "--merge-into-base",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and str(env["base"]) in captured.out
    assert_state_close(out, merged_expected(env["base"], [env["a"], env["b"]], [1.0, 0.5]))


def test_merge_into_base_refuses_a_model_of_another_config(env, tmp_path, capsys):
    rc = main(["compose", str(env["a"]), "--merge-into-base", "--model", str(env["other"]), "--out",
               str(tmp_path / "m")])
    assert rc == 2
    one_line_error(capsys, env["a"], env["base"], env["other"], "different model")
    assert not (tmp_path / "m").exists()


def test_merge_into_a_copy_of_the_model_warns(env, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["compose", str(env["a"]), "--merge-into-base", "--model", str(env["copy"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "cannot tell whether the weights are the same" in err and str(env["copy"]) in err
    assert_state_close(out, merged_expected(env["copy"], [env["a"]], [1.0]))


def test_missing_recorded_source_falls_back_to_the_typed_name(env, tmp_path, monkeypatch, capsys):
    """The recorded folder is gone: base_model_name_or_path is tried (with a warning), and the config hash
    still guards it: the same config is merged, another config is refused."""
    moved = tmp_path / "moved"
    shutil.copytree(env["base"], moved / "tinymodel")
    ad = make_adapter(moved / "tinymodel", tmp_path / "ad", 5, typed="tinymodel")
    shutil.rmtree(moved / "tinymodel")
    monkeypatch.chdir(env["root"])
    os.symlink(env["base"], env["root"] / "tinymodel")
    try:
        assert main(["compose", str(ad), "--merge-into-base", "--out", str(tmp_path / "m")]) == 0
        err = capsys.readouterr().err
        assert "not on this machine" in err and "tinymodel" in err
        assert_state_close(tmp_path / "m", merged_expected(env["base"], [ad], [1.0]))
        os.remove(env["root"] / "tinymodel")
        os.symlink(env["other"], env["root"] / "tinymodel")
        assert main(["compose", str(ad), "--merge-into-base", "--out", str(tmp_path / "m2")]) == 2
        one_line_error(capsys, ad, "different model", env["other"])  # the fallback's warning is not shown
    finally:
        os.remove(env["root"] / "tinymodel")


# -- A4: composed adapters carry the record ------------------------------------------------------------


def test_composed_adapter_carries_the_record_and_composes_and_merges_again(env, tmp_path, capsys):
    s1 = tmp_path / "s1"
    assert main(["compose", str(env["a"]), str(env["b"]), "--out", str(s1)]) == 0
    meta = json.loads((s1 / "lorasum.json").read_text())
    source = json.loads((env["a"] / "lorasum.json").read_text())["base_model"]
    assert meta["base_model"] == source and meta["format"] == "lorasum-composed/1"
    assert meta["composed"]["method"] == "sum"
    assert [s["path"] for s in meta["composed"]["sources"]] == [str(env["a"]), str(env["b"])]
    assert load_adapter(s1).base_record == load_adapter(env["a"]).base_record
    # a composed adapter of one base model cannot be combined with an adapter of another ...
    assert main(["compose", str(s1), str(env["d"]), "--out", str(tmp_path / "bad")]) == 2
    one_line_error(capsys, "different base models", s1, env["d"])
    # ... nor measured against one, but merges into its own base model (found from the record)
    assert main(["similarity", str(s1), str(env["d"])]) == 2
    one_line_error(capsys, "different base models", s1, env["d"])
    m = tmp_path / "m"
    assert main(["compose", str(s1), str(env["a"]), "--weights", "1,-1", "--merge-into-base", "--out", str(m)]) == 0
    assert_state_close(m, merged_expected(env["base"], [env["b"]], [1.0]))  # (a + b) − a
    assert main(["compose", str(s1), "--merge-into-base", "--model", str(env["other"]), "--out",
                 str(tmp_path / "m2")]) == 2
    one_line_error(capsys, s1, "different model")


@pytest.mark.parametrize("method, extra", [("svd", ["--rank", "3"]), ("ties", ["--density", "0.5"])])
def test_other_methods_write_the_record_too(env, tmp_path, method, extra):
    out = tmp_path / method
    assert main(["compose", str(env["a"]), str(env["b"]), "--method", method, *extra, "--out", str(out)]) == 0
    meta = json.loads((out / "lorasum.json").read_text())
    assert meta["base_model"] == json.loads((env["a"] / "lorasum.json").read_text())["base_model"]
    assert meta["composed"]["method"] == method


# -- A6: similarity and eval refuse another base model -------------------------------------------------


def test_similarity_refuses_adapters_of_different_base_models(env, capsys):
    assert main(["similarity", str(env["a"]), str(env["d"])]) == 2
    one_line_error(capsys, "different base models", env["a"], env["d"], env["base"], env["other"])


def test_similarity_of_a_copy_of_the_model_warns(env, capsys):
    assert main(["similarity", str(env["a"]), str(env["c"]), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and str(env["a"]) in captured.err and str(env["c"]) in captured.err
    assert "same config" in captured.err
    assert len(json.loads(captured.out)["pairs"]) == 1


def test_compose_of_a_copy_warns_once(env, tmp_path, capsys):
    assert main(["compose", str(env["a"]), str(env["c"]), "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert err.count("same config") == 1, err


def _eval(model, adapter):
    return ["eval", "-q", "--model", str(model), "--adapter", str(adapter), "--domain", "math", "--test-size", "2",
            "--max-length", "48", "--device", "cpu", "--format", "json"]


def test_eval_refuses_an_adapter_of_another_base_model(env, capsys):
    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    assert main(_eval(env["other"], env["a"])) == 2
    one_line_error(capsys, env["a"], env["base"], env["other"], "different model")


def test_eval_of_an_adapter_on_a_copy_of_its_model_warns_and_runs(env, capsys):
    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    assert main(_eval(env["copy"], env["a"])) == 0
    captured = capsys.readouterr()
    assert "cannot tell whether the weights are the same" in captured.err
    assert "math" in json.loads(captured.out)
    assert main(_eval(env["base"], env["a"])) == 0
    assert "warning" not in capsys.readouterr().err


# -- A7: zero ΔW in similarity, rounding-level directions in svd ------------------------------------------


def _strict_json(text):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_similarity_with_a_zero_delta_prints_null_and_n_a(env, tmp_path, capsys):
    """An adapter as PEFT initialises it (B = 0) has no direction: cosines and summaries are null in JSON (never
    NaN/Infinity tokens), n/a in the table with a note; the other pairs are unaffected."""
    z = make_adapter(env["base"], tmp_path / "z", 9, zero=True)
    assert main(["similarity", str(env["a"]), str(z), str(env["b"]), "--format", "json"]) == 0
    out = _strict_json(capsys.readouterr().out)
    pairs = {(p["a"], p["b"]): p for p in out["pairs"]}
    zp = pairs[("a", "z")]
    assert zp["rms"] is None and zp["max_abs"] is None and set(zp["cosines"].values()) == {None}
    assert set(zp["norm_ratio"].values()) == {None}  # ‖ΔW_a‖ / 0
    assert out["matrix"][1][1] is None and out["matrix"][0][0] == 1.0
    ab = pairs[("a", "b")]
    assert isinstance(ab["rms"], float) and 0 < ab["rms"] < 1
    assert main(["similarity", str(env["a"]), str(z), "--per-module", "--per-layer"]) == 0
    table = capsys.readouterr().out
    assert "n/a" in table and "nan" not in table.lower().replace("n/a", "")
    assert "undefined in 6 modules where a ΔW is zero" in table


def test_svd_of_a_sum_with_shared_directions_has_no_rounding_directions(env, tmp_path, capsys):
    """a + a has rank r = 2 per module: rank 8 asked, 2 kept (not 2 garbage directions more), ΔW = 2 ΔW_a."""
    out = tmp_path / "svd"
    assert main(["compose", str(env["a"]), str(env["a"]), "--method", "svd", "--rank", "8", "--out", str(out)]) == 0
    report = json.loads((out / "svd_report.json").read_text())
    assert {r["rank"] for r in report.values()} == {2} and {r["rank_in"] for r in report.values()} == {4}
    a, s = load_adapter(env["a"]), load_adapter(out)
    for m, f in s.factors.items():
        assert f.rank == 2
        torch.testing.assert_close(f.delta(), 2 * a.factors[m].delta(), rtol=1e-5, atol=1e-6)
    assert "rank 2" in capsys.readouterr().out


# -- small CLI errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, fragments", [
    (["--weights", "1,,2"], ["--weights", "item 2 of 3 is empty"]),
    (["--weights", "1,"], ["--weights", "item 2 of 2 is empty"]),
    (["--weights", "1,nan"], ["--weights", "not a finite number"]),
    (["--weights", "1,x"], ["--weights", "'x' is not a number"]),
    (["--weights", "1,2,3"], ["--weights has 3 values for 2 adapters"]),
    (["--method", "task_arithmetic", "--scale", "nan"], ["--scale", "not a finite number"]),
    (["--method", "task_arithmetic", "--scale", "inf"], ["--scale", "not a finite number"]),
    (["--method", "task_arithmetic", "--scale=-inf"], ["--scale", "not a finite number"]),
    (["--method", "task_arithmetic", "--weights", "1,2"], ["--weights does not apply to --method task_arithmetic",
                                                           "--scale"]),
    (["--method", "task_arithmetic", "--rank", "2"], ["--rank does not apply to --method task_arithmetic"]),
    (["--scale", "2"], ["--scale does not apply to --method sum"]),
    (["--method", "mean", "--weights", "1,1"], ["--weights does not apply to --method mean", "no parameters"]),
    (["--method", "svd", "--rank", "0"], ["--rank must be a positive integer"]),
    (["--method", "svd", "--rank", "2.5"], ["--rank", "not an integer"]),
    (["--method", "svd"], ["--method svd needs --rank"]),
    (["--method", "ties", "--density", "0"], ["--density must lie in (0, 1]"]),
    (["--method", "ties", "--density", "nan"], ["--density", "not a finite number"]),
    (["--method", "dare_ties", "--drop-prob", "1"], ["--drop-prob must lie in [0, 1)"]),
])
def test_bad_compose_flags_are_one_line_errors(env, tmp_path, capsys, flags, fragments):
    out = tmp_path / "o"
    assert main(["compose", str(env["a"]), str(env["b"]), *flags, "--out", str(out)]) == 2
    one_line_error(capsys, *fragments)
    assert not out.exists()


def test_ties_trimming_every_entry_warns_and_writes_zeros(env, tmp_path, capsys):
    """density 1e-6 keeps ⌊1e-6 · n⌋ = 0 entries of every module: a warning, not an error; ΔW = 0."""
    from lorasum.compose import load_dense_delta

    out = tmp_path / "t"
    assert main(["compose", str(env["a"]), str(env["b"]), "--method", "ties", "--density", "1e-6", "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: ties: density 1e-06 keeps no entry in any of the 6 modules" in err and "Traceback" not in err
    assert "at least 0.000977 keeps one entry" in err  # 1/1024, the smallest module (32×32)
    dd = load_dense_delta(out / "dense_delta.safetensors")
    assert all(float(d.abs().max()) == 0.0 for d in dd.deltas.values())
    assert len(dd.deltas) == 6


def test_task_arithmetic_scale_from_the_cli_is_exact(env, tmp_path):
    out = tmp_path / "ta"
    assert main(["compose", str(env["a"]), str(env["b"]), "--method", "task_arithmetic", "--scale", "-0.5",
                 "--out", str(out)]) == 0
    a, b, t = load_adapter(env["a"]), load_adapter(env["b"]), load_adapter(out)
    for m, f in t.factors.items():
        torch.testing.assert_close(f.delta(), -0.5 * (a.factors[m].delta() + b.factors[m].delta()),
                                   rtol=1e-5, atol=1e-6)


def test_similarity_plot_into_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    """The adapters do not even exist: the plot path is checked first."""
    plot = tmp_path / "no" / "such" / "folder" / "m.png"
    assert main(["similarity", "/nonexistent/a", "/nonexistent/b", "--plot", str(plot)]) == 2
    one_line_error(capsys, "--plot", f"folder {tmp_path / 'no' / 'such' / 'folder'} does not exist")
    (tmp_path / "file").write_text("x")
    assert main(["similarity", "/nonexistent/a", "/nonexistent/b", "--plot", str(tmp_path / "file" / "m.png")]) == 2
    one_line_error(capsys, "--plot", "is not a folder")
