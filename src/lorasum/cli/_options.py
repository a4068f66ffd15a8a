"""Options shared by several subcommands, turned into an :class:`ExperimentConfig`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pydantic import ValidationError

from lorasum.config import ExperimentConfig, error_message, load_config
from lorasum.errors import ConfigError


def nonempty(text: str) -> str:
    """A path or name as given (argparse type of every path-like and name-like argument).

    Raises:
        argparse.ArgumentTypeError: the value is empty or only whitespace (``--adapter ""``): an unset
            shell variable, not a choice; as a path it would be the current folder, as a model or
            adapter the default one.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("empty value" if not text else f"empty value ({text!r}: only whitespace)")
    return text


#: Said of a number written with ``_``: Python's int() and float() read ``1_0`` as 10, which on a command line
#: is a typo (``1,0``? ``1.0``?), not a number
NO_UNDERSCORES = "write numbers without '_'"


def _numeric(kind: type) -> Callable[[str], int | float]:
    """An argparse type that is ``kind`` (int or float), but refuses underscores; argparse names it as it
    names ``kind`` (``invalid int value: 'abc'``)."""
    def parse(text: str):
        if "_" in text:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r} ({NO_UNDERSCORES})")
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


#: argparse types of integer and float flags: int() and float() without ``1_0``
integer = _numeric(int)
number = _numeric(float)


def seed(text: str) -> int:
    """A seed torch.Generator.manual_seed takes as it is: an integer in [0, 2**63) (argparse type; torch
    would wrap -1 onto 2**64 - 1).

    Raises:
        argparse.ArgumentTypeError: not an integer (underscores included), or outside the range.
    """
    try:
        value = integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2**63)")
    return value


