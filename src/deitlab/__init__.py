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
from deitlab.predictor import Prediction, Predictor
from deitlab.preprocess import Preprocessing
from deitlab.pretrained import from_pretrained, save_pretrained
from deitlab.sources import resolve_model
from deitlab.version import __version__

__all__ = [
    "DistilledLogits",
    "DistilledVisionTransformer",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "VisionTransformer",
    "__version__",
    "create_model",
    "from_pretrained",
    "list_models",
    "optimize_for",
    "register_model",
    "resolve_model",
    "save_pretrained",
]
