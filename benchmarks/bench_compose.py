"""Benchmark: composing 3 LoRA adapters on GPT-2 Small shapes. Prints one JSON line.

Same adapters as bench_geometry.py (12 layers × c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj;
r = 4, lora_alpha = 64). Measured (best and median of repeated runs after a warm-up):

* sum_save: exact sum written as a PEFT adapter (compose_sum + save_adapter, rank 12, with
  fsync) — goal ≤ 0.5 s; baseline: the dense Σ ΔW formed and written as one safetensors file
  (what a merge-style tool writes);
* svd: compose(..., method="svd", rank=4) (QR + small-core SVD, no dense ΔW) — goal ≤ 5 s;
  baseline: torch.linalg.svd of each module's dense Σ ΔW truncated to rank 4 (PEFT's
  combination_type="svd" route); max |difference| of the relative truncation errors;
* ties (density 0.2), for information (dense method, no goal).

Run: .venv/bin/python benchmarks/bench_compose.py [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_geometry import make_adapters, timed  # noqa: E402

from lorasum.adapters import save_adapter  # noqa: E402
from lorasum.compose import compose, compose_sum, compose_svd_report  # noqa: E402
from lorasum.storage import atomic_write_bytes  # noqa: E402


def dense_sum_save(adapters, path: Path) -> None:
    from safetensors.torch import save

    total = compose_sum(adapters)
    tensors = {m: f.delta() for m, f in total.factors.items()}
    atomic_write_bytes(path, save(tensors))


def dense_svd(adapters, k: int) -> dict[str, float]:
    total = compose_sum(adapters)
    out = {}
    for m, f in total.factors.items():
        s = torch.linalg.svdvals(f.scaling * (f.B.double() @ f.A.double()))
        out[m] = math.sqrt(float((s[k:] ** 2).sum() / (s ** 2).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adapters = make_adapters()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        s_best, s_med, _ = timed(lambda: save_adapter(compose_sum(adapters), out / "sum", overwrite=True), 10)
        size = sum(p.stat().st_size for p in (out / "sum").iterdir())
        b_best, b_med, _ = timed(lambda: dense_sum_save(adapters, out / "dense.safetensors"), 3)
    v_best, v_med, _ = timed(lambda: compose(adapters, "svd", rank=4), 5)
    _, report = compose_svd_report(adapters, rank=4)
    d_best, d_med, dense_err = timed(lambda: dense_svd(adapters, 4), 1)
    err_diff = max(abs(report[m].rel_error - dense_err[m]) for m in report)
    t_best, t_med, _ = timed(lambda: compose(adapters, "ties", density=0.2), 1)
    print(json.dumps({
        "benchmark": "compose_gpt2_small", "adapters": 3, "rank": 4, "modules": len(report),
        "sum_save_s": round(s_best, 4), "sum_save_median_s": round(s_med, 4), "sum_adapter_bytes": size,
        "dense_sum_save_s": round(b_best, 4), "sum_save_ok": s_best <= 0.5,
        "svd_s": round(v_best, 4), "svd_median_s": round(v_med, 4), "dense_svd_s": round(d_best, 4),
        "svd_ok": v_best <= 5.0, "svd_rel_error_max_abs_diff_vs_dense": err_diff,
        "svd_rel_error_mean": sum(r.rel_error for r in report.values()) / len(report),
        "ties_s": round(t_best, 4), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
