"""Options shared by several subcommands, turned into an :class:`ExperimentConfig`."""

from __future__ import annotations

import argparse

from lorasum.config import ExperimentConfig, load_config
from lorasum.errors import ConfigError


def csv_list(text: str) -> list[str]:
    """``"a,b"`` → ``["a", "b"]`` (argparse type)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def int_list(text: str) -> list[int]:
    """``"0,1"`` → ``[0, 1]`` (argparse type)."""
    try:
        return [int(t) for t in csv_list(text)]
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


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """Defaults ← ``--config`` file ← command-line flags; validated by the schema.

    Raises:
        ConfigError: the file or a flag value is invalid.
    """
    base = load_config(args.config) if getattr(args, "config", None) else ExperimentConfig()
    raw = base.model_dump(mode="python")
    sections = {
        "": {"model": "model", "device": "device"},
        "data": {"max_length": "max_length", "data_root": "root", "train_size": "train_size", "validation_size": "validation_size",
                 "test_size": "test_size", "split_seed": "split_seed"},
        "lora": {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                 "target_modules": "target_modules", "init_per_adapter": "init_per_adapter"},
        "train": {"learning_rate": "learning_rate", "epochs": "epochs", "max_steps": "max_steps",
                  "batch_size": "batch_size", "checkpoint_every": "checkpoint_every"},
    }
    for section, mapping in sections.items():
        target = raw[section] if section else raw
        for arg, key in mapping.items():
            value = getattr(args, arg, None)
            if value is not None:
                target[key] = value
    if getattr(args, "batch_size", None) is not None:
        raw["eval"]["batch_size"] = args.batch_size
    try:
        return ExperimentConfig.model_validate(raw)
    except Exception as e:  # pydantic.ValidationError
        first = e.errors()[0] if hasattr(e, "errors") else {"loc": (), "msg": str(e)}
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"invalid option {loc}: {first['msg']}") from None


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
