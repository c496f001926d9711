"""A small model registry: ``register_model`` / ``create_model`` / ``list_models``.

An entry is a builder (a class or a function taking keyword arguments) plus the keyword arguments that make
this variant what it is. ``create_model(name, **overrides)`` merges the overrides into those defaults, checks
them against the builder's signature, builds the model and optionally loads a checkpoint.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from deitlab.errors import ConfigError
from deitlab.models.weights import load_checkpoint

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, builder, default keyword arguments, family and default image size."""

    name: str
    builder: Builder
    defaults: Mapping[str, Any] = field(default_factory=dict)
    family: str = ""

    @property
    def img_size(self) -> int:
        return int(self.defaults.get("img_size", 224))


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    builder: Builder | None = None, /, *, name: str | None = None, family: str = "", **defaults: Any
) -> Any:
    """Register ``builder`` under ``name`` (default: its ``__name__``) with default keyword arguments.

    Works as a plain call, ``register_model(vit, name="deit_tiny_patch16_224", embed_dim=192, num_heads=3)``,
    and as a decorator on a builder function, ``@register_model`` or ``@register_model(family="regnet")``.
    Registering a name twice is an error.
    """

    def add(fn: Builder) -> Builder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is already registered")
        _REGISTRY[key] = ModelEntry(key, fn, MappingProxyType(dict(defaults)), family)
        return fn

    return add(builder) if builder is not None else add


def _unknown_name_error(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `deitlab models` to list them"
    return ConfigError(f"unknown model {name!r}{hint}")


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name raises ``ValueError`` listing the closest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown_name_error(name) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (``*`` alone or ``deit_*``), sorted."""
    if any(ch in pattern for ch in "*?["):
        return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))
    return sorted(n for n in _REGISTRY if pattern in n)


def builder_arguments(builder: Builder) -> list[str]:
    """Keyword arguments a builder accepts (for error messages and config validation).

    Its named parameters, plus the keys of a ``**kwargs: Unpack[SomeTypedDict]`` (PEP 692): that is how the ViT
    builders share the arguments every ViT takes. A ``**kwargs`` without such an annotation accepts nothing more.
    """
    names: list[str] = []
    for p in inspect.signature(builder).parameters.values():
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind is p.VAR_KEYWORD:
            unpacked = typing.get_args(typing.get_type_hints(builder, include_extras=True).get(p.name))
            if unpacked and typing.is_typeddict(unpacked[0]):  # Unpack[TD] -> (TD,)
                names += [k for k in unpacked[0].__annotations__ if k not in names]
    return names


def create_model(name: str, *, checkpoint: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, applying ``overrides`` to its defaults, and optionally load a checkpoint.

    Args:
        name: a registered name (``deitlab models`` lists them).
        checkpoint: a deitlab ``.safetensors`` file, a timm state dict or an official DeiT ``.pth``; loaded
            without executing pickled code. A head of another class count is dropped (with a warning) only when
            ``num_classes`` is among the overrides; position embeddings are resampled to the model's grid.
        **overrides: constructor arguments, e.g. ``img_size``, ``num_classes``, ``in_chans``, ``drop_path_rate``.

    Raises:
        ConfigError: (a ``ValueError``) unknown name or unknown override.
        ValueError: an override with an invalid value.
        CheckpointError: (a ``ValueError``) a checkpoint that cannot be read or does not fit.
    """
    entry = get_model_entry(name)
    kwargs = {**entry.defaults, **overrides}
    allowed = builder_arguments(entry.builder)
    unknown = [k for k in overrides if k not in allowed]
    if unknown:
        hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        parts = [f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items()]
        raise ConfigError(f"unknown argument {', '.join(parts)} for model {name!r}; allowed: {', '.join(allowed)}")
    model = entry.builder(**kwargs)
    model.model_name = name  # type: ignore[assignment]
    model.model_kwargs = dict(overrides)  # type: ignore[assignment]  # enough to rebuild: name + overrides
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, allow_new_head="num_classes" in overrides)
    return model
