"""``lorasum report`` and load_results / write_report on hostile paths: a report folder that is a file, a
results.json nested too deeply, or a pipe in its place (refused before reading)."""

from __future__ import annotations

import json
import os
import re
import threading

import pytest
from report_fixtures import make_results, md_tables

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


def test_report_command_refuses_a_file_given_as_the_run_folder(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    rc, out, err = _report(capsys, readme)
    _one_line_error(rc, err, str(readme), "is a file, not a run folder", "results.json")
    assert out == "" and readme.read_text() == "# notes\n" and sorted(tmp_path.iterdir()) == [readme]


def test_report_command_names_a_missing_run_folder(tmp_path, capsys):
    rc, out, err = _report(capsys, tmp_path / "nonexist")
    _one_line_error(rc, err, str(tmp_path / "nonexist"), "no such run folder")
    assert out == "" and list(tmp_path.iterdir()) == []


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


def _geometry_pair(results) -> dict:
    return results["geometry"][0]["pairs"][0]


# A damaged results.json used to end `lorasum report` in an internal error (exit 1: TypeError, AttributeError,
# KeyError, ValueError) part-way through the report; now: exit 2, one line naming the file and the JSON path.
DAMAGED = {
    "data not an object": (lambda r: r.update(data="x"), 'malformed: data: expected an object, got the string "x"'),
    "a domain's data null": (lambda r: r["data"].update(math=None),
                             "malformed: data.math: expected an object, got null"),
    "a combination not an object": (lambda r: r.update(combinations=[1]),
                                    "malformed: combinations[0]: expected an object, got the number 1"),
    "pair without cosines": (lambda r: _geometry_pair(r).update(cosines={}),
                             "malformed: geometry[0].pairs[0].cosines: no cosine of a module path with a layer index"),
    "layer_rms key not a layer": (lambda r: _geometry_pair(r)["layer_rms"].update(x=0.1),
                                  "malformed: geometry[0].pairs[0].layer_rms.x: key is not a layer index"),
    "pair name that leaves the folder": (lambda r: _geometry_pair(r).update(a="../../evil"),
                                         'malformed: geometry[0].pairs[0].a: adapter name "../../evil" is not a name'),
    "evaluation without model": (lambda r: r["evaluations"][0].pop("model"),
                                 "malformed: evaluations[0].model: missing"),
    "evaluation domains a number": (lambda r: r["evaluations"][2].update(domains=3),
                                    "malformed: evaluations[2].domains: expected a list, got the number 3"),
    "composition domains null": (lambda r: r["compositions"][0].update(domains=None),
                                 "malformed: compositions[0].domains: expected a list, got null"),
    "compositions an object": (lambda r: r.update(compositions={"a": 1}),
                               "malformed: compositions: expected a list, got an object"),
    "ppl_sum a list": (lambda r: r["combinations"][0].update(ppl_sum=[1.0]),
                       "malformed: combinations[0].ppl_sum: expected an object, got a list"),
    "adapter name a number": (lambda r: r["adapters"][0].update(name=7),
                              "malformed: adapters[0].name: expected a string, got the number 7"),
    "parallel_adapters a string": (lambda r: r["adapters"][0]["train"].update(parallel_adapters="2"),
                                   "malformed: adapters[0].train.parallel_adapters: expected an integer, got the "
                                   'string "2"'),
    "config domains a number": (lambda r: r["config"].update(domains=2),
                                "malformed: config.domains: expected a list, got the number 2"),
    "method_params of a list": (lambda r: r["config"].update(method_params={"ties": [1]}),
                                "malformed: config.method_params.ties: expected an object, got a list"),
    "source path a number": (lambda r: r["data"]["math"]["sources"][0].update(path=1),
                             "malformed: data.math.sources[0].path: expected a string, got the number 1"),
    "an evaluation listed twice": (lambda r: r["evaluations"].insert(2, dict(r["evaluations"][1])),
                                   "malformed: evaluations[2]: evaluation of base (seed 0) on medicine is listed "
                                   "twice (also at evaluations[1])"),
    "lone surrogate": (lambda r: r["config"].update(name="\ud800"),
                       "malformed: config.name: the string holds an unpaired UTF-16 surrogate"),
}


@pytest.mark.parametrize("how", sorted(DAMAGED))
def test_damaged_results_is_a_one_line_user_error(how, tmp_path, capsys):
    damage, fragment = DAMAGED[how]
    results = make_results(seeds=(0,), domains=("math", "medicine"), hybrids=False)
    damage(results)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8", errors="surrogatepass")
    with pytest.raises(UserError, match=re.escape(f"{run / 'results.json'}: {fragment}")):
        load_results(run / "results.json")
    rc, out, err = _report(capsys, run)
    _one_line_error(rc, err, f"{run / 'results.json'}: {fragment}")
    assert out == "" and sorted(p.name for p in run.iterdir()) == ["results.json"]  # no report half-written


def test_hand_edited_values_that_the_report_can_show_still_render(tmp_path, capsys):
    """Not every oddity is an error: numbers the report cannot use show as "—" (an integer too large for a float
    among them, which used to raise OverflowError), and text is drawn as it is ($ signs are not TeX)."""
    results = make_results(seeds=(0,), domains=("math", "medicine"), hybrids=False)
    results["evaluations"][0]["ppl"] = 10**400
    results["combinations"][0]["rms_cosine"] = "n/a"
    results["config"]["name"] = "$x^$ run"
    for e in results["evaluations"]:
        if e["model"] == "math":
            e["model"] = "$math^$"
    run = _run_folder(tmp_path, results)
    rc, out, err = _report(capsys, run)
    assert rc == 0, err
    md = (run / "report" / "report.md").read_text(encoding="utf-8")
    assert "$x^$ run" in md and "$math^$" in md
    base = next(r for r in md_tables(md)["Perplexity by model and evaluation domain"] if r[0] == "base")
    assert base[2] == "—" and base[3] != "—"  # math: the huge integer; medicine: a number


def test_results_with_an_integer_too_long_to_read(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"schema_version": 2, "x": ' + "9" * 5000 + "}")
    rc, _, err = _report(capsys, run)
    _one_line_error(rc, err, f"{run / 'results.json'}: cannot read the JSON (Exceeds the limit")
