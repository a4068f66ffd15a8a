"""What ``lorasum reproduce --out RUN`` may write in a run folder: never through a symbolic link it did not
make (RUN/report, RUN/adapters/..., RUN/cache/... linked to a folder of the user's), and never over an
adapter it did not make (a user's adapter put in RUN/adapters) without --overwrite. Refused before the
model is loaded (links) or before any training (adapters), one stderr line naming the path, exit 2,
the user's files unchanged.

The tiny run of test_runner_eval_cache: a random 2-layer GPT-2, math and finance, one seed, sums only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lorasum.cli import main

LINK = "is a symbolic link; lorasum writes only into folders it made; move it away"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(config, run folder)`` of one finished tiny run (copy it before changing it)."""
    from tiny_models import finished_tiny_run

    return finished_tiny_run(tmp_path_factory.mktemp("run-safety"))


@pytest.fixture
def run(tiny, tmp_path):
    """``(config, a fresh copy of the finished run folder, a folder of the user's outside it)``."""
    cfg, out = tiny
    copy = tmp_path / "run"
    shutil.copytree(out, copy, symlinks=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    return cfg, copy, mine


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _refused(argv, capsys, after_data: bool = False) -> str:
    """The one error line; ``after_data``: refused once the data are loaded (their warnings come first)."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip("\n").splitlines()
    if after_data:
        assert all(not line.startswith("lorasum: error: ") for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("lorasum: error: ") and "Traceback" not in err, err
    return lines[0]


def _no_model(monkeypatch):
    import lorasum.models

    monkeypatch.setattr(lorasum.models, "load_model", lambda *a, **k: pytest.fail("loaded the model"))


def _link_folder(run: Path, rel: str, mine: Path) -> None:
    """Move RUN/rel to the user's folder and leave a symbolic link to it in its place (or, where RUN/rel
    does not exist, link it to the empty user's folder)."""
    src = run / rel
    target = mine / Path(rel).name
    if src.exists():
        shutil.move(str(src), str(target))
    else:
        target.mkdir()
    (target / "my-notes.txt").write_text("mine\n")
    src.symlink_to(target, target_is_directory=target.is_dir())


@pytest.mark.parametrize("rel", ["report", "adapters", "adapters/seed0", "adapters/seed0/math",
                                 "adapters/seed0/sum-finance+math", "cache", "cache/evals", "cache/adapters"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_symlink_in_the_run_folder_is_refused_before_the_model(rel, overwrite, run, capsys, monkeypatch):
    """The fuzzing report: RUN/report -> ~/my-report had report.md replaced in the user's folder; a link at
    RUN/adapters/... had the user's adapter folder replaced. Refused, even with --overwrite."""
    cfg, out, mine = run
    _link_folder(out, rel, mine)
    before = _snapshot(mine)
    _no_model(monkeypatch)
    line = _refused(["reproduce", "-q", "--config", str(cfg), "--out", str(out),
                     *(["--overwrite"] if overwrite else [])], capsys)
    assert line.endswith(f"{out / rel}: {LINK}"), line
    assert _snapshot(mine) == before and (out / rel).is_symlink()


@pytest.mark.parametrize("what", ["results.json", "cache entry"])
def test_a_symlinked_file_in_the_run_folder_is_refused(what, run, capsys, monkeypatch):
    cfg, out, mine = run
    rel = ("results.json" if what == "results.json" else
           next((out / "cache" / "evals").iterdir()).relative_to(out).as_posix())
    (mine / "file.json").write_text('{"mine": 1}\n')
    (out / rel).unlink()
    (out / rel).symlink_to(mine / "file.json")
    _no_model(monkeypatch)
    line = _refused(["reproduce", "-q", "--config", str(cfg), "--out", str(out)], capsys)
    assert line.endswith(f"{out / rel}: {LINK}"), line
    assert (mine / "file.json").read_text() == '{"mine": 1}\n'


def test_report_command_refuses_a_symlinked_report_folder(run, capsys):
    _, out, mine = run
    _link_folder(out, "report", mine)
    before = _snapshot(mine)
    line = _refused(["report", str(out)], capsys)
    assert line.endswith(f"{out / 'report'}: {LINK}"), line
    assert _snapshot(mine) == before


def test_cache_put_never_writes_through_a_link_made_during_the_run(tmp_path):
    """The last line of defence: a link put in the run folder after the up-front check."""
    from lorasum.errors import UserError
    from lorasum.experiment.runner import _Cache

    (tmp_path / "run" / "cache").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "run" / "cache" / "evals").symlink_to(tmp_path / "mine")
    cache = _Cache(tmp_path / "run" / "cache", enabled=True)
    with pytest.raises(UserError, match=f"evals: {LINK}"):
        cache.put("evals", "k", {"nll_sum": 1.0, "n_tokens": 1, "n_examples": 1})
    assert not any((tmp_path / "mine").iterdir())


# -- adapters the run did not make ------------------------------------------------------------------------

def _foreign(folder: Path, job_key) -> None:
    """Make the run's adapter at ``folder`` look like another one (a user's `lorasum train` adapter when
    ``job_key`` is None, else one of another run folder or config)."""
    meta_path = folder / "lorasum.json"
    meta = json.loads(meta_path.read_text())
    meta["meta"] = {} if job_key is None else meta["meta"] | {"job_key": job_key}
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("job_key", [None, "0" * 64, "../../../x"])
def test_an_adapter_the_run_did_not_make_is_not_replaced_without_overwrite(job_key, run, capsys, monkeypatch):
    import lorasum.train

    cfg, out, _ = run
    folder = out / "adapters" / "seed0" / "math"
    _foreign(folder, job_key)
    before = _snapshot(folder)
    monkeypatch.setattr(lorasum.train, "train_adapter", lambda *a, **k: pytest.fail("trained before the check"))
    line = _refused(["reproduce", "-q", "--config", str(cfg), "--out", str(out)], capsys, after_data=True)
    assert f"{folder}: holds an adapter this run folder did not make" in line and "--overwrite" in line, line
    assert _snapshot(folder) == before


def test_an_adapter_the_run_did_not_make_is_replaced_with_overwrite_and_a_warning(run, capsys):
    cfg, out, _ = run
    folder = out / "adapters" / "seed0" / "math"
    _foreign(folder, None)
    capsys.readouterr()
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"{folder}: holds an adapter this run folder did not make" in err and "replacing it" in err, err
    assert json.loads((folder / "lorasum.json").read_text())["meta"]["job_key"]


def test_the_runs_own_adapter_of_other_settings_is_still_replaced(run, capsys):
    """An adapter the run made with other settings (its key has a cache entry recording its files) is the
    run's to redo, as before: changing train settings in a run folder retrains, without a refusal."""
    cfg, out, _ = run
    other = cfg.parent / "other-lr.yaml"
    other.write_text(cfg.read_text().replace("learning_rate: 1.0e-2", "learning_rate: 2.0e-2"))
    assert main(["reproduce", "-q", "--config", str(other), "--out", str(out)]) == 0
    meta = json.loads((out / "adapters" / "seed0" / "math" / "lorasum.json").read_text())
    assert meta["train"]["learning_rate"] == 2e-2
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0


def test_something_else_at_an_adapter_path_is_refused(run, capsys):
    cfg, out, _ = run
    folder = out / "adapters" / "seed0" / "finance"
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    line = _refused(["reproduce", "-q", "--config", str(cfg), "--out", str(out)], capsys, after_data=True)
    assert f"{folder}: holds something that is not an adapter this run made" in line, line
    assert (folder / "thesis.tex").read_text() == "mine"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("rel", ["cache/evals/ENTRY", "cache/evals/new.json", "report/report.md"])
def test_a_named_pipe_in_the_run_folder_is_refused_not_replaced(rel, run, capsys, monkeypatch):
    """The fuzzing report: a FIFO in place of a cache entry was replaced silently."""
    cfg, out, _ = run
    if "ENTRY" in rel:
        rel = rel.replace("ENTRY", next((out / "cache" / "evals").iterdir()).name)
    (out / rel).unlink(missing_ok=True)
    os.mkfifo(out / rel)
    _no_model(monkeypatch)
    line = _refused(["reproduce", "-q", "--config", str(cfg), "--out", str(out)], capsys)
    assert line.endswith(f"{out / rel}: is a named pipe (FIFO); lorasum writes only files and folders it made "
                         "here; move it away"), line
    assert (out / rel).is_fifo()


def test_cache_never_replaces_a_named_pipe_made_during_the_run(tmp_path):
    from lorasum.errors import UserError
    from lorasum.experiment.runner import _Cache

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    (tmp_path / "cache" / "evals").mkdir(parents=True)
    os.mkfifo(tmp_path / "cache" / "evals" / "k.json")
    cache = _Cache(tmp_path / "cache", enabled=True)
    with pytest.raises(UserError, match=r"k.json: is a named pipe \(FIFO\)"):
        cache.get("evals", "k")
    with pytest.raises(UserError, match=r"k.json: is a named pipe \(FIFO\)"):
        cache.put("evals", "k", {"nll_sum": 1.0, "n_tokens": 1, "n_examples": 1})
    assert (tmp_path / "cache" / "evals" / "k.json").is_fifo()
