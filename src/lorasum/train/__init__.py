"""Training: one LoRA adapter per call (:mod:`lorasum.train.loop`), or several adapters together in one
pass over the base model (:mod:`lorasum.train.parallel`)."""

from lorasum.train.loop import ADAPTER_META_FILE, TrainResult, train_adapter
from lorasum.train.parallel import AdapterTask, train_adapters

__all__ = ["TrainResult", "train_adapter", "ADAPTER_META_FILE", "AdapterTask", "train_adapters"]
