"""lorasum: train one LoRA adapter per domain, compose them exactly, measure their geometry.

Reproduces and extends "Efficient Modular Learning through Naive LoRA Summation"
(arXiv 2508.11985).
"""

__version__ = "0.1.0"
