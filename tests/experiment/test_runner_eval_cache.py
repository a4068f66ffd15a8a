"""The evaluation cache of ``lorasum reproduce`` (``RUN/cache/evals/KEY.json``): a damaged or edited entry is
never trusted; it is evaluated again, with a warning naming the file, and rewritten with the right numbers.

The tiny run: a random 2-layer GPT-2 saved to a folder, math and finance from the shared data, one seed, two
optimiser steps per adapter, sums only (10 evaluations; a few seconds on 2 cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorasum.cli import main
from lorasum.errors import DataError
from lorasum.experiment.results import with_ppl
from lorasum.experiment.runner import eval_entry_problem

GOOD = {"nll_sum": 12.5, "n_tokens": 7, "n_examples": 3}


@pytest.mark.parametrize(("entry", "fragment"), [
    ([1, 2], "expected a JSON object, got list"),
    ("text", "expected a JSON object, got str"),
    ({"n_tokens": 7, "n_examples": 3}, "nll_sum is missing"),
    (GOOD | {"nll_sum": "12.5"}, "nll_sum is missing or not a number"),
    (GOOD | {"nll_sum": True}, "nll_sum is missing or not a number"),
    (GOOD | {"nll_sum": math.nan}, "nll_sum nan is not a finite number"),
    (GOOD | {"nll_sum": math.inf}, "nll_sum inf is not a finite number"),
    (GOOD | {"nll_sum": 10 ** 400}, "is not a finite number"),  # too large for a float: no OverflowError
    (GOOD | {"nll_sum": -1.0}, "nll_sum -1.0 is not a finite number >= 0"),
    (GOOD | {"n_tokens": 0}, "n_tokens 0 is not an integer >= 1"),
    (GOOD | {"n_tokens": 7.0}, "n_tokens 7.0 is not an integer >= 1"),
    (GOOD | {"n_tokens": None}, "n_tokens None is not an integer >= 1"),
    (GOOD | {"n_examples": False}, "n_examples False is not an integer >= 1"),
    (GOOD | {"n_examples": -3}, "n_examples -3 is not an integer >= 1"),
])
def test_eval_entry_problem_names_what_is_wrong(entry, fragment):
    assert fragment in eval_entry_problem(entry)


def test_eval_entry_problem_accepts_a_good_entry():
    assert eval_entry_problem(GOOD) is None
    assert eval_entry_problem(GOOD | {"nll_sum": 0, "extra": "ignored"}) is None


def test_a_perplexity_that_overflows_a_float_is_inf_not_an_error():
    """An adapter with exploding logits can give a mean NLL above ~709 nats: exp overflows."""
    assert with_ppl({"nll_sum": 1e6, "n_tokens": 1, "n_examples": 1})["ppl"] == math.inf
    assert math.isnan(with_ppl({"nll_sum": 0.0, "n_tokens": 0, "n_examples": 1})["ppl"])
    assert with_ppl(GOOD)["ppl"] == pytest.approx(math.exp(12.5 / 7))


# -- a tiny run ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(config, run folder)`` of one finished tiny run."""
    from tiny_models import finished_tiny_run

    return finished_tiny_run(tmp_path_factory.mktemp("eval-cache"))


def _evals(out: Path) -> dict[str, dict]:
    """Evaluation key → its row in results.json (per-domain rows; union rows have no cache entry)."""
    rows = json.loads((out / "results.json").read_text())["evaluations"]
    return {r["key"]: r for r in rows if r["eval_domain"] != "union"}


def _counting_score(monkeypatch) -> list:
    """Count the evaluations the runner computes (``lorasum.evaluate.score`` is imported at call time)."""
    import lorasum.evaluate as ev

    calls, real = [], ev.score

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(ev, "score", counted)
    return calls


def test_damaged_cache_entries_are_evaluated_again_with_a_warning_naming_the_file(tiny, capsys, monkeypatch):
    cfg, out = tiny
    before = _evals(out)
    assert len(before) == 10  # base and the two singles on both domains, the merged and the summed adapter
    cache = out / "cache" / "evals"
    keys = sorted(before)
    original = {k: json.loads((cache / f"{k}.json").read_text()) for k in keys}

    # one damage per entry; the other entries stay as they are
    damage = {
        keys[0]: ("{not json", "not readable JSON"),
        keys[1]: (json.dumps(original[keys[1]] | {"nll_sum": math.nan}), "nll_sum nan is not a finite number"),
        keys[2]: (json.dumps(original[keys[2]] | {"n_examples": 2}), "n_examples 2, but the test split of"),
        keys[3]: (json.dumps(original[keys[3]] | {"n_tokens": 0}), "n_tokens 0 is not an integer >= 1"),
        keys[4]: (json.dumps([original[keys[4]]]), "expected a JSON object, got list"),
        keys[5]: ("[" * 100_000, "not readable JSON (RecursionError)"),
    }
    for key, (text, _) in damage.items():
        (cache / f"{key}.json").write_text(text)
    capsys.readouterr()
    calls = _counting_score(monkeypatch)
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err

    warnings = [line for line in err.splitlines() if "damaged cache entry" in line]
    assert len(warnings) == len(damage), err
    for key, (_, problem) in damage.items():
        line = next(w for w in warnings if str(cache / f"{key}.json") in w)
        assert problem in line and line.endswith("evaluating again"), line
    assert len(calls) == len(damage)  # the intact entries were reused, not evaluated again

    after = _evals(out)
    for key in keys:  # recomputed to the very numbers of the first run, and cached again
        for field in ("nll_sum", "n_tokens", "n_examples"):
            assert after[key][field] == pytest.approx(before[key][field], rel=1e-9), (key, field)
        assert json.loads((cache / f"{key}.json").read_text()) == pytest.approx(original[key], rel=1e-9)

    capsys.readouterr()
    calls.clear()
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    assert "damaged cache entry" not in capsys.readouterr().err and not calls  # all cached again


