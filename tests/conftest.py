"""Shared fixtures: a tiny word-level tokenizer and tiny random GPT-2 / Llama models.

Everything is built in code (no downloads). The tokenizer splits on whitespace and
punctuation, knows a small fixed vocabulary (other words become ``<unk>``), prepends
``<bos>`` like Llama tokenizers do, and uses ``<eos>`` as its pad token (as
``lorasum.models.load_model`` sets up tokenizers without one).
"""

from __future__ import annotations

import pytest
import torch

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


@pytest.fixture
def tiny_tokenizer():
    """Fresh tiny tokenizer (pad token = eos token)."""
    return build_tiny_tokenizer()


def _ids(tok) -> dict[str, int]:
    return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    """Random 2-layer GPT-2 (n_embd 32, Conv1D projections, tied LM head) in eval mode, seed 0.

    ``initializer_range=0.2`` (not 0.02) so that outputs are far from uniform and tests can tell models apart.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=256, initializer_range=0.2, **_ids(tiny_tokenizer)
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """Random 2-layer Llama (hidden 32, GQA 4/2 heads, untied LM head, ``initializer_range=0.2``) in eval mode, seed 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
        **_ids(tiny_tokenizer),
    )
    return LlamaForCausalLM(config).eval()
