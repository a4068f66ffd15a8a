"""Registry of adapter composition methods.

A composition method maps a list of :class:`~lorasum.adapters.Adapter` (and keyword
parameters) to one Adapter. Methods register themselves with :func:`compose_method`;
:func:`get_method` looks them up by name for the CLI and experiment configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lorasum.adapters import Adapter
from lorasum.errors import ConfigError

__all__ = ["ComposeMethod", "METHODS", "compose_method", "get_method"]

ComposeFn = Callable[..., Adapter]


@dataclass(frozen=True)
class ComposeMethod:
    """A registered composition method.

    Attributes:
        name: the name used in configs and on the command line.
        fn: ``fn(adapters: list[Adapter], **params) -> Adapter``.
        reference: the paper or source that defines the method.
        exact: True when the result's ΔW is exactly the defined combination of the
            sources' ΔW (no truncation or sparsification).
    """

    name: str
    fn: ComposeFn
    reference: str
    exact: bool = True

    @property
    def doc(self) -> str:
        """First line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


METHODS: dict[str, ComposeMethod] = {}


def compose_method(*, name: str, reference: str, exact: bool = True) -> Callable[[ComposeFn], ComposeFn]:
    """Decorator registering ``fn`` under ``name`` in :data:`METHODS`.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def register(fn: ComposeFn) -> ComposeFn:
        if name in METHODS:
            raise ValueError(f"composition method {name!r} registered twice")
        METHODS[name] = ComposeMethod(name=name, fn=fn, reference=reference, exact=exact)
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