def test_a_plausible_but_edited_entry_for_another_test_split_size_is_not_used(tiny, capsys, monkeypatch):
    """An entry whose n_examples is not the number of test examples (a file copied from another run, or
    edited) is recomputed, even though every number in it is well-formed."""
    cfg, out = tiny
    cache = out / "cache" / "evals"
    key = max(_evals(out))
    entry = json.loads((cache / f"{key}.json").read_text())
    (cache / f"{key}.json").write_text(json.dumps({"nll_sum": 1.0, "n_tokens": 1, "n_examples": 1000}))
    capsys.readouterr()
    calls = _counting_score(monkeypatch)
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{cache / f'{key}.json'}: damaged cache entry (n_examples 1000, but the test split of" in err
    assert len(calls) == 1
    assert json.loads((cache / f"{key}.json").read_text()) == pytest.approx(entry, rel=1e-9)
    assert _evals(out)[key]["ppl"] != pytest.approx(math.e)  # not the edited 1.0 / 1


# -- evaluations that cannot be computed -----------------------------------------------------------------

def _context(cfg_update: dict | None = None, test: list | None = None):
    """A ``_Context`` with only what ``_load_data`` and ``_evaluate`` read (no model, no data files)."""
    from lorasum.config import ExperimentConfig
    from lorasum.experiment.runner import _Cache, _Context

    ctx = _Context.__new__(_Context)
    ctx.cfg = ExperimentConfig(domains=["math", "finance"], **(cfg_update or {}))
    ctx.cache = _Cache(Path("/nonexistent-cache"), enabled=False)
    ctx.tokenizer = SimpleNamespace(pad_token_id=0)
    ctx.model = object()
    ctx.data = {"math": SimpleNamespace(test=test if test is not None else ["r1", "r2"])}
    ctx._encoded = {"math": ["e1", "e2"]}
    return ctx


def test_no_answer_token_to_score_is_a_data_error_and_nothing_is_cached(monkeypatch, tmp_path):
    import lorasum.evaluate as ev
    from lorasum.experiment.grid import EvalJob

    ctx = _context()
    ctx.cache.root = tmp_path
    monkeypatch.setattr(ev, "score", lambda *a, **kw: ev.Perplexity(0.0, 0, 2))
    job = EvalJob(model="base", kind="base", domains=(), seed=0, eval_domain="math")
    with pytest.raises(DataError, match=r"domain math: no answer token left to score in its 2 test examples"):
        ctx._evaluate([(job, "k")])
    assert not any(tmp_path.rglob("*.json"))


def test_a_non_finite_evaluation_is_reported_and_not_cached(monkeypatch, tmp_path, caplog):
    import lorasum.evaluate as ev
    from lorasum.experiment.grid import EvalJob

    ctx = _context()
    ctx.cache.root = tmp_path
    monkeypatch.setattr(ev, "score", lambda *a, **kw: ev.Perplexity(math.inf, 5, 2))
    job = EvalJob(model="base", kind="base", domains=(), seed=0, eval_domain="math")
    with caplog.at_level("WARNING", logger="lorasum"):
        done = ctx._evaluate([(job, "k")])
    assert done["k"]["nll_sum"] == math.inf
    assert "not a finite number" in caplog.text and "not cached" in caplog.text
    assert not any(tmp_path.rglob("*.json"))


def test_a_domain_with_no_test_example_left_fails_before_training(monkeypatch):
    """Every model is evaluated on every domain: an empty test split (all dropped as too long) is refused
    when the data are loaded, not after hours of training."""
    from lorasum import data
    from lorasum.config import ExperimentConfig
    from lorasum.experiment.runner import _load_data

    report = {"long_rows": {"policy": "drop", "splits": {"test": {"too_long": 4}}}}
    dd = SimpleNamespace(train=["a"], validation=[], test=[], report=report)
    monkeypatch.setattr(data, "load_domains", lambda cfg, tokenizer=None: {"math": dd})
    cfg = ExperimentConfig(domains=["math", "finance"])
    with pytest.raises(DataError, match=r"domain math: no test examples left \(4 dropped as longer than "
                                        r"data.max_length 512; data.long_rows: drop\)"):
        _load_data(cfg, tokenizer=None)
