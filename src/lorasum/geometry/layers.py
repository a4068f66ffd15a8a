"""Layer index and module kind parsed from a module path.

Transformer blocks are numbered list entries in module paths: ``transformer.h.3.attn.c_attn``
(GPT-2), ``model.layers.3.self_attn.q_proj`` (Llama), ``encoder.layer.3.…`` (BERT). The layer
index is the first purely numeric path component; the module kind is the part after it
(``attn.c_attn``, ``self_attn.q_proj``), or the whole path when there is no index.
:func:`natural_key` orders paths as a person reads them (``layers.2`` before ``layers.10``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["layer_index", "module_kind", "group_by_layer", "natural_key"]

_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_DIGITS = re.compile(r"(\d+)")


def natural_key(module: str) -> tuple:
    """Sort key that compares runs of digits as numbers: ``sorted(paths, key=natural_key)`` puts
    ``model.layers.2.mlp`` before ``model.layers.10.mlp`` (plain ``sorted`` puts it after)."""
    # split() alternates text and digit runs (text at even positions), so parts of two keys always
    # compare str with str and int with int; the path itself breaks ties such as "h.01" / "h.1"
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(module))), module


def layer_index(module: str) -> int | None:
    """The first numeric component of a dotted module path (``"transformer.h.3.attn"`` → 3), or None."""
    m = _INDEX.search(module)
    return int(m.group(1)) if m else None


def module_kind(module: str) -> str:
    """The path after the layer index (``"model.layers.3.self_attn.q_proj"`` → ``"self_attn.q_proj"``);
    the whole path if it has no index (or nothing follows the index)."""
    m = _INDEX.search(module)
    return (module[m.end():] or module) if m else module


def group_by_layer(modules: Iterable[str]) -> dict[int, list[str]]:
    """layer index → sorted module paths in that layer, sorted by index; paths without an index are left out."""
    out: dict[int, list[str]] = {}
    for m in sorted(modules):
        i = layer_index(m)
        if i is not None:
            out.setdefault(i, []).append(m)
    return dict(sorted(out.items()))
