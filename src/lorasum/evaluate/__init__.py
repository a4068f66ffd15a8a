"""Evaluation: answer-token NLL and perplexity (see :mod:`lorasum.evaluate.nll`)."""

from lorasum.evaluate.nll import (
    Perplexity,
    answer_token_nll,
    autocast_for,
    encode_for_eval,
    fast_attention,
    perplexity,
    score,
)

__all__ = ["Perplexity", "perplexity", "score", "encode_for_eval", "answer_token_nll", "autocast_for",
           "fast_attention"]
