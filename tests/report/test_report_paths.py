"""``lorasum report`` and load_results / write_report on hostile paths: a report folder that is a file, a
results.json nested too deeply, or a pipe in its place (refused before reading)."""

from __future__ import annotations

import json
import os
import threading

import pytest
from report_fixtures import make_results

from lorasum.cli import main
from lorasum.errors import UserError
from lorasum.report import check_report_dir, load_results, write_report


@pytest.fixture(scope="module")
def results():
    return make_results(seeds=(0,), domains=("math", "medicine"), hybrids=False)


def _run_folder(tmp_path, results) -> str:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    return run


def _report(capsys, run) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["report", "-q", str(run)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(rc: int, err: str, *fragments: str) -> None:
    lines = err.strip("\n").splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lorasum: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_check_report_dir(tmp_path):
    assert check_report_dir(tmp_path / "missing") == tmp_path / "missing"  # created later
    assert check_report_dir(tmp_path) == tmp_path
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"afile: exists and is a file; the report is written into a folder"):
        check_report_dir(tmp_path / "afile")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="dangling: exists and is a broken symlink"):
        check_report_dir(tmp_path / "dangling")
    (tmp_path / "to-dir").symlink_to(tmp_path / "missing", target_is_directory=True)
    (tmp_path / "missing").mkdir()
    assert check_report_dir(tmp_path / "to-dir") == tmp_path / "to-dir"


def test_report_command_refuses_a_report_path_that_is_a_file(tmp_path, capsys, results):
    run = _run_folder(tmp_path, results)
    (run / "report").write_text("my notes\n")
    rc, out, err = _report(capsys, run)
    _one_line_error(rc, err, str(run / "report"), "exists and is a file")
    assert out == "" and (run / "report").read_text() == "my notes\n"
    assert sorted(p.name for p in run.iterdir()) == ["report", "results.json"]


def test_write_report_refuses_a_file_and_a_file_above(tmp_path, results):
    (tmp_path / "report").write_text("x")
    with pytest.raises(UserError, match="exists and is a file"):
        write_report(results, tmp_path / "report")
    with pytest.raises(UserError, match=r"report/sub: cannot create the report folder"):
        write_report(results, tmp_path / "report" / "sub")
    assert (tmp_path / "report").read_text() == "x"


def test_report_command_writes_into_an_existing_report_folder(tmp_path, capsys, results):
    run = _run_folder(tmp_path, results)
    (run / "report").mkdir()
    rc, out, _ = _report(capsys, run)
    assert rc == 0 and (run / "report" / "report.md").is_file() and "report.md" in out


def test_results_nested_too_deeply_is_a_user_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("[" * 100_000)
    with pytest.raises(UserError, match="results.json: JSON nested too deeply to read"):
        load_results(run / "results.json")
    rc, _, err = _report(capsys, run)
    _one_line_error(rc, err, str(run / "results.json"), "nested too deeply")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_results_that_is_a_pipe_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "results.json")
    box: dict = {}

    def target():
        try:
            load_results(tmp_path / "results.json")
        except UserError as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "load_results blocked on a named pipe"
    assert "expected a regular file, found a named pipe" in str(box["error"])
    with pytest.raises(UserError, match="results file not found"):
        load_results(tmp_path / "nope.json")
