"""Training: the one loop (train, evaluate), knowledge distillation, BatchNorm re-estimation.

Used for base models (``edgecompress train``), for fine-tuning compressed
models in searches and replays, and for scoring accuracy. It does not choose
models, data or policies: callers pass them in. All of it runs on the
accelerator the caller names (``accelerator``: CPU, CUDA or MPS, in fp32,
bf16 or fp16 autocast) and hands models back on the device they came from.
"""

from edgecompress.training.accelerator import describe as describe_device
from edgecompress.training.accelerator import resolve_accelerator
from edgecompress.training.batchnorm import recalibrate_batchnorm
from edgecompress.training.distill import distill, distillation_loss
from edgecompress.training.loop import EpochRecord, TrainResult, augment_batch, classification_metrics, evaluate, train

__all__ = [
    "EpochRecord",
    "TrainResult",
    "augment_batch",
    "classification_metrics",
    "describe_device",
    "distill",
    "distillation_loss",
    "evaluate",
    "recalibrate_batchnorm",
    "resolve_accelerator",
    "train",
]
