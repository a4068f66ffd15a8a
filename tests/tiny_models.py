"""Tiny models and a tiny tokenizer built in code (no downloads), importable from any test:
``from tiny_models import build_tiny_tokenizer, save_tiny_gpt2``."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<bos>", "<eos>"]
WORDS = (
    "Question Answer : ? . , ! - + = * / ( ) % $ "
    "0 1 2 3 4 5 6 7 8 9 10 12 20 100 "
    "a an the is are was of to in on for with and or not what how many much which who why when "
    "patient dose drug disease symptom treatment blood heart cancer cell risk "
    "price stock bond rate interest revenue profit cash market tax "
    "sum number add plus minus times equal total apples eggs left each day "
    "yes no maybe red green blue cat dog sun moon"
).split()


def build_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :data:`WORDS` with pad token = eos token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(SPECIAL_TOKENS + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<eos>"
    )


def save_tiny_gpt2(path: Path, n_positions: int = 256, dropout: float = 0.1) -> Path:
    """Save a random 2-layer GPT-2 (Conv1D) and the tiny tokenizer as a model folder, like ``save_pretrained``
    (``dropout``: GPT-2's resid, embd and attn dropout)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=n_positions, initializer_range=0.2,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def at_forward_pass(monkeypatch, n: int, action, parallel: bool = False) -> list:
    """Make the n-th forward pass of training (micro-batch n, 1-based) call ``action()`` first, e.g.
    ``lambda: os.kill(os.getpid(), signal.SIGTERM)`` for a real signal mid-run. Returns the list that
    gets one entry per forward pass (its length counts them). ``parallel``: the passes of
    ``lorasum.train.parallel`` (one per step of the whole group) instead of ``train_adapter``'s."""
    import lorasum.train.loop as loop
    import lorasum.train.parallel as par

    module, name = (par, "token_nll") if parallel else (loop, "answer_token_nll")
    real, calls = getattr(module, name), []

    def wrapped(model, batch):
        calls.append(1)
        if len(calls) == n:
            action()
        return real(model, batch)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def signal_self(sig):
    """An action for :func:`at_forward_pass`: send ``sig`` to this process."""
    import os

    return lambda: os.kill(os.getpid(), sig)


def finished_tiny_run(tmp: Path) -> tuple[Path, Path]:
    """``(config, run folder)`` of one finished tiny run under ``tmp`` (tiny GPT-2, math and finance, one seed,
    the sum only; the real data of ``LORASUM_DATA_ROOT``, skipped without it). Copy the folder before changing it."""
    import os

    import pytest

    from lorasum.cli import main

    root = os.environ.get("LORASUM_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("LORASUM_DATA_ROOT is not set to the shared data folder (e.g. ../shared/data/raw)")
    model = save_tiny_gpt2(tmp / "m")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(
        f"name: tiny\nmodel: {model}\ndomains: [math, finance]\nseeds: [0]\ndevice: cpu\nhybrids: false\n"
        "data: {max_length: 48, train_size: 4, validation_size: 1, test_size: 3}\n"
        "train: {learning_rate: 1.0e-2, batch_size: 2, max_steps: 2}\n"
        "eval: {batch_size: 3}\nmethods: [sum]\n")
    out = tmp / "run"
    assert main(["reproduce", "-q", "--config", str(cfg), "--out", str(out)]) == 0
    return cfg, out

