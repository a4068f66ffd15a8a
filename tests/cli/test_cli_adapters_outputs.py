"""What similarity, compose and eval write and choose, through the CLI: --plot never inside an input and in the
format of its extension; similarity CSV per pair (per module with --per-module) in natural module order; svd's
rank capped at the summed rank with a warning; compose --model only with --merge-into-base; eval --adapter
without --model loads the adapter's recorded base model.

Adapters are made in code on tiny GPT-2 folders (``make_adapter`` of test_cli_adapters_base: PEFT folder plus the
lorasum.json record that `lorasum train` writes)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from test_cli_adapters_base import make_adapter, one_line_error
from tiny_models import save_tiny_gpt2

import lorasum.adapters
from lorasum.adapters import Adapter, LoraFactor, save_adapter
from lorasum.cli import main
from lorasum.geometry.export import CSV_COLUMNS, PAIR_CSV_COLUMNS


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Model folders ``base`` and ``other`` (another config); adapters ``a``, ``b``, ``c`` of base."""
    root = tmp_path_factory.mktemp("outputs")
    base = save_tiny_gpt2(root / "base")
    other = save_tiny_gpt2(root / "other", n_positions=128)
    ads = root / "adapters"
    return {"root": root, "base": base, "other": other,
            **{n: make_adapter(base, ads / n, seed, typed="base") for n, seed in (("a", 1), ("b", 2), ("c", 3))}}


