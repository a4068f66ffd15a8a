"""Benchmark: all pairwise cosines of 3 LoRA adapters' ΔW on GPT-2 Small shapes, from the factors
vs from dense ΔW. Prints one JSON line.

Setup: 12 layers × {attn.c_attn 768→2304, attn.c_proj 768→768, mlp.c_fc 768→3072,
mlp.c_proj 3072→768} = 48 modules (PEFT target_modules c_attn, c_proj, c_fc), r = 4,
lora_alpha = 64, Gaussian factors (seed 0). Factor path: lorasum.geometry.cosine_matrices
(all pairs per module from two (Σr×Σr) Gram products, float64). Dense path: form each
ΔW = scaling·B·A in float64 once per adapter and module, then ⟨x, y⟩ / (‖x‖‖y‖) per pair.
Times are the best (and median) of repeated runs after one warm-up; the ratio uses the best. Goal: ≥ 100× faster, equal to 1e-6.

Run: .venv/bin/python benchmarks/bench_geometry.py [--threads N]
(--threads sets torch.set_num_threads for both paths; default: torch's default. On a loaded
2-core machine, 2 OpenMP threads make each small matmul wait for a descheduled thread, so
--threads 1 gives steadier numbers.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from lorasum.adapters import Adapter, LoraFactor
from lorasum.geometry import cosine_matrices, module_cosines

SHAPES = {"attn.c_attn": (2304, 768), "attn.c_proj": (768, 768), "mlp.c_fc": (3072, 768), "mlp.c_proj": (768, 3072)}
RANK, ALPHA, LAYERS, N = 4, 64, 12, 3


def make_adapters(seed: int = 0) -> list[Adapter]:
    """N random GPT-2 Small adapters (Conv1D orientation flag set as PEFT does for GPT-2)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N):
        factors = {f"transformer.h.{i}.{k}": LoraFactor(A=torch.randn(RANK, d_in, generator=g) * 0.02,
                                                        B=torch.randn(d_out, RANK, generator=g) * 0.02,
                                                        scaling=ALPHA / RANK)
                   for i in range(LAYERS) for k, (d_out, d_in) in SHAPES.items()}
        out.append(Adapter(factors=factors, base_model="gpt2", fan_in_fan_out=True))
    return out


def dense_cosines(adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    out = {}
    for m in sorted(adapters[0].factors):
        flat = [(f.scaling * (f.B.double() @ f.A.double())).reshape(-1) for f in (a.factors[m] for a in adapters)]
        norms = [torch.linalg.vector_norm(x) for x in flat]
        cos = torch.eye(len(adapters), dtype=torch.float64)
        for i, j in itertools.combinations(range(len(adapters)), 2):
            cos[i, j] = cos[j, i] = torch.dot(flat[i], flat[j]) / (norms[i] * norms[j])
        out[m] = cos
    return out


def per_pair_cosines(adapters: list[Adapter]) -> list[dict[str, float]]:
    return [module_cosines(a, b) for a, b in itertools.combinations(adapters, 2)]


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(best, median) wall time over ``repeats`` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for both paths")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adapters = make_adapters()
    f_best, f_med, fac = timed(lambda: cosine_matrices(adapters), 30)
    p_best, p_med, _ = timed(lambda: per_pair_cosines(adapters), 10)
    d_best, d_med, dense = timed(lambda: dense_cosines(adapters), 5)
    diff = max(float((fac[m] - dense[m]).abs().max()) for m in dense)
    ratio = d_best / f_best
    print(json.dumps({
        "benchmark": "pairwise_cosines_gpt2_small", "adapters": N, "rank": RANK, "modules": len(dense),
        "pairs": N * (N - 1) // 2, "factor_s": round(f_best, 6), "factor_median_s": round(f_med, 6),
        "factor_module_cosines_s": round(p_best, 6), "dense_s": round(d_best, 6), "dense_median_s": round(d_med, 6),
        "ratio": round(ratio, 1), "ratio_median": round(d_med / f_med, 1), "max_abs_diff": diff,
        "goal": "ratio >= 100 and max_abs_diff <= 1e-6", "ok": ratio >= 100 and diff <= 1e-6,
        "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
