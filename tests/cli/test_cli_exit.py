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