@pytest.fixture
def no_adapter_loads(monkeypatch):
    """Fail the test if the command loads an adapter: what it refuses, it refuses before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("an adapter was loaded")

    monkeypatch.setattr(lorasum.adapters, "load_adapter", refuse)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# -- similarity --plot: never into an input --------------------------------------------------------------


def test_plot_inside_an_input_adapter_is_refused_before_any_work(env, capsys, no_adapter_loads):
    before = _files(env["a"])
    plot = env["a"] / "x.png"
    assert main(["similarity", str(env["a"]), str(env["b"]), "--plot", str(plot)]) == 2
    one_line_error(capsys, "--plot", plot, "overlaps the input", env["a"])
    assert not plot.exists() and _files(env["a"]) == before


def test_plot_through_a_symlink_into_an_input_is_refused(env, tmp_path, capsys, no_adapter_loads):
    link = tmp_path / "link"
    os.symlink(env["b"], link)
    assert main(["similarity", str(env["a"]), str(env["b"]), "--plot", str(link / "x.svg")]) == 2
    one_line_error(capsys, "--plot", "overlaps the input", env["b"])
    assert not (env["b"] / "x.svg").exists()


def test_plot_that_holds_an_input_is_refused_even_with_overwrite(env, tmp_path, capsys):
    """--overwrite would replace the folder that holds the adapter read."""
    holder = tmp_path / "fig.png"
    shutil.copytree(env["a"], holder / "a")
    assert main(["similarity", str(holder / "a"), str(env["b"]), "--plot", str(holder), "--overwrite"]) == 2
    one_line_error(capsys, "--plot", "overlaps the input", holder / "a")
    assert (holder / "a" / "adapter_model.safetensors").is_file()


# -- similarity --plot: the extension's format -------------------------------------------------------------


@pytest.mark.parametrize("name, magic", [("sim.png", b"\x89PNG\r\n\x1a\n"), ("sim.pdf", b"%PDF-"),
                                         ("sim.svg", b"<?xml"), ("SIM.PDF", b"%PDF-")])
def test_plot_is_written_in_the_format_of_its_extension(env, tmp_path, capsys, name, magic):
    plot = tmp_path / name
    assert main(["similarity", str(env["a"]), str(env["b"]), "--plot", str(plot)]) == 0
    data = plot.read_bytes()
    assert data.startswith(magic), data[:16]
    if name.endswith(".svg"):
        assert b"<svg" in data


@pytest.mark.parametrize("name, fragment", [("sim.jpg", "sim.jpg has the extension .jpg, not a figure format"),
                                            ("sim", "sim has no extension; use .png, .pdf or .svg")])
def test_plot_of_another_extension_is_refused_before_any_work(env, tmp_path, capsys, no_adapter_loads, name,
                                                             fragment):
    """Refused by the parser, as any flag value it cannot take (exit 2, one line naming the flag)."""
    with pytest.raises(SystemExit) as stop:
        main(["similarity", str(env["a"]), str(env["b"]), "--plot", str(tmp_path / name)])
    assert stop.value.code == 2
    err = one_line_error(capsys, "argument --plot: ", fragment, ".png, .pdf or .svg")
    assert err.startswith("lorasum similarity: error: ")
    assert list(tmp_path.iterdir()) == []


def test_plot_help_names_the_formats(capsys):
    with pytest.raises(SystemExit):
        main(["similarity", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".png, .pdf or .svg" in text and "FILE.png" not in text


# -- similarity --format csv ---------------------------------------------------------------------------


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_without_per_module_has_one_row_per_pair_as_the_table(env, capsys):
    ads = [str(env[n]) for n in "abc"]
    assert main(["similarity", *ads, "--format", "json"]) == 0
    pairs = {(p["a"], p["b"]): p for p in json.loads(capsys.readouterr().out)["pairs"]}
    assert main(["similarity", *ads, "--format", "csv"]) == 0
    rows = _csv(capsys.readouterr().out)
    assert tuple(rows[0]) == PAIR_CSV_COLUMNS
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    for r in rows:
        p = pairs[(r["a"], r["b"])]
        for key in ("rms", "baseline_rms", "mean_abs", "max_abs"):
            assert float(r[key]) == pytest.approx(p[key], rel=1e-12), key
        assert int(r["modules"]) == len(p["cosines"]) == 6 and r["undefined_modules"] == "0"


def test_csv_with_per_module_has_one_row_per_pair_and_module(env, capsys):
    assert main(["similarity", *(str(env[n]) for n in "abc"), "--format", "csv", "--per-module"]) == 0
    rows = _csv(capsys.readouterr().out)
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3 * 6


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """Two adapters of a 12-layer Llama-style path set (no model needed for similarity)."""
    root = tmp_path_factory.mktemp("deep")
    out = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        factors = {f"model.layers.{i}.self_attn.q_proj": LoraFactor(
            A=torch.from_numpy(rng.standard_normal((2, 5))).float(),
            B=torch.from_numpy(rng.standard_normal((6, 2))).float(), scaling=1.0) for i in range(12)}
        out.append(save_adapter(Adapter(factors=factors), root / f"x{seed}"))
    return out


def test_modules_are_in_natural_order_in_the_table_and_csv(deep, capsys):
    assert main(["similarity", *map(str, deep), "--per-module"]) == 0
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if "model.layers." in ln]
    assert [int(m.split(".")[2]) for m in lines] == list(range(12))
    assert main(["similarity", *map(str, deep), "--format", "csv", "--per-module"]) == 0
    assert [int(r["layer"]) for r in _csv(capsys.readouterr().out)] == list(range(12))


# -- compose: svd rank capped, --model only with --merge-into-base -------------------------------------------


def test_svd_rank_above_the_summed_rank_warns_once_and_writes_the_exact_sum(env, tmp_path, capsys):
    out = tmp_path / "svd"
    assert main(["compose", str(env["a"]), str(env["b"]), "--method", "svd", "--rank", "100", "--out",
                 str(out)]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if "capped" in ln]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("warning: svd: rank 100 capped at the summed rank") and "at most 4" in lines[0]
    assert "rank 4" in captured.out  # r = 2 + 2
    report = json.loads((out / "svd_report.json").read_text())
    assert {r["rank"] for r in report.values()} == {4}


def test_svd_rank_within_the_summed_rank_does_not_warn(env, tmp_path, capsys):
    assert main(["compose", str(env["a"]), str(env["b"]), "--method", "svd", "--rank", "3", "--out",
                 str(tmp_path / "svd")]) == 0
    assert "capped" not in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--method", "svd", "--rank", "2"], ["--method", "ties"]])
def test_compose_model_without_merge_into_base_is_refused(env, tmp_path, capsys, no_adapter_loads, extra):
    out = tmp_path / "o"
    assert main(["compose", str(env["a"]), str(env["b"]), *extra, "--model", str(env["base"]), "--out",
                 str(out)]) == 2
    one_line_error(capsys, "--model", "--merge-into-base")
    assert not out.exists()


# -- eval --adapter without --model: the adapter's recorded base model --------------------------------------


def _eval(adapter, *flags):
    return ["eval", "-q", "--adapter", str(adapter), "--domain", "math", "--test-size", "2", "--max-length", "48",
            "--device", "cpu", "--format", "json", *flags]


@pytest.fixture
def data_root():
    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")


def test_eval_without_model_loads_the_recorded_base_model(env, tmp_path, monkeypatch, capsys, data_root):
    """From another folder: base_model_name_or_path ("base") would not be found; the recorded source is."""
    monkeypatch.chdir(tmp_path)
    assert main(_eval(env["a"])) == 0
    captured = capsys.readouterr()
    assert "math" in json.loads(captured.out) and "warning" not in captured.err
    # the same numbers as with --model naming that folder
    assert main(_eval(env["a"], "--model", str(env["base"]))) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(captured.out)


def test_eval_keeps_an_explicit_model_and_a_config_model(env, tmp_path, capsys, data_root):
    assert main(_eval(env["a"], "--model", str(env["other"]))) == 2
    one_line_error(capsys, env["a"], env["other"], "different model")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {json.dumps(str(env['other']))}\n")
    assert main(_eval(env["a"], "--config", str(cfg))) == 2
    one_line_error(capsys, env["a"], env["other"], "different model")
    cfg.write_text("seeds: [1]\n")  # a config without a model: the adapter's record decides
    assert main(_eval(env["a"], "--config", str(cfg))) == 0
    assert "math" in json.loads(capsys.readouterr().out)


def test_eval_with_the_recorded_source_gone_warns_and_loads_base_model_name_or_path(env, tmp_path, monkeypatch,
                                                                                   capsys, data_root):
    moved = tmp_path / "moved"
    shutil.copytree(env["base"], moved / "tinymodel")
    ad = make_adapter(moved / "tinymodel", tmp_path / "ad", 5, typed="tinymodel")
    shutil.rmtree(moved / "tinymodel")
    here = tmp_path / "here"
    here.mkdir()
    os.symlink(env["base"], here / "tinymodel")
    monkeypatch.chdir(here)
    assert main(_eval(ad)) == 0
    captured = capsys.readouterr()
    assert "not on this machine" in captured.err and "tinymodel" in captured.err
    assert "math" in json.loads(captured.out)
    os.remove(here / "tinymodel")
    os.symlink(env["other"], here / "tinymodel")
    assert main(_eval(ad)) == 2  # the typed name is another model: refused, and the fallback's warning not shown
    one_line_error(capsys, ad, "different model")


def test_eval_help_says_where_the_model_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "recorded in the adapter's lorasum.json" in text


def test_eval_help_lists_no_training_side_data_flags(capsys):
    """--train-size / --validation-size do not change the test split that eval scores: not in eval's help (train
    keeps them; eval still accepts them, so that one list of data flags serves both)."""
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "--test-size" in text and "--train-size" not in text and "--validation-size" not in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--train-size" in text and "--validation-size" in text


def test_compose_warns_when_an_adapter_is_given_twice(env, tmp_path, capsys):
    """`compose a a` summed the adapter with itself without a word. It stays allowed (a sum with shared
    directions is a fair input, e.g. for svd) but is said once per repeat, however the folder is spelled."""
    link = tmp_path / "link_a"
    link.symlink_to(env["a"], target_is_directory=True)
    for i, second in enumerate((env["a"], link, f"{env['a']}/.")):
        assert main(["compose", str(env["a"]), str(env["b"]), str(second), "--out", str(tmp_path / f"o{i}")]) == 0
        err = capsys.readouterr().err
        assert err.count("the same adapter is given twice") == 1 and str(second) in err, err
        assert "counted each time" in err and "--weights" in err
    assert main(["compose", str(env["a"]), str(env["b"]), "--out", str(tmp_path / "ab")]) == 0
    assert "given twice" not in capsys.readouterr().err
