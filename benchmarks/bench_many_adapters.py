"""Benchmark: peak memory of ``lorasum similarity`` and ``lorasum compose`` on many adapters at once.
Prints one JSON line.

N random PEFT adapter folders (r = 4, lora_alpha = 64) are written for one of two shape sets:

* ``tiny``: the 2-layer GPT-2 of the tests (n_embd 32; c_attn, attn.c_proj: 4 modules);
* ``gpt2``: GPT-2 Small (12 layers × c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj: 48 modules).

Each command runs in its own fresh Python process (the real CLI, ``lorasum.cli.main``), which
reports its own peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and wall
time. A third process only imports what the commands import, giving the fixed cost of Python,
torch, transformers and lorasum; ``increment`` = peak − that baseline.

Stated bound (what lorasum promises): increment ≤ 4·F + 64 MB, where F is the float32 size of
all N adapters' factors (Σ r·(d_in + d_out)·4 bytes). compose holds the sources, the summed
factors and the copy written to safetensors (≈ 3·F); similarity holds the sources and r×r
products (≈ F). Neither forms a dense ΔW.

Run: .venv/bin/python benchmarks/bench_many_adapters.py [--shapes tiny|gpt2] [--n 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RANK, ALPHA = 4, 64
SHAPES = {
    "tiny": (2, 32, {"attn.c_attn": (96, 32), "attn.c_proj": (32, 32)}),
    "gpt2": (12, 768, {"attn.c_attn": (2304, 768), "attn.c_proj": (768, 768), "mlp.c_fc": (3072, 768),
                       "mlp.c_proj": (768, 3072)}),
}

_CHILD = r"""
import json, resource, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
if argv == ["--baseline"]:
    import lorasum.cli, lorasum.adapters, lorasum.compose, lorasum.geometry.export, safetensors.torch  # noqa
    import transformers  # noqa: the CLI imports it to quieten its logs
    rc = 0
else:
    from lorasum.cli import main
    rc = main(argv)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
json.dump({"rc": rc, "seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1)}, open(out, "w"))
"""


def write_adapters(folder: Path, n: int, shapes: str) -> tuple[list[Path], int]:
    """N PEFT LoRA folders; returns their paths and F, the float32 bytes of all their factors."""
    from safetensors.torch import save_file

    layers, _, modules = SHAPES[shapes]
    g = torch.Generator().manual_seed(0)
    paths, total = [], 0
    for k in range(n):
        tensors = {}
        for i in range(layers):
            for m, (d_out, d_in) in modules.items():
                key = f"base_model.model.transformer.h.{i}.{m}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, d_in, generator=g) * 0.02
                tensors[f"{key}.lora_B.weight"] = torch.randn(d_out, RANK, generator=g) * 0.02
                total += 4 * RANK * (d_in + d_out)
        path = folder / f"domain{k:02d}"
        path.mkdir()
        save_file(tensors, str(path / "adapter_model.safetensors"))
        cfg = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": sorted(
            {m.rsplit(".", 1)[-1] for m in modules}), "fan_in_fan_out": True, "base_model_name_or_path": "gpt2"}
        (path / "adapter_config.json").write_text(json.dumps(cfg))
        paths.append(path)
    return paths, total


def run_child(argv: list[str], tmp: Path, threads: int | None = None) -> dict:
    """Run the CLI (or the import baseline) in a fresh process; its self-reported peak RSS and time."""
    report = tmp / "child.json"
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    res = subprocess.run([sys.executable, "-c", _CHILD, str(report), *map(str, argv)], capture_output=True,
                         text=True, timeout=600, env=env)
    if res.returncode != 0:
        raise SystemExit(f"child failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return json.loads(report.read_text())


def measure(n: int, shapes: str, threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        paths, factor_bytes = write_adapters(tmp, n, shapes)
        base = run_child(["--baseline"], tmp, threads)
        sim = run_child(["similarity", "-q", "--format", "json", *paths], tmp, threads)
        comp = run_child(["compose", "-q", *paths, "--out", tmp / "sum"], tmp, threads)
        out_bytes = (tmp / "sum" / "adapter_model.safetensors").stat().st_size
    bound_mb = (4 * factor_bytes + (64 << 20)) / (1 << 20)
    rows = {}
    for name, r in (("similarity", sim), ("compose", comp)):
        inc = r["peak_rss_mb"] - base["peak_rss_mb"]
        rows[name] = {**r, "increment_mb": round(inc, 1), "within_bound": r["rc"] == 0 and inc <= bound_mb}
    return {"benchmark": "many_adapters", "shapes": shapes, "n_adapters": n, "rank": RANK,
            "modules_per_adapter": SHAPES[shapes][0] * len(SHAPES[shapes][2]),
            "factor_mb": round(factor_bytes / (1 << 20), 2), "sum_file_mb": round(out_bytes / (1 << 20), 2),
            "baseline_import_rss_mb": base["peak_rss_mb"], "bound_increment_mb": round(bound_mb, 1),
            **rows, "torch": torch.__version__, "threads": threads or torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--n", type=int, default=20, help="number of adapters (default 20)")
    ap.add_argument("--threads", type=int, help="torch threads of the measured processes (OMP_NUM_THREADS)")
    args = ap.parse_args()
    print(json.dumps(measure(args.n, args.shapes, args.threads)))


if __name__ == "__main__":
    main()
