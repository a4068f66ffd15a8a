"""The exit-code contract at the process level (``python -m lorasum`` in a subprocess), and the
mapping of internal errors (exit 1) and ``--debug`` in-process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hostile_fixtures import run_cli, write_adapter


def _lorasum(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lorasum", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_process_user_errors_exit_2_with_one_line(tmp_path):
    good = write_adapter(tmp_path / "good")
    bad = write_adapter(tmp_path / "bad")
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[:100])
    (tmp_path / "cfg.yaml").mkdir()
    cases = [
        (["compose", good, bad, "--out", tmp_path / "o"], bad / "adapter_model.safetensors"),
        (["reproduce", "--config", tmp_path / "cfg.yaml", "--out", tmp_path / "r"], tmp_path / "cfg.yaml"),
    ]
    for argv, named in cases:
        res = _lorasum(*argv)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1 and lines[0].startswith("lorasum: error: ") and str(named) in lines[0], lines
        assert "Traceback" not in res.stderr and res.stdout == ""
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_process_debug_shows_the_traceback(tmp_path):
    res = _lorasum("similarity", "--debug", tmp_path / "a", tmp_path / "b")
    assert res.returncode == 2
    assert "Traceback" in res.stderr and res.stderr.strip().splitlines()[-1].startswith("lorasum: error: ")


def test_internal_error_exits_1_with_one_line(monkeypatch, capsys, tmp_path):
    import lorasum.cli.similarity as sim

    def boom(args):
        raise RuntimeError("a bug\non two lines")

    monkeypatch.setattr(sim, "run", boom)
    rc, _, err = run_cli(["similarity", tmp_path / "a", tmp_path / "b"], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("lorasum: internal error: RuntimeError: a bug on two lines") and "--debug" in err


@pytest.mark.parametrize("exc, code", [(PermissionError(13, "Permission denied", "/x/y"), 2),
                                       (OSError(28, "No space left on device", "/x/y"), 2),
                                       (OSError(5, "Input/output error", "/x/y"), 1),
                                       (FileNotFoundError(2, "No such file or directory"), 1)])
def test_stray_os_errors_are_mapped(exc, code, monkeypatch, capsys, tmp_path):
    """An OSError reaching the CLI is a user error only with a file name and a user-fixable errno."""
    import lorasum.cli.similarity as sim

    def fail(args):
        raise exc

    monkeypatch.setattr(sim, "run", fail)
    rc, _, err = run_cli(["similarity", tmp_path / "a", tmp_path / "b"], capsys)
    assert rc == code and err.count("\n") == 1, err
    if code == 2:
        assert err.startswith("lorasum: error: /x/y: ")
