"""Training: the one loop (train, evaluate), knowledge distillation, BatchNorm re-estimation.

Used for base models (``edgecompress train``), for fine-tuning compressed
models in searches and replays, and for scoring accuracy. It does not choose
models, data or policies: callers pass them in.
"""

from edgecompress.training.batchnorm import recalibrate_batchnorm
from edgecompress.training.distill import distill, distillation_loss
from edgecompress.training.loop import EpochRecord, TrainResult, augment_batch, evaluate, train

__all__ = [
    "EpochRecord",
    "TrainResult",
    "augment_batch",
    "distill",
    "distillation_loss",
    "evaluate",
    "recalibrate_batchnorm",
    "train",
]
