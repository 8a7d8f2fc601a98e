"""Model zoo: ``create_model(name, num_classes, in_channels)`` and ``list_models()``.

Built-in small-input models (lenet5, vgg11-small, resnet20, resnet56,
mobilenetv2) with their compact students (resnet8, resnet14, half-width
ResNets, mobilenetv2-0.5 / -0.25, vgg11-small-0.5; ``students_for(name)``),
any torchvision classification model as ``torchvision:NAME``, and user models
as ``package.module:factory``. Models are created with random weights; nothing
is downloaded.
"""

from edgecompress.models import small as _small  # noqa: F401  (registers the built-in models)
from edgecompress.models._registry import (
    create_model,
    is_user_factory,
    list_models,
    model_descriptions,
    register_model,
    students_for,
)

__all__ = [
    "create_model",
    "is_user_factory",
    "list_models",
    "model_descriptions",
    "register_model",
    "students_for",
]
