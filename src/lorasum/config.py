"""Experiment configuration: one strict schema, loaded from YAML.

Unknown keys are refused (``extra="forbid"``) so that a typo never silently falls
back to a default, and so is a key written twice in one mapping (YAML would keep the
last one and drop the other setting without a word). Integer fields are strict too: YAML's
``true``, a float (``512.0``) or a quoted number (``"512"``) is refused, not turned into an
integer. Run options that do not change results (``--overwrite``, ``--debug``) are command-line
flags, not config keys.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StringConstraints, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from lorasum.errors import ConfigError
from lorasum.storage import read_regular_file

__all__ = [
    "SourceSpec",
    "DomainSpec",
    "DataSpec",
    "LoraSpec",
    "TrainSpec",
    "EvalSpec",
    "ExperimentConfig",
    "load_config",
    "data_root",
]


#: A training seed: an integer that ``torch.manual_seed`` takes as it is (it wraps a negative one onto a large
#: one, so -1 and 2**64 - 1 would train the same adapter); booleans are refused, as in every integer field
Seed = Annotated[StrictInt, Field(ge=0, lt=2 ** 63)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataSpec(_Strict):
    """How each domain's records are selected, split and tokenised."""

    root: str | None = Field(None, min_length=1, description="data folder; default $LORASUM_DATA_ROOT")
    max_length: StrictInt = Field(512, gt=8,
                                  description="tokens per example (prompt + answer); longer contexts are cut")
    train_size: StrictInt | None = Field(None, gt=0, description="training examples per domain (None: all)")
    validation_size: StrictInt | None = Field(None, gt=0, description="validation examples per domain (None: all)")
    test_size: StrictInt | None = Field(None, gt=0, description="test examples per domain (None: all)")
    split_seed: StrictInt = Field(0, ge=0, le=2**63 - 1, description="seed of the train/validation/test split")
    validation_fraction: float = Field(0.05, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="for sources without an official test split")
    skip_bad_rows: StrictBool = Field(False, description="skip and count malformed rows instead of failing")
    long_rows: Literal["truncate", "drop"] = Field(
        "truncate", description="examples over max_length tokens: truncate them, or drop them (counted)")


_FIELD_FORMATS = ("tabular", "hf")  # formats whose question / answer / context fields can be mapped
_GROUP_FORMATS = ("tabular", "hf", "financial_qa_10k")  # formats with a group_field
#: A domain name: used in file names and ids.
DomainName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class SourceSpec(_Strict):
    """One file, folder or hub data set of a domain, and which split(s) its records may go to.

    ``split``: ``train`` (training and validation only), ``test`` (test only) or ``all`` (split
    by group; into training / validation only when another source of the domain is ``test``).
    """

    format: Literal["gsm8k", "medquad", "tatqa", "pubmedqa", "mathqa", "financial_qa_10k", "tabular", "hf"]
    path: str = Field(min_length=1, description="file or folder, relative to the data root or absolute; "
                      "for format hf the hub data set id")
    split: Literal["train", "test", "all"] = "all"
    question_field: str | None = Field(None, description="tabular / hf: question column (default question)")
    answer_field: str | None = Field(None, description="tabular / hf: answer column (default answer)")
    context_field: str | None = Field(None, description="tabular / hf: context column (default none)")
    group_field: str | None = Field(None, description="column whose rows share a split group (no straddling); "
                                    "financial_qa_10k default: ticker")
    id_prefix: str | None = Field(None, description="record id prefix (default: the file stem or data set id)")
    test_ids: str | None = Field(None, description="pubmedqa: JSON file whose keys are the test PMIDs")
    hf_config: str | None = Field(None, description="hf: data set configuration name")
    hf_split: str = Field("train", description="hf: split of the hub data set to read")
    hf_revision: str | None = Field(None, description="hf: git revision (tag, branch or commit)")

    @model_validator(mode="after")
    def _options_fit_format(self) -> SourceSpec:
        fmt = self.format
        mapped = [f for f in ("question_field", "answer_field", "context_field") if getattr(self, f) is not None]
        if mapped and fmt not in _FIELD_FORMATS:
            raise ValueError(f"{mapped[0]} applies to formats {', '.join(_FIELD_FORMATS)}, not {fmt} "
                             f"(whose fields are fixed)")
        if self.group_field is not None and fmt not in _GROUP_FORMATS:
            raise ValueError(f"group_field applies to formats {', '.join(_GROUP_FORMATS)}, not {fmt}")
        if self.id_prefix is not None and fmt in ("medquad", "tatqa", "pubmedqa"):
            raise ValueError(f"id_prefix does not apply to {fmt}: its ids come from the data set")
        if self.test_ids is not None and fmt != "pubmedqa":
            raise ValueError(f"test_ids applies to format pubmedqa, not {fmt}")
        hf_set = [f for f in ("hf_config", "hf_revision") if getattr(self, f) is not None]
        if fmt != "hf" and (hf_set or self.hf_split != "train"):
            raise ValueError(f"{(hf_set or ['hf_split'])[0]} applies to format hf, not {fmt}")
        return self


