"""Composition of LoRA adapters without training.

``compose(adapters, method="sum", **params)`` dispatches to a method registered in
:data:`METHODS` (``sum``, ``mean``, ``task_arithmetic``); :func:`merge_into_base` adds a
(composed) adapter's ΔW to a base model's weights.
"""

from __future__ import annotations

import inspect

from lorasum.adapters import Adapter
from lorasum.compose.merge import merge_into_base
from lorasum.compose.registry import METHODS, ComposeMethod, compose_method, get_method
from lorasum.compose.sum import check_compatible, compose_mean, compose_sum, compose_task_arithmetic
from lorasum.errors import ConfigError

__all__ = [
    "compose", "compose_sum", "compose_mean", "compose_task_arithmetic", "check_compatible",
    "merge_into_base", "METHODS", "ComposeMethod", "compose_method", "get_method",
]


def compose(adapters: list[Adapter], method: str = "sum", **params) -> Adapter:
    """Compose ``adapters`` with the registered ``method`` and its keyword ``params``.

    Raises:
        ConfigError: unknown method, or parameters the method does not take.
        AdapterError: incompatible adapters (see :func:`check_compatible`).
    """
    m = get_method(method)
    adapters = list(adapters)
    try:
        inspect.signature(m.fn).bind(adapters, **params)
    except TypeError as exc:
        raise ConfigError(f"composition method {method!r}: bad parameters {sorted(params)} ({exc})") from None
    return m.fn(adapters, **params)
