"""Benchmark: the LM head's NLL with its hidden-state gradient, plain (full logits) vs chunked (``head_nll``) vs
chunked with the chunk compiled (``head_nll`` under ``compiled_head``: two fused kernels a chunk).

One training pass's head at the shapes of the paper's setting with SmolLM2 (V = 49,152, H = 576) and
``--rows`` scored positions: forward and backward of ``sum(weight * nll)``. Each variant runs in a fresh
process (``compiled``: its compilation in the warm-up, not timed); prints one JSON line per variant: peak memory (CUDA: ``max_memory_allocated`` above the inputs;
CPU: the process's peak RSS, Python, torch and the inputs included) and the best time of ``--repeat`` runs.

Run: python benchmarks/bench_head_nll.py [--rows 8192] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _one(variant: str, rows: int, device: str, repeat: int) -> dict:
    import torch
    import torch.nn.functional as F

    from lorasum.evaluate.nll import compiled_head, head_nll

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    head = torch.nn.Linear(576, 49152, bias=False).to(device, dtype).requires_grad_(False)
    hidden = torch.randn(rows, 576, device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, 49152, (rows,), device=device)
    weight = torch.rand(rows, device=device)

    def run():
        hidden.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            if variant == "plain":
                nll = F.cross_entropy(head(hidden).float(), targets, reduction="none")
            else:
                with compiled_head(variant == "compiled"):
                    nll = head_nll(head, hidden, targets)
        (nll * weight).sum().backward()

    run()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:  # the process's peak RSS (the warm-up reached it already)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "rows": rows, "device": device, "peak_mib": round(peak / 2**20),
            "best_ms": round(1000 * min(times), 1), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(_one(args.variant, args.rows, args.device, args.repeat)))
        return
    for variant in ("plain", "chunked", "compiled"):  # one process each: peak memory of one variant alone
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--rows", str(args.rows), "--device",
                              args.device, "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
