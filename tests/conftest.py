"""Shared fixtures: a tiny word-level tokenizer and tiny random GPT-2 / Llama models.

Everything is built in code (no downloads). The tokenizer splits on whitespace and
punctuation, knows a small fixed vocabulary (other words become ``<unk>``), prepends
``<bos>`` like Llama tokenizers do, and uses ``<eos>`` as its pad token (as
``lorasum.models.load_model`` sets up tokenizers without one).
"""

from __future__ import annotations

import pytest
import torch

from tiny_models import SPECIAL_TOKENS, WORDS, build_tiny_tokenizer  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Converted GGUF models go to a folder of the test session, never to the user's ~/.cache
    (set in the environment, so the CLI's subprocesses use it too); the first test that loads
    smollm2-135m converts it, the others read the conversion."""
    import os

    before = os.environ.get("LORASUM_MODEL_CACHE")
    os.environ["LORASUM_MODEL_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    if before is None:
        os.environ.pop("LORASUM_MODEL_CACHE", None)
    else:
        os.environ["LORASUM_MODEL_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_tokenizer_factory():
    """:func:`build_tiny_tokenizer` itself, for session-scoped fixtures.

    Other conftest files cannot ``from conftest import ...`` (every folder's conftest is named
    ``conftest``); request this fixture instead: ``tok = tiny_tokenizer_factory()``.
    """
    return build_tiny_tokenizer


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
    """Random 2-layer Llama (hidden 32, GQA 4/2 heads, untied LM head) in eval mode, seed 0.

    ``initializer_range=0.2``, as for :func:`tiny_gpt2`.
    """
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


def _run_in_thread(fn, timeout: float = 20.0):
    """``fn()``'s result or exception; a test failure, not a hung suite, if it blocks for ``timeout`` seconds
    (a read of a FIFO or a device that was not refused before it began)."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call blocked: the file was opened or read before it was checked"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def in_thread():
    """:func:`_run_in_thread`: call ``in_thread(lambda: ...)`` around a read that must not block."""
    return _run_in_thread
