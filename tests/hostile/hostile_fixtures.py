"""Helpers for the hostile-input corpus: good inputs to spoil, the CLI runner and the checks
every failure must pass (exit 2, one stderr line naming the file, no traceback, outputs untouched)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lorasum.cli import main

N_EMBD = 32  # tiny GPT-2 of tiny_models.save_tiny_gpt2: c_attn ΔW (96, 32), attn.c_proj ΔW (32, 32)
GPT2_MODULES = {f"transformer.h.{i}.attn.{m}": shape for i in range(2)
                for m, shape in (("c_attn", (3 * N_EMBD, N_EMBD)), ("c_proj", (N_EMBD, N_EMBD)))}
LLAMA_MODULES = {f"model.layers.{i}.self_attn.{m}": (N_EMBD, N_EMBD) for i in range(2) for m in ("q_proj", "v_proj")}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def lora_tensors(modules: dict[str, tuple[int, int]], r: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """PEFT-named factors: A (r, d_in) and B (d_out, r) per module, random normal."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, (d_out, d_in) in modules.items():
        out[f"base_model.model.{m}.lora_A.weight"] = torch.randn(r, d_in, generator=g)
        out[f"base_model.model.{m}.lora_B.weight"] = torch.randn(d_out, r, generator=g) * 0.1
    return out


def write_adapter(path: Path, *, config: dict | None = None, tensors: dict | None = None,
                  modules: dict | None = None, r: int = 2, seed: int = 0, base: str | None = "tiny-gpt2") -> Path:
    """A hand-written PEFT LoRA folder (GPT-2 tiny shapes by default)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0,
           # the modules' own names, as PEFT writes them (GPT-2's c_attn and c_proj by default)
           "target_modules": sorted({m.rsplit(".", 1)[-1] for m in (modules or GPT2_MODULES)}),
           "fan_in_fan_out": True, "bias": "none",
           "base_model_name_or_path": base, "init_lora_weights": True, "use_rslora": False,
           "rank_pattern": {}, "alpha_pattern": {}}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is None:
        tensors = lora_tensors(modules or GPT2_MODULES, r=r, seed=seed)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """relative path → sha256 of every file under ``folder`` (and its parent's entry names)."""
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    files["<siblings>"] = ",".join(sorted(p.name for p in folder.parent.iterdir()))
    return files


def existing_output(tmp: Path, name: str = "out") -> tuple[Path, dict[str, str]]:
    """A pre-existing output folder with content, and its snapshot."""
    out = tmp / "outputs" / name
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("results of yesterday\n")
    (out / "adapter_config.json").write_text('{"keep": true}\n')
    return out, snapshot(out)


def run_cli(argv: list[str], capsys, quiet: bool = True) -> tuple[int, str, str]:
    """Run ``lorasum`` in-process; return (exit code, stdout, stderr).

    ``quiet`` adds ``-q`` after the (sub)command so that info logs do not share stderr
    with the error line.
    """
    argv = [str(a) for a in argv]
    if quiet:
        at = 2 if argv[0] == "data" else 1
        argv = argv[:at] + ["-q"] + argv[at:]
    capsys.readouterr()
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_user_error(rc: int, err: str, names: str | Path, *fragments: str) -> None:
    """Exit 2, exactly one stderr line, ``lorasum: error:`` prefix, no traceback, the file and fragments named."""
    lines = err.strip("\n").splitlines()
    assert rc == 2, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("lorasum: error: "), lines[0]
    assert "Traceback" not in err
    assert str(names) in lines[0], f"{names} not named in {lines[0]!r}"
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"


def write_gsm8k(root: Path, train: bytes | None = None, test: bytes | None = None) -> Path:
    """A tiny data root with GSM8K files (good ones unless given)."""
    folder = root / "gsm8k" / "grade_school_math" / "data"
    folder.mkdir(parents=True, exist_ok=True)

    def good(n: int, off: int) -> bytes:
        rows = [{"question": f"How many apples are {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
                for i in range(off, off + n)]
        return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"

    (folder / "train.jsonl").write_bytes(good(40, 0) if train is None else train)
    (folder / "test.jsonl").write_bytes(good(6, 100) if test is None else test)
    return root