def csv_list(text: str) -> list[str]:
    """``"a,b"`` → ``["a", "b"]`` (argparse type; spaces around items are dropped).

    Raises:
        argparse.ArgumentTypeError: the value is empty (:func:`nonempty`), the list is, or it has an empty
            item (``"a,,b"``, ``"a,"``): a stray comma is a typo, not a shorter list; or an item twice.
    """
    items = [t.strip() for t in nonempty(text).split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in the comma-separated list {text!r}")
    twice = sorted({t for t in items if items.count(t) > 1})
    if twice:  # as a config's lists: `--domain math,math` would train one domain as if it were two
        raise argparse.ArgumentTypeError(f"{twice[0]!r} listed twice in {text!r}")
    return items


def int_list(text: str) -> list[int]:
    """``"0,1"`` → ``[0, 1]`` (argparse type).

    Raises:
        argparse.ArgumentTypeError: as :func:`csv_list`, or an item is not an integer.
    """
    items = csv_list(text)
    if "_" in text:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r} ({NO_UNDERSCORES})")
    try:
        return [int(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=nonempty, help="experiment YAML whose settings are the defaults (flags override)")
    p.add_argument("--model", type=nonempty, help="hub id (default gpt2), local folder, .gguf file, or smollm2-135m")
    p.add_argument("--device", type=nonempty, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--max-length", type=integer, help="tokens per example (default 512)")


def add_data_options(p: argparse.ArgumentParser, training: bool = True) -> None:
    """The data flags; ``training`` False (``eval``) hides --train-size and --validation-size from the help:
    they change only the training side of the split (the test examples are drawn on their own), and are
    still accepted there so that one list of data flags serves train and eval alike."""
    p.add_argument("--data-root", type=nonempty, help="data folder (default $LORASUM_DATA_ROOT)")
    p.add_argument("--train-size", type=integer,
                   help="training examples per domain (default all)" if training else argparse.SUPPRESS)
    p.add_argument("--validation-size", type=integer,
                   help="validation examples per domain, scored after training (default all: up to ~800 for "
                   "medicine, slow on a CPU)" if training else argparse.SUPPRESS)
    p.add_argument("--test-size", type=integer, help="test examples per domain (default all)")
    p.add_argument("--split-seed", type=integer, help="seed of the train/validation/test split (default 0)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--r", type=integer, dest="lora_r", help="LoRA rank r (default 4)")
    p.add_argument("--lora-alpha", type=number, help="LoRA alpha; scaling = alpha / r (default 64)")
    p.add_argument("--lora-dropout", type=number, help="LoRA dropout (default 0.1)")
    p.add_argument("--target-modules", type=csv_list, help="module name suffixes (default per architecture)")
    p.add_argument("--init-per-adapter", action="store_true", default=None,
                   help="draw LoRA A from a seed of this adapter's own (run seed + domains) instead of the run seed")
    p.add_argument("--lr", type=number, dest="learning_rate", help="AdamW learning rate (default 5e-5)")
    p.add_argument("--epochs", type=number, help="training epochs (default 1)")
    p.add_argument("--max-steps", type=integer, help="optimizer steps; overrides --epochs")
    p.add_argument("--batch-size", type=integer, help="examples per step (default 8)")
    p.add_argument("--checkpoint-every", type=integer, help="save a resumable checkpoint every N steps (default 200; "
                   "one is always saved on SIGINT/SIGTERM)")


#: Flag destination → (config section, key); "" is the top level.
_FLAG_KEYS = {
    "model": ("", "model"), "device": ("", "device"),
    "max_length": ("data", "max_length"), "data_root": ("data", "root"), "train_size": ("data", "train_size"),
    "validation_size": ("data", "validation_size"), "test_size": ("data", "test_size"),
    "split_seed": ("data", "split_seed"),
    "lora_r": ("lora", "r"), "lora_alpha": ("lora", "lora_alpha"), "lora_dropout": ("lora", "lora_dropout"),
    "target_modules": ("lora", "target_modules"), "init_per_adapter": ("lora", "init_per_adapter"),
    "learning_rate": ("train", "learning_rate"), "epochs": ("train", "epochs"), "max_steps": ("train", "max_steps"),
    "batch_size": ("train", "batch_size"), "checkpoint_every": ("train", "checkpoint_every"),
}
#: Flag destinations whose option string is not ``--`` + the destination with dashes.
_FLAG_NAMES = {"lora_r": "--r", "learning_rate": "--lr"}


def _flag(dest: str) -> str:
    return _FLAG_NAMES.get(dest, "--" + dest.replace("_", "-"))


def _shown(value) -> str:
    """A flag value as typed: lists joined with commas; an empty or padded string quoted."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, str) and (not value or value != value.strip()):
        return repr(value)
    return str(value)


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """Defaults ← ``--config`` file ← command-line flags; validated by the schema.

    ``--batch-size`` sets both ``train.batch_size`` and ``eval.batch_size``.

    Raises:
        ConfigError: the file or a flag value is invalid; a flag's value that the schema refuses
            (``--batch-size 0``, ``--lr nan``) is reported with the flag's name and value and the
            config key it sets (``--lr nan (train.learning_rate): ...``).
    """
    base = load_config(args.config) if getattr(args, "config", None) else ExperimentConfig()
    raw = base.model_dump(mode="python")
    given: dict[tuple[str, ...], str] = {}  # config location -> the flag that set it
    for dest, (section, key) in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            (raw[section] if section else raw)[key] = value
            given[(section, key) if section else (key,)] = dest
    if getattr(args, "batch_size", None) is not None:
        raw["eval"]["batch_size"] = args.batch_size
        given[("eval", "batch_size")] = "batch_size"
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = tuple(str(x) for x in first["loc"])
        dest = next((d for where, d in given.items() if loc[:len(where)] == where), None)
        if dest is not None:  # the flag as typed, and the config key it sets (what a config file would say)
            key = f" ({'.'.join(loc)})" if list(given.values()).count(dest) == 1 else ""  # --batch-size: two keys
            raise ConfigError(f"{_flag(dest)} {_shown(getattr(args, dest))}{key}: {error_message(e)}") from None
        where = f"the config {args.config}" if getattr(args, "config", None) else "the options"
        raise ConfigError(f"invalid option {'.'.join(loc) or f'combination in {where}'}: {error_message(e)}") from None


def load_data(cfg: ExperimentConfig, names: list[str]) -> list:
    """The config's data settings applied to ``names`` (``data.long_rows: drop`` loads the tokenizer).

    Raises:
        ConfigError, DataError: unknown domain, missing or malformed data files.
    """
    from lorasum.data import load_domains

    tok = None
    if cfg.data.long_rows == "drop":
        from lorasum.models import load_tokenizer

        tok = load_tokenizer(cfg.model)
    return list(load_domains(cfg, names, tokenizer=tok).values())



def check_max_length(args: argparse.Namespace, model, max_length: int, domain: str | None = None) -> None:
    """Refuse a token limit longer than the model's context (``n_positions`` or ``max_position_embeddings`` of
    its config, the keys :func:`lorasum.models.check_context` reads), right after the model is loaded: before
    truncation is counted against a limit the model cannot take, and before anything is trained or scored.

    Args:
        max_length: the limit: custom domain ``domain``'s own ``max_length``, or (``domain`` None)
            ``data.max_length``, from ``--max-length``, the ``--config`` file or the default.

    Raises:
        ConfigError: naming the setting (``--max-length``, ``data.max_length`` or
            ``custom_domains.NAME.max_length``), its value and the context.
    """
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):  # as check_context: the first one set
        limit = getattr(config, key, None)
        if isinstance(limit, int) and limit > 0:
            break
    else:
        return
    if max_length <= limit:
        return
    if domain is not None:
        setting, fix = f"custom_domains.{domain}.max_length {max_length}", f"lower it to {limit} or less"
    elif getattr(args, "max_length", None) is not None:
        setting, fix = f"--max-length {max_length} (data.max_length)", f"use --max-length {limit} or less"
    else:
        where = "" if getattr(args, "config", None) else " (the default)"
        setting, fix = f"data.max_length {max_length}{where}", f"pass --max-length {limit} or less"
    raise ConfigError(f"{setting} is longer than the model's context of {limit} tokens (config {key}); {fix}")


def truncation_warnings(data, tokenizer, max_length: int, splits=("train", "validation"),
                         windows=()) -> list[str]:
    """One warning per domain and split of ``splits`` whose examples are cut at ``max_length``: how
    many, what they lose (answer tokens, or only context and question) and how to avoid it (``windows``:
    splits scored in sliding windows, never cut).

    They are shown before training (``lorasum eval``: scoring) starts; on a failure the one-line error follows
    them."""
    from lorasum.data.lengths import domain_truncation, truncation_warning

    own = getattr(data[0], "max_length", None) if len(data) == 1 else None
    setting, flag = (f"custom_domains.{data[0].name}.max_length", None) if own else ("data.max_length", "--max-length")
    out = []
    for dd in data:
        counts = domain_truncation(dd, tokenizer, max_length, splits=splits, windows=windows)
        for split, c in counts["splits"].items():
            message = truncation_warning(dd.name, split, c, max_length, setting=setting, flag=flag)
            if message:
                out.append(message)
    return out


def check_distinct_adapters(paths: list[str], hint: str = "", *, refuse: bool = True) -> None:
    """Refuse an adapter folder given twice (the same folder through another spelling or a symlink too), or with
    ``refuse=False`` log a warning about it.

    Raises:
        ConfigError: naming both spellings, then ``hint`` (``refuse`` only).
    """
    import logging
    from pathlib import Path

    seen: dict = {}
    for p in paths:
        try:
            key = Path(p).resolve()
        except (OSError, RuntimeError):  # a symlink loop: the loader reports it
            continue
        if key in seen:
            message = f"{p}: the same adapter is given twice (as {seen[key]} and {p}){hint}"
            if refuse:
                raise ConfigError(message)
            logging.getLogger("lorasum").warning(message)
        seen[key] = p


def check_out_not_inputs(out: str, *inputs: str | None) -> None:
    """Refuse an output path that is, holds or lies inside one of the ``inputs`` that exist on this machine
    (the config file, a model folder or ``.gguf`` file, the data folder, a custom domain's source): with
    ``--overwrite`` lorasum would replace what the command reads (a base model folder, the training data), and
    without it would write into the user's own folder. Hub ids and None are skipped.

    Raises:
        OutputExistsError: naming the output and the input (:func:`lorasum.storage.check_not_inputs`).
    """
    import os

    from lorasum.storage import check_not_inputs

    paths = [os.path.expanduser(p) for p in inputs if p]
    check_not_inputs(out, [p for p in paths if os.path.lexists(p)])


def experiment_inputs(args: argparse.Namespace, cfg: ExperimentConfig) -> list[str]:
    """The local paths a train or reproduce command reads: ``--config``, the model, the data folder and the
    sources of the config's custom domains (relative ones under the data folder)."""
    import os

    from lorasum.config import data_root

    paths = [getattr(args, "config", None), cfg.model]
    try:
        root = str(data_root(cfg.data))
    except ConfigError:  # no data folder: the data loading says so, in its own words
        root = None
    paths.append(root)
    for spec in cfg.custom_domains.values():
        for source in spec.sources:
            path = os.path.expanduser(source.path)
            paths.append(path if os.path.isabs(path) or root is None else os.path.join(root, path))
    return [p for p in paths if p]  # expanded by check_out_not_inputs
