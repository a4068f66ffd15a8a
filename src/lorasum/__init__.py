"""lorasum: train one LoRA adapter per domain, compose them exactly, measure their geometry.

Reproduces and extends "Efficient Modular Learning through Naive LoRA Summation"
(arXiv 2508.11985). The public API is re-exported here and imported lazily, so that
``import lorasum`` (and the CLI's start-up) does not pull in torch or transformers::

    from lorasum import load_adapter, compose_sum, similarity
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "lorasum.config",
    "ExperimentConfig": "lorasum.config",
    "Record": "lorasum.data",
    "load_domain": "lorasum.data",
    "load_model": "lorasum.models",
    "Adapter": "lorasum.adapters",
    "LoraFactor": "lorasum.adapters",
    "load_adapter": "lorasum.adapters",
    "save_adapter": "lorasum.adapters",
    "train_adapter": "lorasum.train",
    "compose": "lorasum.compose",
    "compose_sum": "lorasum.compose",
    "merge_into_base": "lorasum.compose",
    "similarity": "lorasum.geometry",
    "perplexity": "lorasum.evaluate",
    "run_experiment": "lorasum.experiment",
    "write_report": "lorasum.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lorasum' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
