"""One tiny end-to-end run shared by the integration tests: real data, a tiny random GPT-2 saved to a
folder, three domains, two seeds, hybrids and two dense composition methods (about 20 s on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from integration_run import write_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``{"tmp", "cfg", "out", "model", "root", "results"}`` of one finished ``lorasum reproduce`` run."""
    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("LORASUM_DATA_ROOT is not set to the shared data folder (e.g. ../shared/data/raw)")
    from tiny_models import save_tiny_gpt2

    from lorasum.cli import main
    from lorasum.report import load_results

    tmp = tmp_path_factory.mktemp("repro")
    save_tiny_gpt2(tmp / "m")
    cfg = write_config(tmp, tmp / "m")
    out = tmp / "run"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    return {"tmp": tmp, "cfg": cfg, "out": out, "model": tmp / "m", "root": Path(root),
            "results": load_results(out / "results.json")}
