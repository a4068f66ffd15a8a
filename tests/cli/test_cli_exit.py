"""How the CLI ends on errors that are not lorasum's own: a closed output pipe."""

from __future__ import annotations

import errno

import pytest

import lorasum.cli.similarity as similarity_cli
from lorasum.cli import main


@pytest.mark.parametrize("error", [BrokenPipeError(errno.EPIPE, "Broken pipe"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_a_closed_pipe_ends_quietly_and_other_os_errors_do_not(monkeypatch, capsys, error):
    """`lorasum similarity --format json A B | head`: the reader closing the pipe is the normal end (exit 0,
    nothing on stderr), although BrokenPipeError is an OSError; other OSErrors without a file name are
    internal errors (exit 1)."""
    def run(args):
        raise error

    monkeypatch.setattr(similarity_cli, "run", run)
    code = main(["similarity", "a", "b"])
    err = capsys.readouterr().err
    if isinstance(error, BrokenPipeError):
        assert code == 0 and "error" not in err
    else:
        assert code == 1 and "internal error" in err


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_training_stopped_in_its_last_step_exits_128_plus_the_signal(monkeypatch, capsys, tmp_path, command):
    """TrainingStopped (the adapter was saved): `train` says so and exits 130; `reproduce` adds that running it
    again continues the run."""
    import signal
    from pathlib import Path

    import lorasum.cli.reproduce as reproduce_cli
    import lorasum.cli.train as train_cli
    from lorasum.train.checkpoint import TrainingStopped

    def run(args):
        raise TrainingStopped(signal.SIGINT, Path("adapters/math"))

    monkeypatch.setattr(train_cli if command == "train" else reproduce_cli, "run", run)
    argv = (["train", "--domain", "math", "--out", str(tmp_path / "a")] if command == "train"
            else ["reproduce", "--config", "c.yaml", "--out", str(tmp_path / "r")])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 130 and "the adapter is complete and was saved in adapters/math" in err
    assert ("run the same command again" in err) == (command == "reproduce")