class DomainSpec(_Strict):
    """A domain: its sources, prompt template, max length and split fractions.

    Example (YAML, under ``custom_domains:``)::

        legal:
          sources: [{format: tabular, path: my/legal.jsonl, question_field: q, answer_field: a}]
          test_fraction: 0.1
    """

    sources: list[SourceSpec] = Field(min_length=1)
    description: str = ""
    prompt_template: str | None = Field(
        None, description="prompt text with {question} and optionally {context} before it; "
        "None: the built-in '{context}\\n\\nQuestion: {question}\\nAnswer:'")
    max_length: StrictInt | None = Field(None, gt=8, description="tokens per example; None: data.max_length")
    validation_fraction: float | None = Field(None, ge=0, lt=0.5, description="None: data.validation_fraction")
    test_fraction: float | None = Field(None, gt=0, lt=0.5, description="None: data.test_fraction")

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import string

        try:
            names = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:
            raise ValueError(f"prompt_template is not a valid format string ({e})") from None
        unknown = sorted(set(names) - {"question", "context"})
        if unknown:
            raise ValueError(f"prompt_template: unknown placeholder {{{unknown[0]}}}; use {{question}} and {{context}}")
        if names.count("question") != 1 or names.count("context") > 1:
            raise ValueError("prompt_template needs {question} exactly once and {context} at most once")
        if "context" in names and names.index("context") > names.index("question"):
            raise ValueError("prompt_template: {context} must come before {question}")
        return v

    @model_validator(mode="after")
    def _has_train_and_test(self) -> DomainSpec:
        if not any(s.split in ("train", "all") for s in self.sources):
            raise ValueError("no source with split train or all: the domain has no training data")
        if not any(s.split in ("test", "all") or s.test_ids for s in self.sources):
            raise ValueError("no source with split test or all: the domain has no test data")
        return self


class LoraSpec(_Strict):
    """LoRA hyper-parameters (Hu et al. 2021); defaults from arXiv 2508.11985."""

    r: StrictInt = Field(4, gt=0, description="rank r")
    lora_alpha: float = Field(64, gt=0, description="alpha; scaling = lora_alpha / r")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="module name suffixes; None: c_attn, c_proj on GPT-2 and q/k/v/o/down_proj on Llama"
    )
    init_per_adapter: StrictBool = Field(
        False, description="False: every adapter of a seed starts from the same random LoRA A (PEFT's init drawn "
        "from the run seed); True: each adapter draws its A from its own seed, derived from the run seed and its "
        "domains, so adapters start independent")


