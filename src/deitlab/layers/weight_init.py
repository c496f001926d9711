"""Weight initialisation by module type: the one loop every model family runs over its modules.

A family states its scheme as a table ``{module type: rule}`` (timm's and pycls's ``init_weights`` in data form):
ViT/DeiT uses trunc-normal Linear layers and unit LayerNorms, RegNet and ResNet He-normal convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import nn

Init = Callable[[nn.Module], None]


def init_modules(model: nn.Module, rules: Mapping[type[nn.Module], Init]) -> None:
    """Apply to every submodule of ``model`` the rule of the first type in ``rules`` it is an instance of.

    Modules of no listed type keep their initial (PyTorch default) weights.
    """
    for module in model.modules():
        rule = next((r for kind, r in rules.items() if isinstance(module, kind)), None)
        if rule is not None:
            rule(module)


def _zero_bias(module: nn.Module) -> None:
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def trunc_normal(std: float) -> Init:
    """Weight trunc-normal(0, ``std``) cut at ±2 (timm's ``trunc_normal_``), bias 0: ViT/DeiT Linear layers."""

    def init(module: nn.Module) -> None:
        nn.init.trunc_normal_(module.weight, std=std)
        _zero_bias(module)

    return init


def normal(std: float) -> Init:
    """Weight normal(0, ``std``), bias 0: the RegNet classifier (pycls/timm, std 0.01)."""

    def init(module: nn.Module) -> None:
        nn.init.normal_(module.weight, 0.0, std)
        _zero_bias(module)

    return init


def he_fan_out(module: nn.Module) -> None:
    """Conv weight normal(0, sqrt(2 / fan_out)), fan_out = k_h·k_w·out_channels / groups, bias 0.

    He et al. (2015) in fan-out mode for ReLU networks, as pycls and timm initialise RegNet; for ungrouped
    convolutions it equals ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
    """
    kh, kw = module.kernel_size
    fan_out = kh * kw * module.out_channels // module.groups
    nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
    _zero_bias(module)


def unit_norm(module: nn.Module) -> None:
    """Normalisation layers (LayerNorm, BatchNorm): weight 1, bias 0."""
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)
