"""Experiment configuration: one strict schema, loaded from YAML.

Unknown keys are refused (``extra="forbid"``) so that a typo never silently falls
back to a default. Run options that do not change results (``--overwrite``,
``--debug``) are command-line flags, not config keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorasum.errors import ConfigError

__all__ = [
    "DataSpec",
    "LoraSpec",
    "TrainSpec",
    "EvalSpec",
    "ExperimentConfig",
    "load_config",
    "data_root",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """How each domain's records are selected, split and tokenised."""

    root: str | None = Field(None, description="data folder; default $LORASUM_DATA_ROOT")
    max_length: int = Field(512, gt=8, description="tokens per example (prompt + answer); longer contexts are cut")
    train_size: int | None = Field(None, gt=0, description="training examples per domain (None: all)")
    validation_size: int | None = Field(None, gt=0, description="validation examples per domain (None: all)")
    test_size: int | None = Field(None, gt=0, description="test examples per domain (None: all)")
    split_seed: int = Field(0, description="seed of the train/validation/test split")
    validation_fraction: float = Field(0.05, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="for sources without an official test split")


class LoraSpec(_Strict):
    """LoRA hyper-parameters (Hu et al. 2021); defaults from arXiv 2508.11985."""

    r: int = Field(4, gt=0, description="rank r")
    lora_alpha: float = Field(64, gt=0, description="alpha; scaling = lora_alpha / r")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="module name suffixes; None: c_attn, c_proj on GPT-2 and q/k/v/o/down_proj on Llama"
    )


class TrainSpec(_Strict):
    """Optimiser and schedule (AdamW, linear warm-up then linear decay)."""

    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)


class EvalSpec(_Strict):
    """Perplexity evaluation."""

    batch_size: int = Field(8, gt=0)


class ExperimentConfig(_Strict):
    """The whole experiment: a model, N >= 2 domains, LoRA, training and evaluation settings."""

    name: str = "experiment"
    model: str = Field("gpt2", description="hub id, local folder, .gguf file or alias (smollm2-135m)")
    domains: list[str] = Field(default_factory=lambda: ["math", "medicine", "finance"], min_length=2)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    data: DataSpec = DataSpec()
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"domains listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _seeds_unique(self) -> ExperimentConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds listed twice: {self.seeds}")
        return self


def _format_validation_error(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: {loc}: {first['msg']}{more}"


def load_config(path: str | os.PathLike, **overrides: object) -> ExperimentConfig:
    """Read and validate an experiment YAML file.

    ``overrides`` replace top-level keys (e.g. ``seeds=[0, 1]``) before validation.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not match the schema
            (the message names the file and the first offending key).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(path), e)) from None


def data_root(spec: DataSpec | None = None) -> Path:
    """The data folder: ``spec.root`` if set, else ``$LORASUM_DATA_ROOT``.

    Raises:
        ConfigError: neither is set, or the folder does not exist.
    """
    root = (spec.root if spec else None) or os.environ.get("LORASUM_DATA_ROOT")
    if not root:
        raise ConfigError("no data folder: set LORASUM_DATA_ROOT (e.g. ../shared/data/raw) or data.root in the config")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{p}: data folder does not exist (from LORASUM_DATA_ROOT or data.root)")
    return p
