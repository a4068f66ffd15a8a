"""Under load: ``lorasum similarity`` and ``lorasum compose`` on 20 adapters at once (tiny GPT-2
shapes) stay within the stated memory bound (peak RSS above the import baseline ≤ 4·F + 64 MB,
F = float32 bytes of all factors), measured by benchmarks/bench_many_adapters.py in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_many_adapters.py"


def test_twenty_adapters_within_memory_bound():
    res = subprocess.run([sys.executable, str(BENCH), "--shapes", "tiny", "--n", "20", "--threads", "1"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["n_adapters"] == 20 and report["sum_file_mb"] > 0
    for command in ("similarity", "compose"):
        row = report[command]
        assert row["rc"] == 0
        assert row["within_bound"], f"{command}: +{row['increment_mb']} MB > {report['bound_increment_mb']} MB"