class TrainSpec(_Strict):
    """Optimiser and schedule (AdamW, linear warm-up then linear decay)."""

    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    epochs: float = Field(1.0, gt=0, le=10_000, allow_inf_nan=False)
    max_steps: StrictInt | None = Field(None, gt=0, le=10**9, description="overrides epochs when set")
    batch_size: StrictInt = Field(8, gt=0)
    grad_accum: StrictInt = Field(1, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    loss_on: Literal["answer", "all"] = Field("answer", description="tokens that carry the loss: answer or all")
    packing: StrictBool = Field(True, description="pack examples into rows (exact: no attention or loss across examples)")
    pack_length: StrictInt = Field(1024, gt=8, description="tokens per packed row (at least the longest example)")
    compile: StrictBool = Field(False, description="torch.compile the decoder layers (CUDA; pays off on long runs)")
    checkpoint_every: StrictInt | None = Field(
        200, gt=0, description="save a resumable checkpoint every N optimiser steps (None: only on SIGINT/SIGTERM)")
    parallel_adapters: StrictInt = Field(
        1, ge=0, description="experiments: train this many adapters together in one pass over the base model "
        "(0: all of the run; 1: one after the other); see lorasum.train.parallel")
    cuda_graphs: StrictBool = Field(
        True, description="parallel training on CUDA: replay each forward/backward pass and the optimiser step as "
        "CUDA graphs (passes padded to a geometric grid of sizes; falls back to eager with a warning); see "
        "lorasum.train.parallel_graphs")
    attention_dropout: StrictFloat | None = Field(
        None, ge=0, lt=1, description="dropout on the attention probabilities while training; null: the model's "
        "own (GPT-2: 0.1, SmolLM2: 0). 0 lets GPT-2 train with variable-length attention and CUDA graphs on "
        "CUDA (faster; the paper trained GPT-2 with 0.1)")

    @field_validator("attention_dropout")
    @classmethod
    def _no_negative_zero(cls, v: float | None) -> float | None:
        return None if v is None else float(v) + 0.0  # -0.0 -> 0.0: one cache key for one setting
    parallel_max_tokens: StrictInt = Field(
        32768, gt=0, description="parallel training: tokens in one forward pass at most (bounds GPU memory: about "
        "40 GiB for SmolLM2-135M at 32k); a step with more takes several passes, with the same result")


class EvalSpec(_Strict):
    """Perplexity evaluation."""

    batch_size: StrictInt = Field(8, gt=0)
    max_tokens: StrictInt | None = Field(None, gt=0, description="padded tokens per batch at most (None: no limit)")
    loss_on: Literal["answer", "all"] = Field("answer", description="tokens scored: answer or all")
    stride: StrictInt | None = Field(
        None, gt=0, description="None: cut examples to data.max_length; N: sliding windows of max_length, N apart"
    )
    compile: StrictBool = Field(
        False, description="on CUDA, torch.compile the decoder layers once and score every model with them, each "
        "LoRA adapter's ΔW merged into the base weights for its evaluations (no PEFT LoRA branch); speed only")


class ExperimentConfig(_Strict):
    """The whole experiment: a model, N >= 2 domains, LoRA, training and evaluation settings."""

    name: str = "experiment"
    model: str = Field("gpt2", description="hub id, local folder, .gguf file or alias (smollm2-135m)")
    domains: list[str] = Field(default_factory=lambda: ["math", "medicine", "finance"], min_length=2)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1,
                              description="training seeds, each an integer in [0, 2**63)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    data: DataSpec = DataSpec()
    custom_domains: dict[DomainName, DomainSpec] = Field(
        default_factory=dict, description="your own domains by name (usable in domains); see DomainSpec")
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    hybrids: StrictBool = Field(True, description="also evaluate merged(S∖{d}) + single(d) for each subset S of >= 3 "
                          "domains and each d in S (exact sum; arXiv 2508.11985's hybrids)")
    methods: list[str] = Field(default_factory=lambda: ["sum"], min_length=1,
                               description="composition methods from lorasum.compose.METHODS, each applied to the "
                               "single adapters of every subset; sum (the headline) is always run")
    method_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, validate_default=True,
        description="keyword parameters per method, e.g. {svd: {rank: 4}, ties: {density: 0.2}}")

    @field_validator("methods")
    @classmethod
    def _methods_known(cls, v: list[str]) -> list[str]:
        _check_methods(v, None)
        return v

    @field_validator("method_params")
    @classmethod
    def _method_params_accepted(cls, v: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, dict[str, Any]]:
        if "methods" in info.data:  # else methods itself failed and is reported
            _check_methods(info.data["methods"], v)
        return v

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"domains listed twice: {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _domains_known(self) -> ExperimentConfig:
        from lorasum.data.presets import domain_spec  # imported here, as the compose methods above

        for name in self.domains:  # an unknown domain fails with the config, not after the model has loaded
            try:
                domain_spec(name, self.custom_domains)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _stride_inside_window(self) -> ExperimentConfig:
        if self.eval.stride is not None and self.eval.stride >= self.data.max_length:
            raise ValueError(f"eval.stride {self.eval.stride} must be smaller than data.max_length "
                             f"{self.data.max_length} (the window)")
        return self


def _check_methods(methods: list[str], params: dict[str, dict[str, Any]] | None) -> None:
    """Raise ValueError for an unknown or repeated method, or (unless ``params`` is None) parameters
    that a method's function does not take or a required one that is missing."""
    import inspect

    from lorasum.compose import METHODS  # imported here: compose needs torch, config loading should not

    known = ", ".join(sorted(METHODS))
    for name in [*methods, *(params or {})]:
        if name not in METHODS:
            raise ValueError(f"unknown composition method {name!r}; known methods: {known}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods listed twice: {methods}")
    if params is None:
        return
    for name, p in params.items():
        if name not in methods and name != "sum":
            raise ValueError(f"method_params.{name}: {name!r} is not listed in methods {methods}")
        if "weights" in p:
            raise ValueError(f"method_params.{name}: weights are not supported in an experiment "
                             "(subsets differ in size)")
    for name in dict.fromkeys(["sum", *methods]):
        try:
            inspect.signature(METHODS[name].fn).bind([], **params.get(name, {}))
        except TypeError as e:
            accepted = ", ".join(list(inspect.signature(METHODS[name].fn).parameters)[1:]) or "none"
            raise ValueError(f"method_params.{name}: {e} (accepted parameters: {accepted})") from None
        _dry_run(name, params.get(name, {}))


