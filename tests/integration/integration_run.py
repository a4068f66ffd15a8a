"""The tiny experiment of the integration tests (importable as ``integration_run``; conftest.py runs it)."""

from __future__ import annotations

from pathlib import Path

DOMAINS = ["math", "medicine", "finance"]
DATA = {"max_length": 48, "train_size": 6, "validation_size": 2, "test_size": 3}


def write_config(tmp: Path, model: Path, eval: str = "{batch_size: 3}", **data) -> Path:
    """The tiny experiment config (``data`` overrides keys of :data:`DATA`, ``eval`` is the eval section
    in YAML flow style); one file per test_size and eval section."""
    d = DATA | data
    tag = "" if eval == "{batch_size: 3}" else "-" + "".join(c for c in eval if c.isalnum())
    path = tmp / f"tiny-{d['test_size']}{tag}.yaml"
    path.write_text(
        f"name: tiny\nmodel: {model}\ndomains: [{', '.join(DOMAINS)}]\nseeds: [0, 1]\ndevice: cpu\n"
        f"data: {{max_length: {d['max_length']}, train_size: {d['train_size']}, "
        f"validation_size: {d['validation_size']}, test_size: {d['test_size']}}}\n"
        "train: {learning_rate: 1.0e-2, batch_size: 3}\n"
        f"eval: {eval}\n"
        "methods: [sum, ties, magnitude_prune]\nmethod_params: {ties: {density: 0.5}, magnitude_prune: {density: 1.0}}\n"
    )
    return path


def data_root_or_skip() -> Path:
    """``LORASUM_DATA_ROOT`` as a path; skips the calling test when it is not set to a folder."""
    import os

    import pytest

    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("LORASUM_DATA_ROOT is not set to the shared data folder (e.g. ../shared/data/raw)")
    return Path(root)
