"""Validation of a PEFT ``adapter_config.json`` before any tensor is read.

lorasum reads only vanilla LoRA, whose effect on a weight is ΔW = scaling · B · A
(Hu et al. 2021, arXiv 2106.09685, eq. 3). Every field of the config falls in one
of four groups (field names of PEFT 0.21 ``peft.LoraConfig``):

* **checked**: fields that decide ΔW; wrong types or ranges are refused:
  ``peft_type`` (must be LORA), ``r`` (integer > 0), ``lora_alpha`` (finite number),
  ``use_rslora`` and ``fan_in_fan_out`` (booleans), ``rank_pattern`` (regex → integer > 0),
  ``alpha_pattern`` (regex → finite number), ``base_model_name_or_path`` (string or null),
  ``init_lora_weights`` (true/false/"gaussian"/"eva"/"orthogonal": these only set the
  starting factors), ``bias`` ("none").
* **refused when switched on** (:data:`REFUSED_FIELDS`): variants whose effect is not a
  ΔW that can be summed: DoRA, LoRA biases, trained copies of modules, trainable tokens,
  layer replication, QA-LoRA, aLoRA, Megatron layers, and initialisations that change the
  *base* weight (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, MiCA), since such an adapter is
  relative to a modified base.
* **informational** (:data:`INFO_FIELDS`): bookkeeping or training-only settings with no
  effect on the saved factors' ΔW (``task_type``, ``peft_version``, ``lora_dropout``,
  ``target_modules``, ...); not checked here (``target_modules`` is checked against the weights'
  module names by :func:`lorasum.adapters.load_adapter`: PEFT loads only the factors it names).
* **unknown**: any other key. It is ignored when its value is off (null, false, 0, "",
  {} or []), because PEFT adds each new variant as a field that defaults to off; any other
  value is refused, since it may switch on a variant lorasum does not know.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from lorasum.errors import AdapterError

__all__ = ["validate_adapter_config", "REFUSED_FIELDS", "INFO_FIELDS", "CHECKED_FIELDS"]

#: Fields that switch on a LoRA variant whose effect is not scaling·B·A on a weight.
REFUSED_FIELDS = {
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
    "modules_to_save": "modules_to_save trains full copies of modules",
    "trainable_token_indices": "trainable_token_indices trains embedding rows",
    "megatron_config": "megatron_config wraps Megatron parallel layers",
}

#: Fields with no effect on the saved factors' ΔW (bookkeeping, training-only settings).
INFO_FIELDS = frozenset({
    "task_type", "auto_mapping", "peft_version", "revision", "inference_mode", "target_modules",
    "exclude_modules", "lora_dropout", "layers_to_transform", "layers_pattern", "megatron_core",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "qalora_group_size", "runtime_config",
    "ensure_weight_tying",
})

#: Fields validated by :func:`validate_adapter_config`.
CHECKED_FIELDS = frozenset({
    "peft_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "rank_pattern", "alpha_pattern",
    "base_model_name_or_path", "init_lora_weights", "bias",
})

# init_lora_weights values that only choose the starting factors (the base weight is untouched)
_PLAIN_INITS = {"gaussian", "eva", "orthogonal"}
_OFF = (None, False, "", {}, [])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_pattern(cfg: dict, name: str, ok, want: str, where: Path) -> None:
    pattern = cfg.get(name)
    if pattern is None:
        return
    if not isinstance(pattern, dict):
        raise AdapterError(f"{where}: {name} must be an object mapping module patterns to values")
    for key, value in pattern.items():
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error as exc:
            raise AdapterError(f"{where}: {name} key {key!r} is not a valid regular expression ({exc})") from None
        if not ok(value):
            raise AdapterError(f"{where}: {name}[{key!r}] must be {want}, got {value!r}")


def _check_init(value: Any, where: Path) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, str) and value.lower() in _PLAIN_INITS:
        return
    if isinstance(value, str):
        raise AdapterError(f"{where}: init_lora_weights={value!r} is refused: PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA "
                           "and MiCA change the base weight (or the forward pass), so ΔW is not relative to the "
                           "base model; re-save the adapter with PEFT's path_initial_model_for_weight_conversion")
    raise AdapterError(f"{where}: init_lora_weights must be true, false or a string, got {value!r}")


def _check_fields(cfg: dict, where: Path) -> None:
    for key, value in cfg.items():
        if key in REFUSED_FIELDS:
            if value not in _OFF:
                raise AdapterError(f"{where}: {key} is set; {REFUSED_FIELDS[key]}, which is not a plain LoRA ΔW "
                                   "(refused)")
        elif key not in CHECKED_FIELDS and key not in INFO_FIELDS and value not in _OFF:
            raise AdapterError(f"{where}: unknown field {key!r} = {value!r}; it may switch on a LoRA variant "
                               "lorasum cannot sum (refused; remove it if it is only a note)")


def validate_adapter_config(cfg: Any, where: Path) -> dict:
    """Check a parsed ``adapter_config.json`` (see the module docstring for the rules).

    Args:
        cfg: the parsed JSON.
        where: the file, named in error messages.

    Returns:
        ``cfg`` itself.

    Raises:
        AdapterError: not an object; peft_type is not LORA; a checked field has the wrong
            type or range (r ≤ 0, non-finite lora_alpha, a pattern key that is not a regular
            expression, ...); a refused variant or an unknown field is switched on.
    """
    if not isinstance(cfg, dict):
        raise AdapterError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    peft_type = cfg.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise AdapterError(f"{where}: peft_type is {peft_type!r}; only LORA adapters are supported")
    _check_fields(cfg, where)
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not _is_int(r) or r <= 0:
        raise AdapterError(f"{where}: r must be a positive integer, got {r!r}")
    if not _is_finite_number(alpha):
        raise AdapterError(f"{where}: lora_alpha must be a finite number, got {alpha!r}")
    for name in ("use_rslora", "fan_in_fan_out"):
        if not isinstance(cfg.get(name, False), bool):
            raise AdapterError(f"{where}: {name} must be true or false, got {cfg[name]!r}")
    _check_pattern(cfg, "rank_pattern", lambda v: _is_int(v) and v > 0, "a positive integer", where)
    _check_pattern(cfg, "alpha_pattern", _is_finite_number, "a finite number", where)
    base = cfg.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise AdapterError(f"{where}: base_model_name_or_path must be a string, got {base!r}")
    _check_init(cfg.get("init_lora_weights", True), where)
    if cfg.get("bias", "none") not in ("none", None):
        raise AdapterError(f"{where}: bias={cfg['bias']!r} trains base-layer biases, which are not a LoRA ΔW "
                           "(refused; only bias='none' is supported)")
    return cfg
