"""A small model registry: ``register_model`` / ``create_model`` / ``list_models``.

An entry is a builder (a class or a function taking keyword arguments) plus the keyword arguments that make
this variant what it is. ``create_model(name, **overrides)`` merges the overrides into those defaults, checks
them against the builder's signature, builds the model and optionally loads a checkpoint.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from deitlab.errors import ConfigError
from deitlab.models.weights import load_checkpoint

Builder = Callable[..., nn.Module]
PRETRAINED_DIR_ENV = "DEITLAB_PRETRAINED_DIR"


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


def pretrained_dir() -> Path:
    """Where ``pretrained=True`` looks for weights: ``$DEITLAB_PRETRAINED_DIR``, else ``~/.cache/deitlab/pretrained``.

    deitlab downloads nothing by itself; put a model folder ``<dir>/<name>/`` (``deitlab.save_pretrained``) or a
    weights file ``<dir>/<name>.safetensors`` there to make ``create_model(name, pretrained=True)`` find it.
    """
    return Path(os.environ.get(PRETRAINED_DIR_ENV) or Path.home() / ".cache" / "deitlab" / "pretrained")


def local_weights(name: str) -> Path | None:
    """The weights file of ``name`` under :func:`pretrained_dir`, or ``None``."""
    root = pretrained_dir()
    for candidate in (root / name / "model.safetensors", root / f"{name}.safetensors", root / f"{name}.pth"):
        if candidate.is_file():
            return candidate
    return None


def list_models(
    filter: str | Sequence[str] = "*", *, pretrained: bool = False, exclude_filters: str | Sequence[str] = ()
) -> list[str]:
    """Registered names matching ``filter``, sorted, as timm's ``list_models``.

    Args:
        filter: a shell-style pattern (``deit_*``), a plain substring (``distilled``), or a list of them (any).
        pretrained: only models whose weights are available locally (:func:`pretrained_dir`; deitlab ships
            none, so this is empty until you put some there).
        exclude_filters: patterns (or substrings) of names to leave out.
    """
    includes = [filter] if isinstance(filter, str) else list(filter)
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    names = [n for n in _REGISTRY if any(_matches(n, p) for p in includes or ["*"])]
    names = [n for n in names if not any(_matches(n, p) for p in excludes)]
    if pretrained:
        names = [n for n in names if local_weights(n) is not None]
    return sorted(names)


def _matches(name: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


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


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, applying ``overrides`` to its defaults, and optionally load weights (timm's API).

    Args:
        name: a registered name (``deitlab models`` lists them).
        pretrained: load the weights found for ``name`` under :func:`pretrained_dir` (nothing is downloaded);
            none there is an error that says what to pass instead.
        checkpoint_path: a deitlab ``.safetensors`` file, a model folder, a timm state dict or an official DeiT
            ``.pth``; loaded without executing pickled code. A head of another class count is dropped (with a
            warning) only when ``num_classes`` is among the overrides; position embeddings are resampled to the
            model's grid. ``checkpoint`` is the same argument under its older name.
        **overrides: constructor arguments, e.g. ``img_size``, ``num_classes``, ``in_chans``, ``drop_path_rate``.

    Raises:
        ConfigError: (a ``ValueError``) unknown name or unknown override, both ``checkpoint`` and
            ``checkpoint_path``, or ``pretrained=True`` with no local weights.
        ValueError: an override with an invalid value.
        CheckpointError: (a ``ValueError``) a checkpoint that cannot be read or does not fit.
    """
    if checkpoint is not None and checkpoint_path is not None:
        raise ConfigError("pass checkpoint_path or checkpoint (its older name), not both")
    checkpoint_path = checkpoint_path if checkpoint_path is not None else checkpoint
    entry = get_model_entry(name)
    if pretrained and checkpoint_path is None:
        checkpoint_path = local_weights(name)
        if checkpoint_path is None:
            raise ConfigError(
                f"no pretrained weights for {name!r} are available offline (deitlab downloads nothing; looked in "
                f"{pretrained_dir()}); pass checkpoint_path=FILE or a model folder, or use "
                "deitlab.from_pretrained(DIR) for a saved model folder"
            )
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
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        if path.is_dir() and (path / "model.safetensors").is_file():  # a model folder (deitlab.save_pretrained)
            path = path / "model.safetensors"
        load_checkpoint(model, path, allow_new_head="num_classes" in overrides)
    return model
