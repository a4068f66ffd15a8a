"""Hostile combinations and outputs for ``lorasum compose``: adapters of different base models,
adapters that do not fit the base model of ``--merge-into-base``, a full disk, an output
path that cannot be a folder; and corrupt dense-delta files. Existing outputs stay untouched."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections import namedtuple

import pytest
import torch
from safetensors.torch import save, save_file

from hostile_fixtures import (
    GPT2_MODULES, IS_ROOT, LLAMA_MODULES, assert_user_error, existing_output, run_cli, snapshot, write_adapter,
)
from lorasum.compose import DenseDelta, load_dense_delta, save_dense_delta
from lorasum.errors import AdapterError
from tiny_models import save_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def good(tmp_path):
    return write_adapter(tmp_path / "good", seed=1)


def test_different_recorded_base_models(tmp_path, good, capsys):
    other = write_adapter(tmp_path / "other", base="some-other-model")
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", good, other, "--out", out, "--overwrite"], capsys)
    assert_user_error(rc, err, "some-other-model", "different base models")
    assert snapshot(out) == before


def test_adapters_of_different_shapes(tmp_path, good, capsys):
    wide = write_adapter(tmp_path / "wide", base=None,
                         modules={m: (2 * d_out, 2 * d_in) for m, (d_out, d_in) in GPT2_MODULES.items()})
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", good, wide, "--out", out, "--overwrite"], capsys)
    assert_user_error(rc, err, wide, "ΔW shape")
    assert snapshot(out) == before


def test_merge_adapter_of_another_architecture(tmp_path, tiny_model, capsys):
    llama = write_adapter(tmp_path / "llama", modules=LLAMA_MODULES, config={"fan_in_fan_out": False})
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", llama, "--merge-into-base", "--model", tiny_model, "--out", out,
                          "--overwrite"], capsys)
    assert_user_error(rc, err, llama, "is not in the base model")
    assert snapshot(out) == before


def test_merge_adapter_of_a_wider_model(tmp_path, tiny_model, good, capsys):
    wide = write_adapter(tmp_path / "wide", modules={m: (2 * o, 2 * i) for m, (o, i) in GPT2_MODULES.items()})
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", wide, "--merge-into-base", "--model", tiny_model, "--out", out,
                          "--overwrite"], capsys)
    assert_user_error(rc, err, wide, "ΔW is 192×64 but the base weight is 32×96")
    assert snapshot(out) == before


def test_merge_refuses_when_the_disk_is_too_small(tmp_path, tiny_model, good, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", good, "--merge-into-base", "--model", tiny_model, "--out", out,
                          "--overwrite"], capsys)
    assert_user_error(rc, err, out, "not enough free disk space", "1.0 KB free")
    assert snapshot(out) == before


def test_merge_works_on_a_matching_adapter(tmp_path, tiny_model, good, capsys):
    """The checks above do not refuse a good adapter: merged weights = base + ΔWᵀ (Conv1D)."""
    from transformers import AutoModelForCausalLM

    from lorasum.adapters import load_adapter

    rc, _, err = run_cli(["compose", good, "--merge-into-base", "--model", tiny_model, "--out",
                          tmp_path / "merged"], capsys)
    assert rc == 0, err
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    f = load_adapter(good).factors["transformer.h.1.attn.c_attn"]
    delta = f.scaling * (f.B.double() @ f.A.double())
    got = merged.get_submodule("transformer.h.1.attn.c_attn").weight.double()
    want = base.get_submodule("transformer.h.1.attn.c_attn").weight.double() + delta.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_no_space_left_while_writing(tmp_path, good, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", good, "--out", out, "--overwrite"], capsys)
    assert_user_error(rc, err, out, "No space left on device")
    assert snapshot(out) == before


def test_output_under_a_file(tmp_path, good, capsys):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(["compose", good, "--out", tmp_path / "afile" / "sum"], capsys)
    assert_user_error(rc, err, tmp_path / "afile" / "sum", "cannot write")
    assert (tmp_path / "afile").read_text() == "x"


def test_output_is_a_symlink_loop(tmp_path, good, capsys):
    os.symlink("loop", tmp_path / "loop")
    rc, _, err = run_cli(["compose", good, "--out", tmp_path / "loop"], capsys)
    assert_user_error(rc, err, tmp_path / "loop", "already exists")
    assert os.readlink(tmp_path / "loop") == "loop"


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_output_in_a_read_only_folder(tmp_path, good, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = run_cli(["compose", good, "--out", ro / "sum"], capsys)
    finally:
        ro.chmod(0o755)
    assert_user_error(rc, err, ro / "sum", "Permission denied")


# -- dense delta files -------------------------------------------------------------------------------

def _good_dense(path):
    dd = DenseDelta(deltas={"l.q": torch.randn(3, 4)}, base_model="m", meta={"method": "ties"})
    return save_dense_delta(dd, path)


def _rewrite(path, tensors, **meta):
    header = {"format": "lorasum.dense_delta.v1", "base_model": "m", "fan_in_fan_out": "False",
              "orientation": "nn.Linear (d_out, d_in)", "meta": "{}"}
    header.update(meta)
    save_file(tensors, str(path), metadata=header)


DENSE_CASES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-7]), "cannot read safetensors"),
    "not_lorasum": (lambda p: p.write_bytes(save({"l.q": torch.zeros(2, 2)})), "not a lorasum dense delta"),
    "nan": (lambda p: _rewrite(p, {"l.q": torch.full((2, 2), math.nan)}), "NaN or Inf"),
    "one_d": (lambda p: _rewrite(p, {"l.q": torch.zeros(4)}), "2-D float"),
    "int": (lambda p: _rewrite(p, {"l.q": torch.zeros(2, 2, dtype=torch.int32)}), "2-D float"),
    "bad_meta": (lambda p: _rewrite(p, {"l.q": torch.zeros(2, 2)}, meta="{oops"), "meta is not valid JSON"),
    "bad_flag": (lambda p: _rewrite(p, {"l.q": torch.zeros(2, 2)}, fan_in_fan_out="maybe"), "fan_in_fan_out"),
    "empty": (lambda p: _rewrite(p, {}), "holds no modules"),
    "folder": (lambda p: (p.unlink(), p.mkdir()), "found a folder"),
}


@pytest.mark.parametrize("case", sorted(DENSE_CASES))
def test_corrupt_dense_delta(case, tmp_path):
    path = _good_dense(tmp_path / "dense_delta.safetensors")
    spoil, fragment = DENSE_CASES[case]
    spoil(path)
    with pytest.raises(AdapterError, match=fragment) as err:
        load_dense_delta(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_good_dense_delta_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    dd = DenseDelta(deltas={"l.q": torch.randn(3, 4, generator=g)}, base_model="m", meta={"k": 1})
    back = load_dense_delta(save_dense_delta(dd, tmp_path / "d.safetensors"))
    torch.testing.assert_close(back.deltas["l.q"], dd.deltas["l.q"])
    assert back.meta == {"k": 1} and json.dumps(back.meta)


@pytest.mark.parametrize(("method", "flags", "named", "fragment"), [
    ("sum", ["--weights", "1e308,1e308"], "--weights 1e308,1e308", "weighted factor B of module"),
    ("ties", ["--weights=-1e300,1"], "--weights -1e300,1", "beyond float32"),
    ("task_arithmetic", ["--scale", "1e308"], "--scale 1e308", "beyond float32"),
    ("svd", ["--rank", "2", "--weights", "1e200,1e200"], "--weights 1e200,1e200", "beyond float32"),
])
def test_weights_or_scale_that_overflow_are_refused_up_front_naming_the_flag(method, flags, named, fragment,
                                                                             tmp_path, good, capsys, monkeypatch):
    """The fuzzing report: `compose --weights 1e308,1e308` composed, then blamed the output ("holds NaN or Inf").
    Refused before any composition, naming the flag; the existing output is untouched."""
    import lorasum.compose

    other = write_adapter(tmp_path / "other", seed=2)
    out, before = existing_output(tmp_path)
    monkeypatch.setattr(lorasum.compose, "compose", lambda *a, **k: pytest.fail("composed before the check"))
    rc, _, err = run_cli(["compose", good, other, "--method", method, *flags, "--out", out, "--overwrite"], capsys)
    assert_user_error(rc, err, named, fragment, "use smaller values")
    assert "NaN" not in err and snapshot(out) == before


def test_large_but_representable_weights_still_compose(tmp_path, good, capsys):
    other = write_adapter(tmp_path / "other", seed=2)
    rc, _, err = run_cli(["compose", good, other, "--weights", "1e6,-1e6", "--out", tmp_path / "sum"], capsys)
    assert rc == 0, err


def test_a_weighted_factor_that_fits_but_whose_delta_would_not_is_refused():
    """wᵢ·Bᵢ within float32, but ΔW = wᵢ·Bᵢ·Aᵢ beyond it (and two in-range ΔW that add up beyond it)."""
    from types import SimpleNamespace

    from lorasum.adapters import Adapter, LoraFactor
    from lorasum.cli.compose import check_weighted_range
    from lorasum.errors import ConfigError

    def one(a: float) -> Adapter:
        return Adapter(factors={"m.x": LoraFactor(A=torch.full((1, 3), a), B=torch.ones(2, 1), scaling=1.0)})

    args = SimpleNamespace(weights="1e38,1", scale=None)
    with pytest.raises(ConfigError, match=r"^--weights 1e38,1: too large: the weighted ΔW of module m.x can reach "
                                          r"1e\+39, beyond float32's 3.4e\+38; use smaller values$"):
        check_weighted_range(args, [one(10.0), one(1.0)], {"weights": [1e38, 1.0]})
    args = SimpleNamespace(weights=None, scale="2e38")
    with pytest.raises(ConfigError, match="--scale 2e38: too large: the weighted ΔW of module m.x can reach 4e\\+38"):
        check_weighted_range(args, [one(1.0), one(1.0)], {"scale": 2e38})
    check_weighted_range(args, [one(1.0), one(1.0)], {"scale": 1e38})  # 2e38: fits
    check_weighted_range(args, [one(1.0)], {})  # no flag given: nothing to check


def test_a_flag_that_does_not_apply_is_named_before_an_existing_output(tmp_path, good, capsys):
    """`compose … --method svd --density 0.5` into an existing folder: the flag is the error to fix first (the
    message was "already exists", and after --overwrite came the flag's error)."""
    out, before = existing_output(tmp_path)
    rc, _, err = run_cli(["compose", good, "--method", "svd", "--density", "0.5", "--out", out], capsys)
    assert_user_error(rc, err, "--density", "does not apply to --method svd")
    assert snapshot(out) == before
