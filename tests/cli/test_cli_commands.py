"""The CLI end to end on a tiny GPT-2 folder and real data: train, compose, similarity, eval, errors."""

import json

import pytest
import torch

from lorasum.cli import main
from tiny_models import save_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))

SMALL = ["--train-size", "6", "--test-size", "3", "--max-length", "48", "--batch-size", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    import os

    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    out = tmp_path_factory.mktemp("adapters")
    for dom in ("math", "finance"):
        rc = main(["train", "-q", "--domain", dom, "--model", str(tiny_model_dir), "--out", str(out / dom),
                   "--lr", "1e-2", "--seed", "1", *SMALL])
        assert rc == 0
    return out


def test_train_writes_peft_folder_and_metadata(trained):
    for dom in ("math", "finance"):
        files = {p.name for p in (trained / dom).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "lorasum.json"} <= files
    meta = json.loads((trained / "math" / "lorasum.json").read_text())
    assert meta["seed"] == 1
    assert "math" in json.dumps(meta)


def test_compose_sum_equals_dense_sum(trained, tmp_path, capsys):
    from lorasum.adapters import load_adapter

    out = tmp_path / "sum"
    assert main(["compose", str(trained / "math"), str(trained / "finance"), "--out", str(out)]) == 0
    a, b, s = (load_adapter(p) for p in (trained / "math", trained / "finance", out))
    for module, f in s.factors.items():
        dense = a.factors[module].delta() + b.factors[module].delta()
        torch.testing.assert_close(f.delta(), dense, atol=1e-6, rtol=1e-5)


def test_compose_refuses_to_clobber(trained, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    rc = main(["compose", str(trained / "math"), str(trained / "finance"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err and err.count("\n") == 1
    assert (out / "mine.txt").read_text() == "keep"


def test_compose_refuses_an_output_that_overlaps_an_input(trained, tmp_path, capsys):
    """--overwrite must not delete what compose reads: the output may not be an input, hold one, or lie in one."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(trained / "math", work / "math")
    shutil.copytree(trained / "finance", work / "finance")
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    for out in (work / "math", work, work / "math" / "sub"):
        rc = main(["compose", str(work / "math"), str(work / "finance"), "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 2 and "overlaps the input" in err and err.count("\n") == 1, (out, err)
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", "x"])
def test_compose_seed_out_of_range_is_a_user_error(seed, tmp_path, capsys):
    """A --seed the random generator cannot take is refused by the parser (exit 2), not an internal error."""
    with pytest.raises(SystemExit) as stop:
        main(["compose", "a", "b", "--method", "dare_ties", "--seed", seed, "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "--seed" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_similarity_json_matches_geometry(trained, capsys):
    from lorasum.adapters import load_adapter

    assert main(["similarity", str(trained / "math"), str(trained / "finance"), "--format", "json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert len(pairs) == 1
    a, b = load_adapter(trained / "math"), load_adapter(trained / "finance")
    cos = []
    for m in a.factors:
        da, db = a.factors[m].delta().double(), b.factors[m].delta().double()
        cos.append(float((da * db).sum() / (da.norm() * db.norm())))
    rms = (sum(c * c for c in cos) / len(cos)) ** 0.5
    assert pairs[0]["rms"] == pytest.approx(rms, rel=1e-6, abs=1e-9)


def test_eval_reports_union_as_pooled_tokens(trained, tiny_model_dir, capsys):
    args = ["eval", "-q", "--model", str(tiny_model_dir), "--adapter", str(trained / "math"),
            "--domain", "math,finance", "--format", "json", "--test-size", "3", "--max-length", "48", "--device", "cpu"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"math", "finance", "union"}
    pooled = (res["math"]["nll_sum"] + res["finance"]["nll_sum"]) / (res["math"]["n_tokens"] + res["finance"]["n_tokens"])
    assert res["union"]["n_tokens"] == res["math"]["n_tokens"] + res["finance"]["n_tokens"]
    assert res["union"]["ppl"] == pytest.approx(torch.tensor(pooled).exp().item(), rel=1e-6)


def test_eval_refuses_to_print_an_empty_or_non_finite_perplexity(trained, tiny_model_dir, tmp_path, capsys,
                                                                  monkeypatch):
    """An adapter whose factors overflow the logits, or a test split with no answer token left, is an error (exit 2,
    one line), not a `nan` perplexity with exit 0."""
    import shutil

    from safetensors.torch import load_file, save_file

    import lorasum.evaluate as ev

    huge = tmp_path / "huge"
    shutil.copytree(trained / "math", huge)
    weights = huge / "adapter_model.safetensors"
    save_file({k: v * 1e30 for k, v in load_file(str(weights)).items()}, str(weights))
    args = ["eval", "-q", "--model", str(tiny_model_dir), "--domain", "math", "--test-size", "3", "--max-length", "48",
            "--device", "cpu"]
    assert main(args + ["--adapter", str(huge)]) == 2
    *notes, last = capsys.readouterr().err.strip("\n").splitlines()  # the error: one line, the last
    assert "NLL is not finite" in last and str(huge) in last
    assert all(n.startswith("data math test: ") for n in notes)  # before it only the warning of cut test examples
    monkeypatch.setattr(ev, "perplexity", lambda *a, **kw: ev.Perplexity(0.0, 0, 3))
    assert main(args) == 2
    *notes, last = capsys.readouterr().err.strip("\n").splitlines()
    assert "domain math: no answer token left" in last
    assert all(n.startswith("data math test: ") for n in notes)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["similarity", "/nonexistent/a", "/nonexistent/b"], "/nonexistent/a"),
        (["reproduce", "--config", "/nonexistent.yaml", "--out", "x"], "/nonexistent.yaml"),
        (["eval", "--model", "/nonexistent-model", "--domain", "nosuchdomain"], "nosuchdomain"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, fragment, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LORASUM_DATA_ROOT", str(tmp_path))
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_traceback(capsys):
    rc = main(["similarity", "--debug", "/nonexistent/a", "/nonexistent/b"])
    assert rc == 2 and "Traceback" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--config", "c.yaml", "--out", "x", "--seeds", "a,b"])
    assert e.value.code == 2


def test_train_stopped_by_sigterm_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from safetensors.torch import load_file

    from tiny_models import at_forward_pass, signal_self

    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    argv = ["train", "-q", "--domain", "math", "--model", str(tiny_model_dir), "--lr", "1e-2", "--seed", "2",
            "--max-steps", "5", *SMALL]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    at_forward_pass(monkeypatch, 3, signal_self(signal.SIGTERM))
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip()
    assert "SIGTERM after step 3 of 5" in err and "a.ckpt" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2  # refuses to start over silently
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "a"), "--resume"]) == 0
    ref, got = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ref", "a"))
    assert ref.keys() == got.keys() and all(torch.allclose(ref[k], got[k], rtol=0, atol=1e-6) for k in ref)


def test_train_resume_of_a_checkpoint_with_a_field_of_the_wrong_type_exits_2(tiny_model_dir, tmp_path, capsys,
                                                                              monkeypatch):
    """A state.json whose learning rate is a string used to end `train --resume` in a TypeError (exit 1); now one
    line naming the checkpoint and the field (exit 2), the checkpoint kept; --overwrite then starts over."""
    import os
    import signal

    from tiny_models import at_forward_pass, signal_self

    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    argv = ["train", "-q", "--domain", "math", "--model", str(tiny_model_dir), "--lr", "1e-2", "--max-steps", "4",
            *SMALL, "--out", str(tmp_path / "a")]
    at_forward_pass(monkeypatch, 2, signal_self(signal.SIGTERM))
    assert main(argv) == 128 + signal.SIGTERM
    monkeypatch.undo()
    ckpt = tmp_path / "a.ckpt"
    state = json.loads((ckpt / "state.json").read_text())
    state["optimizer"]["param_groups"][0]["lr"] = "x"
    (ckpt / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if not line.startswith("data ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert (f"{ckpt}: unreadable training checkpoint (state.json: optimizer.param_groups[0].lr: expected a finite "
            'number >= 0, got the string "x"); delete it or pass --overwrite to start over') in errors[0]
    assert (ckpt / "state.json").is_file() and not (tmp_path / "a").exists()
    assert main([*argv, "--resume", "--overwrite"]) == 2  # --resume still reads it
    assert main([*argv, "--overwrite"]) == 0 and not ckpt.exists() and (tmp_path / "a").is_dir()


def test_bad_values_found_by_a_hostile_tester_exit_2(trained, tiny_model_dir, tmp_path, capsys):
    """Each of these used to end in an internal error (exit 1), a NaN adapter written with exit 0, or a crash
    after the training of a whole experiment."""
    base = ["--model", str(tiny_model_dir), *SMALL]
    cases = [
        (["similarity", str(trained / "math"), str(trained / "math") + "/."], "given twice"),
        (["train", "-q", "--domain", "math", *base, "--lr", "1e9", "--out", str(tmp_path / "nan")], "diverged"),
        (["train", "-q", "--domain", "math", *base, "--lr", "inf", "--out", str(tmp_path / "inf")], "learning_rate"),
        (["train", "-q", "--domain", "math", *base, "--epochs", "inf", "--out", str(tmp_path / "e")], "epochs"),
        (["train", "-q", "--domain", "finance", *base, "--max-length", "5000", "--out", str(tmp_path / "long")],
         "longer than the model's context of 256"),
        (["eval", "-q", "--domain", "finance", *base, "--max-length", "5000"], "n_positions"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        # one error line, the last; truncation warnings (data with long rows) may come before it
        errors = [line for line in err.splitlines() if not line.startswith("data ")]
        assert fragment in errors[-1] and "Traceback" not in err and len(errors) == 1, (argv, err)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "nan.ckpt").exists()


def test_stride_not_smaller_than_the_window_is_a_config_error(tmp_path):
    from lorasum.config import load_config
    from lorasum.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("data: {max_length: 48}\neval: {stride: 48}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*stride 48 must be smaller than data.max_length 48"):
        load_config(path)


def test_train_says_that_parallel_adapters_is_for_reproduce(tiny_model_dir, tmp_path, capsys):
    import os

    if not os.environ.get("LORASUM_DATA_ROOT"):
        pytest.skip("LORASUM_DATA_ROOT is not set")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {parallel_adapters: 0, max_steps: 1}\n")
    assert main(["train", "--config", str(cfg), "--domain", "math", "--model", str(tiny_model_dir), *SMALL,
                 "--out", str(tmp_path / "a")]) == 0
    assert "train.parallel_adapters applies to `lorasum reproduce`" in capsys.readouterr().err