def _dry_run(name: str, params: dict[str, Any]) -> None:
    """Compose two tiny rank-1 adapters with ``params``, so that a bad value (a density of 5, a rank
    of "abc") is reported when the config is read, not after an experiment's training."""
    import torch

    from lorasum.adapters import Adapter, LoraFactor
    from lorasum.compose import compose
    from lorasum.errors import UserError

    gen = torch.Generator().manual_seed(0)
    tiny = [Adapter(factors={"m": LoraFactor(A=torch.randn(1, 4, generator=gen), B=torch.randn(4, 1, generator=gen),
                                             scaling=1.0)}) for _ in range(2)]
    try:
        compose(tiny, name, **params)
    except (UserError, ValueError, TypeError) as e:
        raise ValueError(f"method_params.{name}: {str(e).splitlines()[0]}") from None


def error_message(err: ValidationError) -> str:
    """The first error of ``err`` without pydantic's ``Value error, `` prefix."""
    msg = err.errors()[0]["msg"]
    return msg.removeprefix("Value error, ")


def _format_validation_error(path: str, err: ValidationError, flags: Mapping[str, str] | None = None,
                             values: Mapping[str, object] | None = None) -> str:
    """``path: loc: message``; or ``--flag value: message`` when the first error is in a top-level key
    that ``flags`` maps to the command-line flag that set it (``values``: the values given)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    flag = (flags or {}).get(str(first["loc"][0])) if first["loc"] else None
    if flag is not None:  # the value came from the command line, not from the file
        value = (values or {}).get(str(first["loc"][0]))
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        return f"{flag} {shown}: {error_message(err)}{more}"
    return f"{path}: {loc}: {first['msg']}{more}"


class _DuplicateKey(yaml.YAMLError):
    """A key written twice in one YAML mapping (lines are 1-based)."""

    def __init__(self, key: object, first_line: int, line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first_line, self.line = key, first_line, line


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping: PyYAML would keep the
    last value and silently drop the other setting. Keys brought in by a merge (``<<: *base``) may
    be overridden, as YAML intends; only keys written in the mapping itself are compared."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise _DuplicateKey(key, first + 1, key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike, *, flags: Mapping[str, str] | None = None,
                **overrides: object) -> ExperimentConfig:
    """Read and validate an experiment YAML file.

    ``overrides`` replace top-level keys (e.g. ``seeds=[0, 1]``) before validation; ``flags`` maps
    such a key to the command-line flag that gave it (``{"seeds": "--seeds"}``), so that an invalid
    value is reported as the flag's, not the file's.

    Raises:
        ConfigError: the file is missing, is not a regular file (a folder, device or pipe is
            refused before reading), is not UTF-8 YAML, is nested too deeply, writes a key twice in
            one mapping (the message gives the key and both lines), or does not match the schema
            (the message names the file and the first offending key, or the flag that set it).
    """
    path = Path(path)
    data = read_regular_file(path, error=ConfigError, what="config file")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_ConfigLoader)  # a SafeLoader: no arbitrary objects
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: line {e.line}: key {e.key!r} is written twice in one mapping (also at line "
                          f"{e.first_line}); YAML would keep only the last value: remove one") from None
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML: {where}{problem or str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to read (more than about {sys.getrecursionlimit()} "
                          "levels of lists or mappings)") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    given = {k: f for k, f in (flags or {}).items() if overrides.get(k) is not None}
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(path), e, given, overrides)) from None


def data_root(spec: DataSpec | None = None) -> Path:
    """The data folder: ``spec.root`` if set, else ``$LORASUM_DATA_ROOT``.

    Raises:
        ConfigError: neither is set, or the path does not exist or is not a folder (a file, say);
            the message says where the path came from.
    """
    from_spec = bool(spec and spec.root)
    root = spec.root if from_spec else os.environ.get("LORASUM_DATA_ROOT")
    if not root:
        raise ConfigError("no data folder: set LORASUM_DATA_ROOT (e.g. ../shared/data/raw) or data.root in the config")
    p = Path(root).expanduser()
    where = "data.root or --data-root" if from_spec else "LORASUM_DATA_ROOT"
    if os.path.lexists(p) and not p.is_dir():
        what = "a broken symlink" if p.is_symlink() and not p.exists() else "a file" if p.is_file() else "not a folder"
        raise ConfigError(f"{p}: is {what}; the data folder (from {where}) must be a folder holding the domains' "
                          "data (gsm8k/, medquad/, ...)")
    if not p.is_dir():
        raise ConfigError(f"{p}: data folder does not exist (from {where})")
    return p
