"""Composition of LoRA adapters without training.

``compose(adapters, method="sum", **params)`` dispatches to a method registered in
:data:`METHODS`:

* low rank, returning an :class:`~lorasum.adapters.Adapter`: ``sum``, ``mean``,
  ``task_arithmetic`` (exact) and ``svd`` (truncated to ``rank``);
* dense, returning a :class:`DenseDelta`: ``ties``, ``dare_linear``, ``dare_ties``,
  ``magnitude_prune``.

:func:`merge_into_base` adds either kind of result's ΔW to a base model's weights;
:func:`save_dense_delta` writes a dense result (``save_adapter`` writes an Adapter).
"""

from __future__ import annotations

import inspect

from lorasum.adapters import Adapter
from lorasum.compose.dare import compose_dare_linear, compose_dare_ties
from lorasum.compose.dense import DenseDelta, load_dense_delta, save_dense_delta
from lorasum.compose.merge import merge_into_base
from lorasum.compose.prune import compose_magnitude_prune
from lorasum.compose.registry import METHODS, ComposeMethod, compose_method, get_method
from lorasum.compose.sum import check_compatible, compose_mean, compose_sum, compose_task_arithmetic
from lorasum.compose.svd import SvdModuleReport, compose_svd, compose_svd_report
from lorasum.compose.ties import compose_ties
from lorasum.errors import ConfigError

__all__ = [
    "compose", "compose_sum", "compose_mean", "compose_task_arithmetic", "compose_svd", "compose_svd_report",
    "SvdModuleReport", "compose_ties", "compose_dare_linear", "compose_dare_ties", "compose_magnitude_prune",
    "DenseDelta", "save_dense_delta", "load_dense_delta", "check_compatible", "merge_into_base",
    "METHODS", "ComposeMethod", "compose_method", "get_method",
]


def _describe(m: ComposeMethod) -> str:
    items = [n if d is inspect.Parameter.empty else f"{n}={d!r}" for n, d in m.params.items()]
    return ", ".join(items) or "(none)"


def compose(adapters: list[Adapter], method: str = "sum", **params) -> Adapter | DenseDelta:
    """Compose ``adapters`` with the registered ``method`` and its keyword ``params``.

    Returns:
        An :class:`Adapter` for low-rank methods (``METHODS[method].low_rank``), a
        :class:`DenseDelta` for dense ones.

    Raises:
        ConfigError: unknown method; a parameter the method does not take or a missing
            required one (the message lists the method's accepted parameters); a bad value.
        AdapterError: incompatible adapters (see :func:`check_compatible`).
    """
    m = get_method(method)
    adapters = list(adapters)
    try:
        inspect.signature(m.fn).bind(adapters, **params)
    except TypeError as exc:
        raise ConfigError(f"composition method {method!r}: bad parameters {sorted(params)} ({exc}); "
                          f"accepted: {_describe(m)}") from None
    return m.fn(adapters, **params)
