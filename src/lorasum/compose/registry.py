"""Registry of adapter composition methods.

A composition method maps a list of :class:`~lorasum.adapters.Adapter` (and keyword
parameters) to one result: an :class:`~lorasum.adapters.Adapter` for low-rank methods
(``sum``, ``mean``, ``task_arithmetic``, ``svd``) or a
:class:`~lorasum.compose.dense.DenseDelta` for methods whose result is a dense ΔW
(``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``). Methods register
themselves with :func:`compose_method`; :func:`get_method` looks them up by name for the
CLI and experiment configs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorasum.errors import ConfigError

__all__ = ["ComposeMethod", "METHODS", "compose_method", "get_method"]

ComposeFn = Callable[..., Any]


@dataclass(frozen=True)
class ComposeMethod:
    """A registered composition method.

    Attributes:
        name: the name used in configs and on the command line.
        fn: ``fn(adapters: list[Adapter], **params) -> Adapter | DenseDelta``.
        reference: the paper or source that defines the method.
        exact: True when the result's ΔW is exactly the defined linear combination of the
            sources' ΔW (no truncation, trimming or random dropping).
        low_rank: True when the result is a LoRA :class:`~lorasum.adapters.Adapter`
            (savable with ``save_adapter``); False when it is a dense
            :class:`~lorasum.compose.dense.DenseDelta` (``save_dense_delta``).
    """

    name: str
    fn: ComposeFn
    reference: str
    exact: bool = True
    low_rank: bool = True

    @property
    def doc(self) -> str:
        """First line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""

    @property
    def params(self) -> dict[str, Any]:
        """Keyword parameters the method accepts → default (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(self.fn)
        return {n: p.default for n, p in list(sig.parameters.items())[1:]}


METHODS: dict[str, ComposeMethod] = {}


def compose_method(*, name: str, reference: str, exact: bool = True,
                   low_rank: bool = True) -> Callable[[ComposeFn], ComposeFn]:
    """Decorator registering ``fn`` under ``name`` in :data:`METHODS`.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def register(fn: ComposeFn) -> ComposeFn:
        if name in METHODS:
            raise ValueError(f"composition method {name!r} registered twice")
        METHODS[name] = ComposeMethod(name=name, fn=fn, reference=reference, exact=exact, low_rank=low_rank)
        return fn

    return register


def get_method(name: str) -> ComposeMethod:
    """The registered method called ``name``.

    Raises:
        ConfigError: no such method; the message lists the known names.
    """
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS)) or "(none)"
        raise ConfigError(f"unknown composition method {name!r}; known methods: {known}") from None
