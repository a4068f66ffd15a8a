"""Geometry of LoRA updates: Frobenius inner products, norms and cosines from the factors."""

from lorasum.geometry.inner import cosine, frobenius_inner, frobenius_norm, module_cosines, rms
from lorasum.geometry.similarity import PairStats, Similarity, similarity

__all__ = ["frobenius_inner", "frobenius_norm", "cosine", "module_cosines", "rms",
           "similarity", "Similarity", "PairStats"]
