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

Only vanilla LoRA on 2-D weights is read: DoRA, LoRA biases, embedding/convolution
LoRA, ``modules_to_save`` tensors and other PEFT variants are refused, because their
effect is not a ΔW = scaling·B·A that can be summed.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorasum.errors import AdapterError
from lorasum.storage import atomic_dir, atomic_write_json

__all__ = ["LoraFactor", "Adapter", "load_adapter", "save_adapter", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_PREFIX = "base_model.model."
_SUFFIX_A = ".lora_A.weight"
_SUFFIX_B = ".lora_B.weight"

# Config fields that switch on a LoRA variant whose effect is not scaling·B·A on a weight.
_REFUSED_FLAGS = {
    "use_dora": "DoRA (use_dora) adds a learned magnitude vector",
    "lora_bias": "lora_bias adds a trained bias to lora_B",
    "use_qalora": "QA-LoRA (use_qalora) pools the input",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) applies only after invocation tokens",
    "layer_replication": "layer_replication duplicates base layers",
    "target_parameters": "target_parameters wraps raw parameters, not modules",
    "use_bdlora": "BD-LoRA (use_bdlora) uses block-diagonal factors",
    "velora_config": "VeLoRA (velora_config) changes the forward pass",
    "monteclora_config": "MonteCLoRA (monteclora_config) samples the factors",
    "arrow_config": "Arrow routing (arrow_config) mixes adapters per token",
    "kasa_config": "KaSA (kasa_config) adds singular values",
}


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


@dataclass
class Adapter:
    """A LoRA adapter as factors per module.

    Attributes:
        factors: module path in the base model (e.g. ``"transformer.h.0.attn.c_attn"``) → factor.
        base_model: ``base_model_name_or_path`` of adapter_config.json (None if unknown).
        fan_in_fan_out: the config's flag (True for GPT-2's Conv1D modules). ΔW is always
            stored in nn.Linear orientation; the flag is kept to write it back and to refuse
            mixing adapters of different module kinds.
        config: the raw adapter_config.json (a copy of a source's config for composed adapters).
        path: the folder it was loaded from, if any.
    """

    factors: dict[str, LoraFactor]
    base_model: str | None = None
    fan_in_fan_out: bool = False
    config: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def modules(self) -> list[str]:
        """Sorted module paths."""
        return sorted(self.factors)


# -- loading ---------------------------------------------------------------------------------------


def _pattern_value(patterns: dict, module: str, default: Any) -> Any:
    """Mirror ``peft.utils.other.get_pattern_key``: first key k with re.match(rf"(.*\\.)?({k})$", module)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _read_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{cfg_path}: missing; not a PEFT adapter folder")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{cfg_path}: cannot read JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_path}: expected a JSON object")
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}; only LORA adapters are supported")
    for key, why in _REFUSED_FLAGS.items():
        if cfg.get(key):
            raise AdapterError(f"{cfg_path}: {key} is set; {why}, which is not a plain LoRA ΔW (refused)")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise AdapterError(f"{cfg_path}: r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise AdapterError(f"{cfg_path}: lora_alpha must be a finite number, got {alpha!r}")
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(name) or {}, dict):
            raise AdapterError(f"{cfg_path}: {name} must be an object")
    return cfg


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [n for n in _PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise AdapterError(f"{folder / pickles[0]}: pickle weight files are refused (they can run code); "
                               f"re-save the adapter as {WEIGHTS_NAME}")
        raise AdapterError(f"{weights}: missing")
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights}: cannot read safetensors ({exc})") from exc


def _split_keys(tensors: dict[str, torch.Tensor], weights: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Group ``<prefix><module>.lora_{A,B}.weight`` tensors by module path; refuse anything else."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        if name.endswith(_SUFFIX_A):
            by_module.setdefault(name[: -len(_SUFFIX_A)], {})["A"] = tensor
        elif name.endswith(_SUFFIX_B):
            by_module.setdefault(name[: -len(_SUFFIX_B)], {})["B"] = tensor
        elif "lora_magnitude_vector" in name:
            raise AdapterError(f"{weights}: tensor {key} is a DoRA magnitude vector; DoRA adapters are refused")
        elif "lora_embedding_" in name:
            raise AdapterError(f"{weights}: tensor {key} is an embedding LoRA; only Linear/Conv1D LoRA is supported")
        else:
            raise AdapterError(f"{weights}: tensor {key} is not a LoRA factor (modules_to_save, bias or "
                               "trainable tokens?); only plain LoRA adapters are supported")
    return by_module


def _make_factor(module: str, parts: dict[str, torch.Tensor], cfg: dict, weights: Path) -> LoraFactor:
    if set(parts) != {"A", "B"}:
        missing = "lora_B" if "A" in parts else "lora_A"
        raise AdapterError(f"{weights}: module {module} has no {missing}.weight")
    A, B = parts["A"], parts["B"]
    if A.dim() != 2 or B.dim() != 2:
        raise AdapterError(f"{weights}: module {module} has {A.dim()}-D lora_A / {B.dim()}-D lora_B; "
                           "only Linear/Conv1D LoRA (2-D factors) is supported")
    if not (A.is_floating_point() and B.is_floating_point()):
        raise AdapterError(f"{weights}: module {module} has non-float factors ({A.dtype}, {B.dtype})")
    A, B = A.float(), B.float()
    if A.shape[0] != B.shape[1]:
        raise AdapterError(f"{weights}: module {module}: lora_A has {A.shape[0]} rows (rank) but lora_B has "
                           f"{B.shape[1]} columns")
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        raise AdapterError(f"{weights}: module {module} holds NaN or Inf values")
    r = int(_pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"]))
    alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"]))
    if r != A.shape[0]:
        raise AdapterError(f"{weights}: module {module} has rank {A.shape[0]} but the config gives r={r}")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return LoraFactor(A=A.contiguous(), B=B.contiguous(), scaling=scaling)


def load_adapter(path: str | Path) -> Adapter:
    """Read a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    Each factor's scaling follows PEFT (``LoraLayer.update_layer``): lora_alpha / r, or
    lora_alpha / sqrt(r) with ``use_rslora``, with r and lora_alpha taken per module from
    ``rank_pattern`` / ``alpha_pattern`` when a pattern matches.

    Returns:
        The :class:`Adapter`, factors in float32 on the CPU.

    Raises:
        AdapterError: the folder or a file is missing or unreadable; only a pickle
            ``adapter_model.bin`` is present; peft_type is not LORA; r ≤ 0; DoRA,
            lora_bias or another variant is used; a tensor is not a 2-D LoRA factor;
            A/B ranks disagree with each other or with the config; a value is NaN/Inf;
            the file holds no LoRA factors.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: adapter folder not found")
    cfg = _read_config(folder)
    weights = folder / WEIGHTS_NAME
    by_module = _split_keys(_read_tensors(folder), weights)
    if not by_module:
        raise AdapterError(f"{weights}: holds no LoRA factors")
    factors = {m: _make_factor(m, parts, cfg, weights) for m, parts in sorted(by_module.items())}
    return Adapter(factors=factors, base_model=cfg.get("base_model_name_or_path"),
                   fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)), config=cfg, path=folder)


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
                 base_model: str | None = None) -> Path:
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

    Returns:
        The folder path.

    Raises:
        AdapterError: the adapter has no factors or a factor holds NaN/Inf.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    if not adapter.factors:
        raise AdapterError(f"{path}: refusing to save an adapter with no LoRA factors")
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
    return Path(path)
