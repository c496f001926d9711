"""Model families and the registry. Importing this package registers every model."""

from deitlab.models import deepvit, deit, regnet, resnet, small, vit_c  # noqa: F401  (registrations)
from deitlab.models._registry import create_model, get_model_entry, list_models, register_model
from deitlab.models.regnet import RegNet
from deitlab.models.vit import DistilledLogits, DistilledVisionTransformer, Intermediates, VisionTransformer

__all__ = [
    "DistilledLogits",
    "DistilledVisionTransformer",
    "Intermediates",
    "RegNet",
    "VisionTransformer",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
]
