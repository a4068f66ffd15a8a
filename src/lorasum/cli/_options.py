"""Options shared by several subcommands, turned into an :class:`ExperimentConfig`."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from lorasum.config import ExperimentConfig, error_message, load_config
from lorasum.errors import ConfigError


def csv_list(text: str) -> list[str]:
    """``"a,b"`` → ``["a", "b"]`` (argparse type; spaces around items are dropped).

    Raises:
        argparse.ArgumentTypeError: the list is empty or has an empty item (``"a,,b"``, ``"a,"``):
            a stray comma is a typo, not a shorter list.
    """
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in the comma-separated list {text!r}")
    return items


def int_list(text: str) -> list[int]:
    """``"0,1"`` → ``[0, 1]`` (argparse type).

    Raises:
        argparse.ArgumentTypeError: as :func:`csv_list`, or an item is not an integer.
    """
    items = csv_list(text)
    try:
        return [int(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML whose settings are the defaults (flags override)")
    p.add_argument("--model", help="hub id (default gpt2), local folder, .gguf file, or smollm2-135m")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--max-length", type=int, help="tokens per example (default 512)")


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data folder (default $LORASUM_DATA_ROOT)")
    p.add_argument("--train-size", type=int, help="training examples per domain (default all)")
    p.add_argument("--validation-size", type=int, help="validation examples per domain, scored after training "
                   "(default all: up to ~800 for medicine, slow on a CPU)")
    p.add_argument("--test-size", type=int, help="test examples per domain (default all)")
    p.add_argument("--split-seed", type=int, help="seed of the train/validation/test split (default 0)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--r", type=int, dest="lora_r", help="LoRA rank r (default 4)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha; scaling = alpha / r (default 64)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.1)")
    p.add_argument("--target-modules", type=csv_list, help="module name suffixes (default per architecture)")
    p.add_argument("--init-per-adapter", action="store_true", default=None,
                   help="draw LoRA A from a seed of this adapter's own (run seed + domains) instead of the run seed")
    p.add_argument("--lr", type=float, dest="learning_rate", help="AdamW learning rate (default 5e-5)")
    p.add_argument("--epochs", type=float, help="training epochs (default 1)")
    p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    p.add_argument("--batch-size", type=int, help="examples per step (default 8)")
    p.add_argument("--checkpoint-every", type=int, help="save a resumable checkpoint every N steps (default 200; "
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
