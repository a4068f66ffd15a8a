"""LoRA adapters as plain factors: the one place that knows PEFT's file layout.

A LoRA adapter (Hu et al. 2021, arXiv 2106.09685, eq. 3) changes a weight
``W`` (d_out × d_in, :class:`torch.nn.Linear` orientation) by

    ΔW = scaling · B · A,   A: (r, d_in),  B: (d_out, r),
    scaling = lora_alpha / r            (plain LoRA)
    scaling = lora_alpha / sqrt(r)      (rsLoRA, Kalajdzievski 2023, arXiv 2312.03732)

PEFT (https://github.com/huggingface/peft) saves an adapter as a folder with
``adapter_config.json`` and ``adapter_model.safetensors`` whose keys are
``base_model.model.<module path>.lora_A.weight`` (r, d_in) and ``...lora_B.weight``
(d_out, r). The stored shapes are the same for ``nn.Linear`` and for GPT-2's
``transformers.pytorch_utils.Conv1D`` (whose *weight* is stored transposed,
(d_in, d_out), and which PEFT flags with ``fan_in_fan_out=True``); only merging into
the base weight needs the transpose, see :func:`lorasum.compose.merge_into_base`.
Per-module ranks and alphas come from ``rank_pattern`` / ``alpha_pattern``, matched
as PEFT does (``peft.utils.other.get_pattern_key``: the first key ``k`` for which
``re.match(rf"(.*\\.)?({k})$", module_path)`` succeeds).

lorasum's own adapter folders also hold ``lorasum.json``, whose ``base_model`` entry records
the base model the adapter was trained on: ``name`` (the ``--model`` string as typed),
``source`` (what it resolved to: an absolute folder or ``.gguf`` path, or a hub id),
``arch`` and ``config_hash`` (:class:`lorasum.models.ModelInfo`). It is read into
:attr:`Adapter.base_record`; :func:`base_model_difference`, :func:`check_same_base_model`
and :func:`check_adapter_base` use it to refuse combining adapters of different base models
or applying an adapter to another model. ``base_model_name_or_path`` alone is a string as
typed (``"tinygpt2"`` means a different folder in another working directory), so it is
only the fallback when there is no ``lorasum.json``.

Only vanilla LoRA on 2-D weights is read: DoRA, LoRA biases, embedding/convolution
LoRA, ``modules_to_save`` tensors and other PEFT variants are refused, because their
effect is not a ΔW = scaling·B·A that can be summed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorasum.adapter_config import REFUSED_FIELDS as _REFUSED_FLAGS
from lorasum.adapter_config import validate_adapter_config
from lorasum.errors import AdapterError
from lorasum.storage import atomic_dir, atomic_write_json, pickle_allowed, read_safetensors_header

__all__ = ["LoraFactor", "Adapter", "BaseModelRecord", "load_adapter", "save_adapter", "check_adapter_matches_model",
           "peft_from_pretrained",
           "model_ref_key", "base_model_difference", "check_same_base_model", "check_adapter_base",
           "CONFIG_NAME", "WEIGHTS_NAME", "META_NAME"]

log = logging.getLogger("lorasum")

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
META_NAME = "lorasum.json"  # lorasum's metadata next to the PEFT files (lorasum.train.ADAPTER_META_FILE)
_PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.ckpt")
_PREFIX = "base_model.model."
_SUFFIX_A = ".lora_A.weight"
_SUFFIX_B = ".lora_B.weight"
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True, eq=False)
class LoraFactor:
    """One module's LoRA update ΔW = scaling · B · A (Hu et al. 2021, eq. 3).

    Attributes:
        A: (r, d_in) float32 down-projection (PEFT's ``lora_A.weight``).
        B: (d_out, r) float32 up-projection (PEFT's ``lora_B.weight``).
        scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA.

    Equality is identity (``eq=False``): comparing tensors elementwise is left to the caller.

    Raises:
        AdapterError: A or B is not 2-D, or A's rows differ from B's columns.
    """

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise AdapterError(f"LoRA factors must be 2-D, got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}")
        if self.A.shape[0] != self.B.shape[1]:
            raise AdapterError(
                f"LoRA rank mismatch: A has {self.A.shape[0]} rows but B has {self.B.shape[1]} columns")

    @property
    def rank(self) -> int:
        """The rank r (rows of A)."""
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of ΔW in nn.Linear orientation."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self) -> torch.Tensor:
        """Dense ΔW = scaling · B · A, shape (d_out, d_in), float32, nn.Linear orientation.

        For a Conv1D module the base weight is ΔW's transpose; this is never returned here.
        """
        return (self.scaling * (self.B.double() @ self.A.double())).float()


@dataclass(frozen=True)
class BaseModelRecord:
    """The base model an adapter was trained on, as lorasum recorded it (``lorasum.json``, ``base_model``).

    Attributes:
        name: the model string as the user typed it (e.g. ``"tinygpt2"``, ``"smollm2-135m"``).
        source: what ``name`` resolved to when the adapter was trained: an absolute folder or
            ``.gguf`` path, or a hub id; independent of the current folder.
        arch: ``model.config.model_type`` (e.g. ``"gpt2"``).
        config_hash: SHA-256 of the model config (:attr:`lorasum.models.ModelInfo.config_hash`).

    Any field may be None when not recorded.
    """

    name: str | None = None
    source: str | None = None
    arch: str | None = None
    config_hash: str | None = None

    def describe(self, full_hash: bool = False) -> str:
        """``source (model_type gpt2, config 0123456789ab)`` for messages (what is recorded of it); the
        whole config hash with ``full_hash`` (for two models whose first 12 characters agree)."""
        where = self.source or self.name or "an unnamed model"
        parts = ([f"model_type {self.arch}"] if self.arch else []) + (
            [f"config {self.config_hash if full_hash else self.config_hash[:12]}"] if self.config_hash else [])
        return f"{where} ({', '.join(parts)})" if parts else where

    def to_dict(self) -> dict:
        """JSON-ready dict, the ``base_model`` entry of ``lorasum.json``."""
        return {k: v for k, v in (("name", self.name), ("source", self.source), ("arch", self.arch),
                                  ("config_hash", self.config_hash)) if v is not None}


@dataclass
class Adapter:
    """A LoRA adapter as factors per module.

    Attributes:
        factors: module path in the base model (e.g. ``"transformer.h.0.attn.c_attn"``) → factor.
        base_model: ``base_model_name_or_path`` of adapter_config.json (None if unknown or empty).
        fan_in_fan_out: the config's flag (True for GPT-2's Conv1D modules). ΔW is always
            stored in nn.Linear orientation; the flag is kept to write it back and to refuse
            mixing adapters of different module kinds.
        config: the raw adapter_config.json (a copy of a source's config for composed adapters).
        path: the folder it was loaded from, if any.
        base_record: the base model recorded in the folder's ``lorasum.json`` (None when the
            folder has none, as for adapters not written by lorasum); for composed adapters,
            that of their sources (:func:`lorasum.compose.compose_sum`).
    """

    factors: dict[str, LoraFactor]
    base_model: str | None = None
    fan_in_fan_out: bool = False
    config: dict = field(default_factory=dict)
    path: Path | None = None
    base_record: BaseModelRecord | None = None

    @property
    def modules(self) -> list[str]:
        """Sorted module paths."""
        return sorted(self.factors)


# -- loading ---------------------------------------------------------------------------------------

_MAX_CONFIG_BYTES = 16 << 20  # an adapter_config.json is a few KB
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors dtype names lorasum reads as factors
_Spec = tuple[tuple[int, ...], bool]  # (shape, is floating point): what the header says about a tensor


def _pattern_value(patterns: dict, module: str, default: Any) -> Any:
    """Mirror ``peft.utils.other.get_pattern_key``: first key k with re.match(rf"(.*\\.)?({k})$", module)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _need_file(path: Path, missing: str = "missing") -> Path:
    """``path`` if it is a regular file; else an AdapterError saying what is there instead."""
    if path.is_file():
        return path
    if path.is_symlink() and not path.exists():
        raise AdapterError(f"{path}: broken symlink or symlink loop")
    if path.is_dir():
        raise AdapterError(f"{path}: expected a file, found a folder")
    if path.exists():
        raise AdapterError(f"{path}: not a regular file")
    raise AdapterError(f"{path}: {missing}")


def _read_small_json(path: Path, what: str):
    """Parse the small JSON file ``path`` (at most ``_MAX_CONFIG_BYTES``; ``what`` names it in messages).

    Raises:
        AdapterError: too large, unreadable, invalid UTF-8, malformed or too deeply nested JSON.
    """
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise AdapterError(f"{path}: {path.stat().st_size} bytes; too large for {what}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: invalid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except RecursionError:
        raise AdapterError(f"{path}: JSON nested too deeply") from None


def _read_config(folder: Path) -> dict:
    missing = "missing; not a PEFT adapter folder"
    if (folder / "dense_delta.safetensors").is_file() and not os.path.lexists(folder / CONFIG_NAME):
        missing += (" (it holds dense_delta.safetensors, the dense ΔW that compose writes for ties, dare and "
                    "magnitude_prune: compose with --merge-into-base and pass that folder as --model)")
    cfg_path = _need_file(folder / CONFIG_NAME, missing)
    return validate_adapter_config(_read_small_json(cfg_path, "an adapter config"), cfg_path)


def _read_meta(folder: Path) -> BaseModelRecord | None:
    """The ``base_model`` entry of ``folder/lorasum.json``; None when there is no such file or entry.

    Raises:
        AdapterError: the file is unreadable, not JSON, too large, or its ``base_model`` entry is
            not an object of strings (a damaged record would defeat the base-model checks).
    """
    meta_path = folder / META_NAME
    if not os.path.lexists(meta_path):
        return None
    meta_path = _need_file(meta_path)
    meta = _read_small_json(meta_path, "lorasum metadata")
    if not isinstance(meta, dict):
        raise AdapterError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    base = meta.get("base_model")
    if base is None:
        return None
    if not isinstance(base, dict):
        raise AdapterError(f"{meta_path}: base_model must be an object, got {base!r}")
    fields = {}
    for key in ("name", "source", "arch", "config_hash"):
        value = base.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):  # blank: no model either
            raise AdapterError(f"{meta_path}: base_model.{key} must be a non-empty string, got {value!r}; "
                               "a malformed base model record")
        fields[key] = value
    record = BaseModelRecord(**fields)
    return record if any(fields.values()) else None


def _memory_bytes() -> int:
    """Physical memory of this machine (bytes); a bound on what an adapter may claim."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def _check_header(specs: dict[str, _Spec], weights: Path) -> dict[str, dict[str, _Spec]]:
    """Validate names, ranks, dimensions and dtypes from the header alone; group by module.

    Runs before any tensor data is read, so a file claiming huge tensors allocates nothing.
    """
    by_module = _split_keys(specs, weights)
    if not by_module:
        raise AdapterError(f"{weights}: holds no LoRA factors")
    need = sum(4 * math.prod(shape) for shape, _ in specs.values())  # as float32
    if need > _memory_bytes():
        raise AdapterError(f"{weights}: tensors claim {need / 1e9:.3g} GB as float32, more than this machine's "
                           f"memory ({_memory_bytes() / 1e9:.3g} GB); refusing to load")
    for module, parts in by_module.items():
        if set(parts) != {"A", "B"}:
            missing = "lora_B" if "A" in parts else "lora_A"
            raise AdapterError(f"{weights}: module {module} has no {missing}.weight")
        (a_shape, a_float), (b_shape, b_float) = parts["A"], parts["B"]
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise AdapterError(f"{weights}: module {module} has {len(a_shape)}-D lora_A / {len(b_shape)}-D lora_B; "
                               "only Linear/Conv1D LoRA (2-D factors) is supported")
        if not (a_float and b_float):
            raise AdapterError(f"{weights}: module {module} has non-float LoRA factors; expected float16, "
                               "bfloat16, float32 or float64")
        if a_shape[0] != b_shape[1]:
            raise AdapterError(f"{weights}: module {module}: lora_A has {a_shape[0]} rows (rank) but lora_B has "
                               f"{b_shape[1]} columns")
        if 0 in a_shape or 0 in b_shape:
            raise AdapterError(f"{weights}: module {module} has an empty factor (A {a_shape}, B {b_shape})")
    return by_module


def _read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    """Check the header (read alone, nothing mapped), then load the tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        header = read_safetensors_header(weights)
        _check_header({k: (shape, dtype in _FLOAT_DTYPES) for k, (shape, dtype) in header.items()}, weights)
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        msg = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AdapterError(f"{weights}: cannot read safetensors ({msg})") from exc


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with ``weights_only=True`` (PyTorch's restricted unpickler), only when allowed."""
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise AdapterError(f"{path}: cannot read pickle weights ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                           ) from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AdapterError(f"{path}: expected a dict of tensors")
    _check_header({k: (tuple(v.shape), v.is_floating_point()) for k, v in obj.items()}, path)
    return obj


def _read_tensors(folder: Path, allow_pickle: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """(weights file, tensors): adapter_model.safetensors, or a pickle file when allowed."""
    weights = folder / WEIGHTS_NAME
    if os.path.lexists(weights):
        return weights, _read_safetensors(_need_file(weights))
    pickles = [folder / n for n in _PICKLE_NAMES if (folder / n).exists()]
    if not pickles:
        raise AdapterError(f"{weights}: missing")
    if not allow_pickle:
        raise AdapterError(f"{pickles[0]}: pickle weight files are refused (loading them can run code); "
                           f"re-save the adapter as {WEIGHTS_NAME}, or pass --allow-pickle if you trust it")
    return pickles[0], _read_pickle(_need_file(pickles[0]))


def _split_keys(tensors: dict[str, Any], weights: Path) -> dict[str, dict[str, Any]]:
    """Group ``base_model.model.<module>.lora_{A,B}.weight`` entries by module path; refuse anything else,
    factors without PEFT's prefix among them (PEFT would not load them)."""
    by_module: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        part = "A" if name.endswith(_SUFFIX_A) else "B" if name.endswith(_SUFFIX_B) else None
        if part is not None and key == name:
            raise AdapterError(f"{weights}: tensor {key} lacks PEFT's {_PREFIX} prefix (PEFT would not load it: the "
                               f"adapter would score as the base model); name it {_PREFIX}{key}")
        if part is not None:
            by_module.setdefault(name[: -len(_SUFFIX_A)], {})[part] = tensor  # both suffixes have the same length
        elif "lora_magnitude_vector" in name:
            raise AdapterError(f"{weights}: tensor {key} is a DoRA magnitude vector; DoRA adapters are refused")
        elif "lora_embedding_" in name:
            raise AdapterError(f"{weights}: tensor {key} is an embedding LoRA; only Linear/Conv1D LoRA is supported")
        else:
            raise AdapterError(f"{weights}: tensor {key} is not a LoRA factor (modules_to_save, bias or "
                               "trainable tokens?); only plain LoRA adapters are supported")
    return by_module


def _check_targets(cfg: dict, modules: list[str], where: Path) -> None:
    """Refuse a config under which PEFT would not adapt every module of the weights: PEFT would not load those
    factors (``NoMatchingPeftModuleError`` or factors silently left out), so the file pair means one thing to
    PEFT and another to a reader of the files. The rule is PEFT's own
    (``peft.tuners.tuners_utils.check_target_module_exists``: ``target_modules`` a regular expression matched
    against the whole name, or names equal to or ending a module's; ``exclude_modules``; ``layers_to_transform``
    with ``layers_pattern``; mirrored in :func:`_peft_adapts`, tested against PEFT's function, so that reading an
    adapter does not import PEFT). Absent, empty or ``"all-linear"`` target modules: nothing to check (they need
    the model)."""
    targets = cfg.get("target_modules")
    if targets in (None, "", [], "all-linear"):
        return
    fields = {}
    for name in ("target_modules", "exclude_modules"):
        value = cfg.get(name)
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as e:
                raise AdapterError(f"{where}: {name} {value!r} is not a regular expression ({e})") from None
        elif value is not None and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise AdapterError(f"{where}: {name} must be a list of module names or a regular expression, "
                               f"got {value!r}")
        fields[name] = value
    layers, pattern = cfg.get("layers_to_transform"), cfg.get("layers_pattern")
    if layers is not None and not (_is_index(layers) or (isinstance(layers, list) and all(map(_is_index, layers)))):
        raise AdapterError(f"{where}: layers_to_transform must be a layer index or a list of them, got {layers!r}")
    if pattern is not None and not (isinstance(pattern, str) or (isinstance(pattern, list)
                                                                  and all(isinstance(p, str) for p in pattern))):
        raise AdapterError(f"{where}: layers_pattern must be a string or a list of strings, got {pattern!r}")
    missing = [m for m in modules if not _peft_adapts(m, fields["target_modules"], fields["exclude_modules"], layers,
                                                      pattern)]
    if missing:
        given = [f"{k} {cfg[k]!r}" for k in ("target_modules", "exclude_modules", "layers_to_transform",
                                              "layers_pattern") if cfg.get(k) not in (None, [], "")]
        verb = "does not name" if len(given) == 1 else "leaves out"
        raise AdapterError(f"{where}: {', '.join(given)} {verb} module {missing[0]} of the weights ({len(missing)} of "
                           f"{len(modules)} modules); PEFT would not load these factors")


def _peft_adapts(module: str, targets: str | list[str], exclude: str | list[str] | None,
                 layers: int | list[int] | None, pattern: str | list[str] | None) -> bool:
    """Whether PEFT (0.21+, ``check_target_module_exists``) puts a LoRA layer on ``module``: not excluded (a
    regular expression matching the whole name, or a name equal to or ending it); then a regular expression
    ``targets`` matching the whole name, or a name of ``targets`` equal to it, or ending it, and then, with
    ``layers_to_transform``, the first numbered segment (after ``layers_pattern`` when given) among ``layers``."""
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, module):
                return False
        elif module in exclude or any(module.endswith(f".{e}") for e in exclude):
            return False
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    if module in targets:
        return True
    if not any(module.endswith(f".{t}") for t in targets):
        return False
    if layers is None or layers == []:
        return True
    if not pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        match = None
        for p in [pattern] if isinstance(pattern, str) else pattern:
            match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _make_factor(module: str, parts: dict[str, torch.Tensor], cfg: dict, weights: Path) -> LoraFactor:
    """One module's factor; shapes and dtypes were checked by :func:`_check_header`."""
    A, B = parts["A"].float(), parts["B"].float()
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        raise AdapterError(f"{weights}: module {module} holds NaN or Inf values")
    r = int(_pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"]))
    alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"]))
    if r != A.shape[0]:
        raise AdapterError(f"{weights}: module {module} has rank {A.shape[0]} but the config gives r={r}")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    if not abs(scaling) < _FLOAT32_MAX:
        raise AdapterError(f"{weights.parent / CONFIG_NAME}: module {module}: lora_alpha {alpha!r} gives scaling "
                           f"{scaling:.3g}, beyond float32's range (ΔW would be inf)")
    return LoraFactor(A=A.contiguous(), B=B.contiguous(), scaling=scaling)


def load_adapter(path: str | Path, *, allow_pickle: bool | None = None) -> Adapter:
    """Read a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    Each factor's scaling follows PEFT (``LoraLayer.update_layer``): lora_alpha / r, or
    lora_alpha / sqrt(r) with ``use_rslora``, with r and lora_alpha taken per module from
    ``rank_pattern`` / ``alpha_pattern`` when a pattern matches. The config is validated
    first (:func:`lorasum.adapter_config.validate_adapter_config`), then the safetensors
    header (names, 2-D float factors, A's rows = B's columns, total size below this
    machine's memory), and only then is tensor data read. The base model recorded in the
    folder's ``lorasum.json`` (if any) becomes :attr:`Adapter.base_record`.

    Args:
        path: the adapter folder.
        allow_pickle: read ``adapter_model.bin``/``.pt``/``.pth`` (torch.load with
            ``weights_only=True``) when there is no safetensors file; None: as set by
            :func:`lorasum.storage.allow_pickle` (the CLI's ``--allow-pickle``), off by default.

    Returns:
        The :class:`Adapter`, factors in float32 on the CPU.

    Raises:
        AdapterError: the folder or a file is missing, unreadable, a symlink loop, or a
            folder where a file belongs; only a pickle file is present (and not allowed);
            the config is invalid (see ``validate_adapter_config``); a tensor is not a 2-D
            float LoRA factor; the config's ``target_modules`` does not name every module of the
            weights (PEFT would not load those factors); A/B ranks disagree with each other or with the config; the
            header claims more memory than the machine has; a value is NaN/Inf; the file
            holds no LoRA factors; ``lorasum.json`` exists but is unreadable or its
            ``base_model`` entry is malformed.
    """
    folder = Path(path)
    if not folder.is_dir():
        if folder.is_symlink() and not folder.exists():
            raise AdapterError(f"{folder}: broken symlink or symlink loop")
        what = "is a file, not an adapter folder" if folder.exists() else "adapter folder not found"
        raise AdapterError(f"{folder}: {what}")
    cfg = _read_config(folder)
    record = _read_meta(folder)  # before the tensors: a damaged record fails fast
    weights, tensors = _read_tensors(folder, pickle_allowed(allow_pickle))
    by_module = _split_keys(tensors, weights)
    _check_targets(cfg, sorted(by_module), folder / "adapter_config.json")
    factors = {m: _make_factor(m, parts, cfg, weights) for m, parts in sorted(by_module.items())}
    base = cfg.get("base_model_name_or_path")
    return Adapter(factors=factors, base_model=base if base and base.strip() else None,
                   fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)), config=cfg, path=folder,
                   base_record=record)


def check_adapter_matches_model(adapter: Adapter, model: torch.nn.Module) -> None:
    """Refuse an adapter whose modules or shapes do not fit ``model``, before any math.

    Every module path of ``adapter`` must name an ``nn.Linear`` (weight (d_out, d_in)) or a
    GPT-2 ``Conv1D`` (weight (d_in, d_out)) of ``model`` (a PeftModel is unwrapped to its
    base model, PEFT-wrapped layers to their base layer) whose weight matches ΔW's (d_out, d_in).

    Raises:
        AdapterError: a module is missing from the model, is another kind of layer, or its
            weight shape differs (message names the adapter folder, the module and both shapes).
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        Conv1D = ()  # noqa: N806
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    label = _label(adapter)
    for path, f in sorted(adapter.factors.items()):
        try:
            module = base.get_submodule(path)
        except AttributeError:
            raise AdapterError(f"{label}: module {path} is not in the base model ({type(base).__name__}); "
                               "was the adapter trained on another model?") from None
        if hasattr(module, "get_base_layer"):  # a layer PEFT already wrapped
            module = module.get_base_layer()
        is_conv1d = bool(Conv1D) and isinstance(module, Conv1D)
        if not (is_conv1d or isinstance(module, torch.nn.Linear)):
            raise AdapterError(f"{label}: module {path} is a {type(module).__name__}, not nn.Linear or Conv1D")
        d_out, d_in = f.shape
        got = tuple(module.weight.shape)
        want = (d_in, d_out) if is_conv1d else (d_out, d_in)
        if got != want:
            raise AdapterError(f"{label}: module {path}: ΔW is {d_out}×{d_in} but the base weight is "
                               f"{got[0]}×{got[1]}{' (Conv1D, stored transposed)' if is_conv1d else ''}; "
                               "the adapter was trained on another model")


def peft_from_pretrained(model: torch.nn.Module, adapter: Adapter) -> torch.nn.Module:
    """``peft.PeftModel.from_pretrained(model, adapter.path)``, checked against lorasum's own reading of the
    folder: PEFT must hold, for every module and only those, the factors and scaling that
    :func:`load_adapter` read (``adapter``, from the same folder).

    PEFT loads silently what it can: factors whose keys lack the ``base_model.model.`` prefix, or lie outside
    ``layers_to_transform`` or inside ``exclude_modules``, are dropped (the model then scores as the base model,
    or with some modules missing), and a targeted module with no factors in the file gets PEFT's own
    initialisation (random with ``init_lora_weights: false``: other numbers at each run; with PEFT's default,
    B = 0, it changes nothing and is let pass). Each of the others is an error here.

    Returns:
        the ``PeftModel`` (LoRA layers injected into ``model``).

    Raises:
        AdapterError: PEFT finds no module to adapt, leaves out or adds a module, or holds other values than
            the files (the message names the folder and the first module concerned).
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    label = _label(adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter.path))
    except ValueError as e:  # peft's NoMatchingPeftModuleError is a ValueError
        if "target modules" not in str(e).lower() and type(e).__name__ != "NoMatchingPeftModuleError":
            raise
        first = " ".join(str(e).split())[:200]
        raise AdapterError(f"{label}: PEFT finds no module of the base model to adapt ({first}); check "
                           "target_modules, exclude_modules and layers_to_transform in adapter_config.json") from None
    adapter_init = getattr(peft_model.peft_config.get("default"), "init_lora_weights", None)
    layers = {name.removeprefix(_PREFIX): m for name, m in peft_model.named_modules()
              if isinstance(m, LoraLayer) and "default" in getattr(m, "lora_A", {})}
    problem = None
    # a targeted module without factors in the file keeps PEFT's initialisation: harmless when B = 0 (PEFT's
    # default), a random ΔW with init_lora_weights false
    extra = sorted(m for m in set(layers) - set(adapter.factors) if layers[m].lora_B["default"].weight.any())
    dropped = sorted(set(adapter.factors) - set(layers))
    if extra:
        problem = (f"target_modules names module {extra[0]}, which has no factors in the weights file, so PEFT "
                   f"gives it a random ΔW of its own initialisation ({len(extra)} such module(s); "
                   f"init_lora_weights: {adapter_init!r})")
    elif dropped:
        problem = (f"PEFT does not load the factors of module {dropped[0]} ({len(dropped)} of "
                   f"{len(adapter.factors)} modules: keys without the base_model.model. prefix, exclude_modules or "
                   "layers_to_transform?)")
    else:
        for module, f in sorted(adapter.factors.items()):
            layer = layers[module]
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if not (torch.equal(A.detach().cpu(), f.A.to(A.dtype)) and torch.equal(B.detach().cpu(), f.B.to(B.dtype))
                    and math.isclose(float(layer.scaling["default"]), f.scaling, rel_tol=1e-6)):
                problem = (f"PEFT holds other factors or another scaling for module {module} than the weights file "
                           "and adapter_config.json give (keys given twice, with and without the base_model.model. "
                           "prefix?)")
                break
    if problem:
        peft_model.unload()  # the caller's model back as it was
        raise AdapterError(f"{label}: {problem}")
    return peft_model


# -- which base model ------------------------------------------------------------------------------

def _label(adapter: Adapter, i: int | None = None) -> str:
    if adapter.path is not None:
        return str(adapter.path)
    return "adapter" if i is None else f"adapter #{i}"


def model_ref_key(ref: str) -> str:
    """A comparable form of a model name or path.

    The real path of an existing folder or file (so ``./tinygpt2``, ``tinygpt2`` and
    ``/abs/tinygpt2`` of the same folder agree, relative names being taken from the current
    folder), else the string after ``~`` expansion and ``os.path.normpath`` (a hub id such as
    ``gpt2`` or ``org/model`` stays as it is). Strings no path can be (an embedded NUL byte, a
    name too long for the file system, an unknown ``~user``) are compared as strings; this
    never raises for a ``str``.
    """
    try:
        path = os.path.expanduser(ref)
    except ValueError:  # "~user" with a NUL byte in the user name
        path = ref
    try:
        if os.path.exists(path):
            return os.path.realpath(path)
    except (OSError, ValueError):  # a name too long for a path, a NUL byte and the like
        pass
    return os.path.normpath(path) if path else path


def _describe_base(adapter: Adapter, full_hash: bool = False) -> str:
    if adapter.base_record is not None:
        return adapter.base_record.describe(full_hash)
    return repr(adapter.base_model) if adapter.base_model is not None else "an unknown model"


def _two_sides(describe) -> tuple[str, str]:
    """``describe(full_hash)`` → the descriptions of two models for one message, with whole config hashes
    when the short forms would read the same."""
    first, second = describe(False)
    return (first, second) if first != second else describe(True)


def _typed_names(adapter: Adapter) -> set[str]:
    """Comparable keys of the model strings an adapter carries (recorded source and name, and
    ``base_model_name_or_path``), for comparison with an adapter that has no record."""
    rec = adapter.base_record
    out: set[str] = set()
    for ref in (rec.source if rec else None, rec.name if rec else None, adapter.base_model):
        if ref:
            out |= {model_ref_key(ref), os.path.normpath(ref)}
    return out


def base_model_difference(x: Adapter, y: Adapter) -> tuple[bool, str | None]:
    """Whether two adapters were trained on the same base model, and a note when that is not certain.

    With ``lorasum.json`` on both (:attr:`Adapter.base_record`): different config hashes or
    architectures mean different models; the same recorded source (compared with
    :func:`model_ref_key`) means the same model; different sources with the same config hash are
    taken as the same model with a note (a copy of the model elsewhere, or a hub id and a local
    download: lorasum cannot tell whether the weights are the same). Otherwise the model strings
    are compared after :func:`model_ref_key` (a record's name and source both count); an adapter
    that names no base model matches any.

    Returns:
        (same, note): ``same`` False when the models differ; ``note`` a one-line caveat or None.
    """
    rx, ry = x.base_record, y.base_record
    if rx is not None and ry is not None:
        if rx.config_hash and ry.config_hash and rx.config_hash != ry.config_hash:
            return False, None
        if rx.arch and ry.arch and rx.arch != ry.arch:
            return False, None
        if rx.source and ry.source:
            if model_ref_key(rx.source) == model_ref_key(ry.source):
                return True, None
            if rx.config_hash and ry.config_hash:
                return True, (f"{_label(x)} and {_label(y)} record different base model sources ({rx.source}, "
                              f"{ry.source}) with the same config; taken as the same model (weights not compared)")
            return False, None
        if rx.config_hash and ry.config_hash:
            return True, None
    kx, ky = _typed_names(x), _typed_names(y)
    if not kx or not ky:
        return True, None
    return bool(kx & ky), None


def check_same_base_model(adapters: list[Adapter]) -> None:
    """Refuse adapters trained on different base models (see :func:`base_model_difference`);
    log a warning for each pair of recorded sources that is taken as the same model with a
    caveat (once per pair of sources, naming the first two adapters that show it).

    Raises:
        AdapterError: two adapters' base models differ; the message names both adapters and
            their recorded base models (source and config hash, or ``base_model_name_or_path``).
    """
    notes: dict[frozenset, str] = {}
    for i, a in enumerate(adapters):
        for j in range(i):
            same, note = base_model_difference(adapters[j], a)
            if not same:
                left, right = _two_sides(lambda full, x=adapters[j], y=a: (_describe_base(x, full),
                                                                           _describe_base(y, full)))
                raise AdapterError(f"adapters were trained on different base models: {_label(adapters[j], j)} on "
                                   f"{left}, {_label(a, i)} on {right}")
            if note:
                key = frozenset(model_ref_key(r.source) for r in (adapters[j].base_record, a.base_record)
                                if r is not None and r.source)
                notes.setdefault(key, note)
    for note in notes.values():
        log.warning("warning: %s", note)


def check_adapter_base(adapter: Adapter, info: Any) -> str | None:
    """Check that ``adapter`` belongs to the loaded base model described by ``info``.

    ``info`` is the :class:`lorasum.models.ModelInfo` of the model the adapter is about to be
    applied to or merged into (its ``name``, ``source``, ``arch`` and ``config_hash`` are read).
    Module paths and shapes are checked separately (:func:`check_adapter_matches_model`).

    Returns:
        None when the adapter's recorded base model is that model, or when the adapter names
        no base model at all; else a one-line warning for the caller to show: the recorded
        source differs but the config hash is the same (a copy of the model, or a hub id and
        its local download: the weights cannot be compared), the recorded source differs and
        no config hash is recorded, or there is neither a recorded source nor a config hash
        (no ``lorasum.json``, or one with only a name) and the model name given
        (``base_model_name_or_path`` or the record's ``name``, compared with
        :func:`model_ref_key`) is another (only the module shapes can be checked then).

    Raises:
        AdapterError: ``lorasum.json`` records another config hash or architecture than
            ``info``'s (the message names the adapter folder and both models).
    """
    rec, label = adapter.base_record, _label(adapter)
    if rec is not None and ((rec.config_hash and rec.config_hash != info.config_hash)
                            or (rec.arch and rec.arch != info.arch)):
        loaded = BaseModelRecord(source=info.source, arch=info.arch, config_hash=info.config_hash or None)
        theirs, here = _two_sides(lambda full: (rec.describe(full), loaded.describe(full)))
        raise AdapterError(f"{label}: trained on base model {theirs}, not on {here}: a different model "
                           f"(per {META_NAME}); use the adapter's own base model")
    if rec is not None and rec.source:
        if model_ref_key(rec.source) == model_ref_key(info.source):
            return None
        if rec.config_hash:
            return (f"{label}: trained on {rec.source}, applied to {info.source}: same model config, "
                    "but lorasum cannot tell whether the weights are the same")
        return (f"{label}: trained on {rec.source}, applied to {info.source}; {META_NAME} records no config "
                "hash to check it (only module shapes were checked)")
    if rec is not None and rec.config_hash:
        return None
    names = _typed_names(adapter)
    if not names or names & {model_ref_key(info.source), model_ref_key(info.name), os.path.normpath(info.name)}:
        return None
    typed = adapter.base_model if adapter.base_model else rec.name if rec is not None else None
    why = f"it has no {META_NAME}" if rec is None else f"its {META_NAME} records no source or config hash"
    return (f"{label}: records base model {typed!r}, applied to {info.source}; {why} to check the model with "
            "(only module shapes were checked)")


# -- saving ----------------------------------------------------------------------------------------

# Fields of the source config that would change which modules PEFT wraps or how; reset on save.
_RESET_FIELDS = {
    "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None, "modules_to_save": None,
    "trainable_token_indices": None, "init_lora_weights": True, "lora_dropout": 0.0, "bias": "none",
    "use_rslora": False, "use_dora": False, "lora_bias": False, "target_parameters": None,
    "loftq_config": {}, "eva_config": None, "corda_config": None, "megatron_config": None,
    "ensure_weight_tying": False, "inference_mode": True,
}


def _config_for(adapter: Adapter, base_model: str | None) -> dict:
    """A LoRA config under which PEFT's scaling is exactly 1 for every module (lora_alpha = r)."""
    ranks = {m: f.rank for m, f in adapter.factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(m): k for m, k in sorted(ranks.items()) if k != r}
    cfg = {k: v for k, v in adapter.config.items() if k not in _REFUSED_FLAGS}
    cfg.update(_RESET_FIELDS)
    cfg.update({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        "fan_in_fan_out": bool(adapter.fan_in_fan_out),
        "base_model_name_or_path": base_model if base_model is not None else adapter.base_model,
    })
    cfg.setdefault("task_type", "CAUSAL_LM")
    return cfg


def save_adapter(adapter: Adapter, path: str | Path, *, overwrite: bool = False,
                 base_model: str | None = None, extra_json: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write ``adapter`` as a PEFT-loadable LoRA folder, atomically.

    Each factor's scaling is folded into B (B' = scaling · B) and the config sets
    lora_alpha = r per module (``rank_pattern``/``alpha_pattern`` with escaped full
    module paths for ranks that differ from the most common one, which becomes ``r``),
    ``use_rslora: false``, so PEFT's scaling is exactly 1 and load_adapter(save_adapter(x))
    gives the same ΔW up to float32 rounding of scaling · B. ``target_modules`` is the
    sorted list of the last path components present (e.g. ``["c_attn", "c_proj"]``);
    ``init_lora_weights`` is True so that any extra module PEFT wraps by suffix has B = 0
    and ΔW = 0.

    Args:
        adapter: the adapter to write.
        path: target folder.
        overwrite: replace an existing folder.
        base_model: ``base_model_name_or_path`` to record (default: ``adapter.base_model``).
        extra_json: file name → JSON-ready object, written into the folder in the same
            atomic step (e.g. ``{"svd_report.json": ...}``).
        meta: written as ``lorasum.json`` (:data:`META_NAME`) with its ``base_model`` entry set
            to ``adapter.base_record`` (:meth:`BaseModelRecord.to_dict`) unless ``meta`` has its
            own, so that :func:`load_adapter` reads the record back and the base-model checks
            work on the saved folder. None (default): ``lorasum.json`` holds the record alone
            when the adapter has one (a sum of adapters read from lorasum folders keeps it), and
            is not written otherwise.

    Returns:
        The folder path.

    Raises:
        AdapterError: the adapter has no factors or a factor holds NaN/Inf.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: ``meta`` is given and ``extra_json`` also names ``lorasum.json`` (a
            programming error).
    """
    from safetensors.torch import save_file

    if not adapter.factors:
        raise AdapterError(f"{path}: refusing to save an adapter with no LoRA factors")
    files = dict(extra_json or {})
    if meta is None and adapter.base_record is not None:
        meta = {}
    if meta is not None:
        if META_NAME in files:
            raise ValueError(f"save_adapter: {META_NAME} given both as meta and in extra_json")
        record = adapter.base_record.to_dict() if adapter.base_record is not None else None
        files[META_NAME] = ({"base_model": record} if record else {}) | dict(meta)
    tensors: dict[str, torch.Tensor] = {}
    for module, f in sorted(adapter.factors.items()):
        B = (f.scaling * f.B.double()).float()
        if not (torch.isfinite(f.A).all() and torch.isfinite(B).all()):
            raise AdapterError(f"{path}: module {module} holds NaN or Inf values")
        tensors[f"{_PREFIX}{module}{_SUFFIX_A}"] = f.A.detach().float().cpu().contiguous()
        tensors[f"{_PREFIX}{module}{_SUFFIX_B}"] = B.detach().cpu().contiguous()
    cfg = _config_for(adapter, base_model)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        atomic_write_json(tmp / CONFIG_NAME, cfg)
        for name, obj in files.items():
            atomic_write_json(tmp / name, obj)
    return Path(path)
