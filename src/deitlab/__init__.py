"""deitlab: data-efficient vision transformers — DeiT distillation, ViT_C conv stems, DeepViT re-attention."""

from deitlab.models import (
    DistilledLogits,
    DistilledVisionTransformer,
    VisionTransformer,
    create_model,
    list_models,
    register_model,
)
from deitlab.optimize import optimize_for

__version__ = "0.1.0"

__all__ = [
    "DistilledLogits",
    "DistilledVisionTransformer",
    "VisionTransformer",
    "__version__",
    "create_model",
    "list_models",
    "optimize_for",
    "register_model",
]
