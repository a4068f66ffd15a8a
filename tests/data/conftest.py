"""Fixtures for the data tests: a tiny fake data root, and the real data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from datafiles import build_fake_root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A fresh tiny data root (see :func:`build_fake_root`)."""
    return build_fake_root(tmp_path / "raw")


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real data root ($LORASUM_DATA_ROOT); the test is skipped when it is unset or missing."""
    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root:
        pytest.skip("real-data test: LORASUM_DATA_ROOT is not set")
    if not Path(root).is_dir():
        pytest.skip(f"real-data test: LORASUM_DATA_ROOT={root} is not a folder")
    return Path(root)
