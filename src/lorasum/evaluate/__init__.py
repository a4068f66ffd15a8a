"""Evaluation: answer-token NLL and perplexity (see :mod:`lorasum.evaluate.nll`)."""

from lorasum.evaluate.nll import Perplexity, answer_token_nll, autocast_for, perplexity

__all__ = ["Perplexity", "perplexity", "answer_token_nll", "autocast_for"]
