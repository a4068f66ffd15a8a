"""Flag values the CLI refuses up front, and Ctrl-C at any moment of a command: an empty path or name, a number
written with ``_``, a negative seed, a --plot file without a figure extension, a --max-length beyond the model's
context (exit 2, one line naming the flag); an interrupt while the parser is built (exit 130, one line). Nothing
here trains or scores anything: what is refused is refused before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

import lorasum.cli
from lorasum.cli import main
from lorasum.data.records import Record
from tiny_models import save_tiny_gpt2


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty current folder; the data root is an empty folder (never read: every case fails before)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("LORASUM_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "work"


def _parse_error(argv, capsys) -> str:
    """The one stderr line of a value the parser refuses (SystemExit 2, no usage block, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    return lines[0]


# -- empty paths and names -------------------------------------------------------------------------------

TRAIN = ["train", "--domain", "math", "--out", "a"]
EVAL = ["eval", "--domain", "math"]
COMPOSE = ["compose", "x", "y", "--out", "o"]
REPRODUCE = ["reproduce", "--config", "c.yaml", "--out", "r"]
STATS = ["data", "stats", "--no-tokens"]
V = object()  # where the empty value goes

#: (argv with V for the value, how the parser names the argument): every path-like and name-like argument
EMPTY_CASES = [
    *[([*TRAIN, flag, V], flag) for flag in ("--out", "--config", "--model", "--device", "--data-root", "--domain",
                                             "--target-modules")],
    *[([*EVAL, flag, V], flag) for flag in ("--adapter", "--model", "--config", "--device", "--data-root", "--domain")],
    ([*COMPOSE, "--out", V], "--out"), ([*COMPOSE, "--merge-into-base", "--model", V], "--model"),
    (["compose", "x", V, "--out", "o"], "adapters"),
    (["similarity", "x", "y", "--plot", V], "--plot"), (["similarity", "x", V], "adapters"),
    *[([*REPRODUCE, flag, V], flag) for flag in ("--config", "--out", "--model", "--device", "--domains", "--seeds")],
    (["report", V], "run_dir"),
    *[([*STATS, flag, V], flag) for flag in ("--config", "--data-root", "--model", "--domains")],
]


def _case_id(case) -> str:
    argv, named = case
    return f"{' '.join(argv[:2] if argv[0] == 'data' else argv[:1])} {named}"


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize(("template", "named"), EMPTY_CASES, ids=[_case_id(c) for c in EMPTY_CASES])
def test_empty_values_are_refused_by_the_parser(template, named, value, work, capsys):
    """`eval --adapter ""` would score the base model, `similarity --plot ""` draw nothing, `eval --model ""`
    load the current folder: an empty (or blank) path or name is a mistake (an unset shell variable), refused
    before anything is read or written, naming the argument."""
    argv = [value if a is V else a for a in template]
    line = _parse_error(argv, capsys)
    command = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert line.startswith(f"lorasum {command}: error: argument {named}: empty value"), line
    assert list(work.iterdir()) == []


def test_a_blank_value_is_shown_as_typed(work, capsys):
    line = _parse_error(["eval", "--domain", "math", "--adapter", " \t", "--model", "m"], capsys)
    assert "argument --adapter: empty value (' \\t': only whitespace)" in line, line


# -- numbers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "fragment"), [
    (TRAIN + ["--batch-size", "1_0"], "argument --batch-size: invalid int value: '1_0' (write numbers without '_')"),
    (TRAIN + ["--lr", "1_0.5"], "argument --lr: invalid float value: '1_0.5'"),
    (TRAIN + ["--max-length", "5_12"], "argument --max-length: invalid int value: '5_12'"),
    (STATS + ["--split-seed", "1_0"], "argument --split-seed: invalid int value: '1_0'"),
    (REPRODUCE + ["--seeds", "0,1_0"], "argument --seeds: expected comma-separated integers, got '0,1_0' (write "
     "numbers without '_')"),
    (TRAIN + ["--seed", "1_0"], "argument --seed: invalid int value: '1_0'"),
    (TRAIN + ["--seed", "-1"], "argument --seed: -1 is outside [0, 2**63)"),
    (TRAIN + ["--seed", str(2 ** 63)], f"argument --seed: {2 ** 63} is outside [0, 2**63)"),
    (COMPOSE + ["--method", "dare_ties", "--seed", "1_0"], "argument --seed: invalid int value: '1_0'"),
    (TRAIN + ["--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc'"),  # as argparse says it
])
def test_numbers_with_underscores_and_negative_seeds_are_refused(argv, fragment, work, capsys):
    """Python's int() and float() read 1_0 as 10: on a command line it is a typo, refused; a negative seed would be
    wrapped by torch onto another one."""
    assert fragment in _parse_error(argv, capsys)


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--weights", "1_0,1"], "--weights: '1_0' is not a number (write numbers without '_')"),
    (["--method", "task_arithmetic", "--scale", "1_0"], "--scale: '1_0' is not a number"),
    (["--method", "ties", "--density", "0.2_5"], "--density: '0.2_5' is not a number"),
    (["--method", "svd", "--rank", "1_0"], "--rank: '1_0' is not an integer (write numbers without '_')"),
])
def test_compose_numbers_with_underscores_are_refused(flags, fragment, work, capsys):
    """compose parses its method parameters itself (one message per flag): the same rule. The adapters do not
    exist: the parameters are checked first."""
    assert main(["compose", "x", "y", "--out", "o", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lorasum: error: ") and fragment in err, err
    assert list(work.iterdir()) == []


def test_reproduce_refuses_negative_seeds_from_the_flag_and_the_file(work, capsys):
    (work / "c.yaml").write_text("domains: [math, medicine]\nseeds: [0, -2]\n")
    assert main(["reproduce", "--config", "c.yaml", "--out", "r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "c.yaml: seeds.1: Input should be greater than or equal to 0" in err, err
    assert main(["reproduce", "--config", "c.yaml", "--out", "r", "--seeds", "3,-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds 3,-1: Input should be greater than or equal to 0" in err, err
    assert not (work / "r").exists()


@pytest.mark.parametrize("flag, value, fragment", [
    ("--epochs", "1e308", "--epochs 1e+308 (train.epochs): Input should be less than or equal to 10000"),
    ("--epochs", "inf", "--epochs inf (train.epochs): Input should be"),
    ("--max-steps", str(10**12), "(train.max_steps): Input should be less than or equal to 1000000000"),
    ("--split-seed", "-1", "--split-seed -1 (data.split_seed): Input should be greater than or equal to 0"),
])
def test_train_refuses_out_of_range_numbers_before_any_work(flag, value, fragment, work, capsys):
    """--epochs 1e308 ended in an internal OverflowError (exit 1) when the steps were counted; a negative
    split seed was taken while a negative training seed was refused."""
    assert main([*TRAIN, flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, err
    assert list(work.iterdir()) == []


# -- --plot ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("plot", "fragment"), [
    ("p", "argument --plot: p has no extension; use .png, .pdf or .svg"),
    ("p.", "argument --plot: p. has no extension; use .png, .pdf or .svg"),
    ("p.JPG", "argument --plot: p.JPG has the extension .JPG, not a figure format lorasum writes; use .png, .pdf "
     "or .svg"),
])
def test_plot_without_a_figure_extension(plot, fragment, work, capsys):
    assert fragment in _parse_error(["similarity", "x", "y", "--plot", plot], capsys)


# -- --max-length beyond the model's context -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_positions=64)


def _domain(name, max_length=None):
    recs = [Record(id=f"{name}-{i}", domain=name, question="what is the dose ?", answer=" ".join(["apples"] * 80))
            for i in range(2)]
    return SimpleNamespace(name=name, train=recs, validation=[], test=recs, sources=[], content_hash="0" * 64,
                           report={"long_rows": {"policy": "truncate"}}, max_length=max_length)


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if anything is trained, tokenised for truncation counts, or scored."""
    import lorasum.cli.train as train_cli
    import lorasum.evaluate
    import lorasum.train

    def refuse(*args, **kwargs):
        raise AssertionError("the command went on past the check")

    monkeypatch.setattr(lorasum.train, "train_adapter", refuse)
    monkeypatch.setattr(train_cli, "truncation_warnings", refuse)
    monkeypatch.setattr(lorasum.evaluate, "perplexity", refuse)


@pytest.mark.parametrize(("command", "extra", "own", "fragment"), [
    ("train", ["--max-length", "65"], None,
     "--max-length 65 (data.max_length) is longer than the model's context of 64 tokens (config n_positions); "
     "use --max-length 64 or less"),
    ("eval", ["--max-length", "65"], None, "--max-length 65 (data.max_length) is longer than the model's context"),
    ("train", [], None, "data.max_length 512 (the default) is longer than the model's context of 64 tokens (config "
     "n_positions); pass --max-length 64 or less"),
    ("train", ["--max-length", "48"], 100, "custom_domains.legal.max_length 100 is longer than the model's context "
     "of 64 tokens (config n_positions); lower it to 64 or less"),
    ("eval", ["--max-length", "48"], 100, "custom_domains.legal.max_length 100 is longer than the model's context"),
])
def test_max_length_beyond_the_context_is_refused_before_any_work(command, extra, own, fragment, tiny_model_dir,
                                                                  tmp_path, monkeypatch, capsys, nothing_runs):
    """GPT-2's learned positions end at n_positions: a longer limit is refused as soon as the model is loaded,
    before truncation is counted against it (no warnings first) and before training or scoring."""
    import lorasum.cli.evaluate as eval_cli
    import lorasum.cli.train as train_cli

    monkeypatch.setattr(train_cli if command == "train" else eval_cli, "_load_data",
                        lambda cfg, names: [_domain(names[0], own)])
    argv = [command, "-q", "--domain", "legal", "--model", str(tiny_model_dir), "--device", "cpu", *extra]
    assert main(argv + (["--out", str(tmp_path / "a")] if command == "train" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lorasum: error: ") and fragment in err, err
    assert not (tmp_path / "a").exists()


def test_max_length_within_the_context_passes_the_check(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The limit may equal the context (a custom domain's own limit, when it is lower, wins over data.max_length)."""
    import lorasum.cli.train as train_cli
    import lorasum.storage
    import lorasum.train

    seen = {}

    def train_adapter(*args, **kwargs):
        seen["max_length"] = kwargs["max_length"]
        return SimpleNamespace(steps=1, tokens=10, seconds=0.1, final_loss=1.0, val_loss=None)

    monkeypatch.setattr(lorasum.train, "train_adapter", train_adapter)
    monkeypatch.setattr(lorasum.storage, "write_manifest", lambda *a, **k: None)
    for own, flag, expected in ((None, "64", 64), (32, "512", 32)):
        monkeypatch.setattr(train_cli, "_load_data", lambda cfg, names, own=own: [_domain(names[0], own)])
        assert main(["train", "-q", "--domain", "legal", "--model", str(tiny_model_dir), "--device", "cpu",
                     "--max-length", flag, "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
        assert seen["max_length"] == expected


# -- Ctrl-C ------------------------------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["build_parser", "_setup_logging", "import"])
def test_ctrl_c_while_the_command_starts_is_one_line(where, monkeypatch, capsys):
    """Building the parser imports torch and the subcommands, setting up logging imports transformers: a Ctrl-C
    in those first seconds ends the command as one later does (exit 130, one line), without a traceback."""
    if where == "import":  # a subcommand module being imported by build_parser
        monkeypatch.setattr(lorasum.cli, "importlib", SimpleNamespace(import_module=_interrupt))
    else:
        monkeypatch.setattr(lorasum.cli, where, _interrupt)
    assert main(["similarity", "a", "b"]) == 130
    assert capsys.readouterr().err == "lorasum: interrupted\n"


def test_ctrl_c_while_the_command_starts_shows_the_traceback_with_debug(monkeypatch, capsys):
    monkeypatch.setattr(lorasum.cli, "build_parser", _interrupt)
    assert main(["similarity", "--debug", "a", "b"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyboardInterrupt" in err and err.endswith("lorasum: interrupted\n")


def test_importing_the_cli_is_light():
    """What runs before main() (and its handler of Ctrl-C) is only `import lorasum.cli`: it must not import the
    heavy libraries, which the subcommands bring in when the parser is built."""
    code = ("import sys, lorasum.cli; "
            "print(sorted({'torch', 'transformers', 'pydantic', 'yaml', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="watches /proc/PID/maps for torch being loaded")
def test_sigint_while_torch_loads_exits_130_without_a_traceback(tmp_path):
    """A real SIGINT to `python -m lorasum`, sent once the process is loading torch (building the parser)."""
    proc = subprocess.Popen([sys.executable, "-m", "lorasum", "similarity", str(tmp_path / "a"), str(tmp_path / "b")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"),
                            # a background job inherits SIGINT ignored, and Python then keeps it ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(f"/proc/{proc.pid}/maps") as f:
                    if "libtorch" in f.read():
                        break
            except OSError:
                pass
            time.sleep(0.005)
        else:
            pytest.fail("the process ended, or never loaded torch")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err == "lorasum: interrupted\n" and out == ""
