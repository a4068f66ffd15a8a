"""One tiny end-to-end run shared by the integration tests: real data, a tiny random GPT-2 saved to a
folder, three domains, two seeds, hybrids and two dense composition methods (about 20 s on 2 cores)."""

from __future__ import annotations

import pytest

from integration_run import data_root_or_skip, write_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``{"tmp", "cfg", "out", "model", "root", "results"}`` of one finished ``lorasum reproduce`` run."""
    root = data_root_or_skip()
    from tiny_models import save_tiny_gpt2

    from lorasum.cli import main
    from lorasum.report import load_results

    tmp = tmp_path_factory.mktemp("repro")
    save_tiny_gpt2(tmp / "m")
    cfg = write_config(tmp, tmp / "m")
    out = tmp / "run"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    return {"tmp": tmp, "cfg": cfg, "out": out, "model": tmp / "m", "root": root,
            "results": load_results(out / "results.json")}
