"""Write a randomly initialised model of a known shape, with a real tokenizer, for speed benchmarks.

Speed does not depend on the weights, so a benchmark can run the paper's architecture where its weights cannot
be downloaded (a GPU machine without a model hub): GPT-2 Small (``GPT2Config()``: 12 layers, width 768, Conv1D
projections, attention dropout 0.1) or SmolLM2-135M (its own ``LlamaConfig``: 30 layers, width 576). The
vocabulary is the tokenizer's (SmolLM2's 49,152 tokens for the BENCHMARKS.md rows), so that the data's token
lengths are those of the real runs. Prints one JSON line (what was written).

Run (here, where smollm2-135m loads):   python benchmarks/shape_model.py --save-tokenizer .dev/tok
     (there, with .dev/tok carried):     python benchmarks/shape_model.py --tokenizer .dev/tok --arch gpt2-small --out /root/gpt2s
                                         python benchmarks/shape_model.py --tokenizer .dev/tok --arch smollm2 --out /root/smol
then e.g.                                python benchmarks/bench_paper.py --config configs/paper.yaml --model /root/gpt2s --out /root/runs/g
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save-tokenizer", metavar="DIR",
                    help="save smollm2-135m's tokenizer and model config to DIR (needs the GGUF model) and stop")
    ap.add_argument("--tokenizer", metavar="DIR", help="a folder written by --save-tokenizer")
    ap.add_argument("--arch", choices=["gpt2-small", "smollm2"], default="gpt2-small")
    ap.add_argument("--out", metavar="DIR", help="where to write the model folder (must not exist)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.save_tokenizer:
        from lorasum.models import load_model

        model, tokenizer, _ = load_model("smollm2-135m", device="cpu")
        folder = Path(args.save_tokenizer)
        tokenizer.save_pretrained(folder)
        model.config.to_json_file(folder / "smollm2_config.json")
        print(json.dumps({"saved": str(folder), "files": sorted(p.name for p in folder.iterdir())}))
        return
    if not (args.tokenizer and args.out):
        ap.error("--tokenizer and --out are needed (or --save-tokenizer)")
    out = Path(args.out)
    if out.exists():
        ap.error(f"{out}: exists; give a new folder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(args.seed)
    if args.arch == "gpt2-small":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig.from_json_file(str(Path(args.tokenizer) / "smollm2_config.json"))
        config.quantization_config = None  # the GGUF load's, not a property of the shape
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(json.dumps({"out": str(out), "arch": args.arch, "n_params": sum(p.numel() for p in model.parameters()),
                      "layers": config.num_hidden_layers if args.arch == "smollm2" else config.n_layer,
                      "vocab": len(tokenizer)}))


if __name__ == "__main__":
    main()
