"""Training: one LoRA adapter per call (see :mod:`lorasum.train.loop`)."""

from lorasum.train.loop import ADAPTER_META_FILE, TrainResult, train_adapter

__all__ = ["TrainResult", "train_adapter", "ADAPTER_META_FILE"]
