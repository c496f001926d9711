"""Model folders (Hugging Face / timm style): ``config.json`` + ``model.safetensors``.

``config.json`` holds what it takes to rebuild the model and use it:

- ``architecture`` (the registry name) and ``model_args`` (its keyword arguments), as timm's hub files name them;
  ``num_classes``; ``label_names`` (class names, index = class, or ``null``);
- ``pretrained_cfg``: the preprocessing in timm's field names (``input_size`` (C, H, W), ``mean``, ``std``,
  ``interpolation``, ``crop_pct``, ``crop_mode``), and ``preprocessing``: deitlab's additions (``color_mode``
  L/RGB, ``native_size``: the data's own image size before padding, ``pad``) -- see :mod:`deitlab.preprocess`;
- ``deitlab_version`` and ``provenance`` (free-form: run directory, data set, epoch, ``weights`` raw or ema,
  evaluation and test accuracy);
- ``format`` / ``format_version``.

Both files are written atomically (:mod:`deitlab.io`), weights first. Reading is strict: an unknown key, a
missing weights file, an unknown architecture or a tensor that does not fit is one clear error.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.errors import CheckpointError, ConfigError
from deitlab.io import atomic_write_bytes, read_checkpoint, save_weights
from deitlab.models import create_model, get_model_entry
from deitlab.predictor import Predictor
from deitlab.preprocess import DEITLAB_FIELDS, TIMM_FIELDS, Preprocessing
from deitlab.version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "deitlab.model"
FORMAT_VERSION = 1
KEYS = (
    "format", "format_version", "architecture", "model_args", "num_classes", "label_names", "pretrained_cfg",
    "preprocessing", "deitlab_version", "provenance",
)  # fmt: skip
REQUIRED = ("architecture", "model_args", "num_classes", "pretrained_cfg")


@dataclass
class ModelCard:
    """What a model folder records besides the weights: preprocessing, class names, provenance."""

    preprocessing: Preprocessing
    label_names: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` the model takes: its stem's channels and its recorded image size (registry models)."""
    stem = getattr(model, "patch_embed", model)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_chans = int(getattr(stem, "in_chans", conv.in_channels if conv is not None else 3))
    size = getattr(stem, "img_size", None) or getattr(model, "img_size", None)
    if size is None:
        size = get_model_entry(model.model_name).img_size if getattr(model, "model_name", None) else 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return in_chans, int(h), int(w)


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a model folder (``config.json`` + ``model.safetensors``) and return the folder.

    Args:
        model: built by :func:`deitlab.create_model` (which records ``model_name`` and ``model_kwargs``).
        directory: created if missing; existing files of the same names are replaced atomically.
        preprocessing: a :class:`~deitlab.preprocess.Preprocessing` or its dict; ``None`` records
            :meth:`Preprocessing.default_for` the model's channels and size (timm's defaults).
        label_names: one name per class.
        provenance: free-form JSON-able facts (run, epoch, weights raw/ema, accuracies).

    Raises:
        ConfigError: a model not built by the registry, or class names that do not match its classes.
        CheckpointError: the folder cannot be written.
    """
    if not getattr(model, "model_name", None):
        raise ConfigError(
            f"save_pretrained needs a model built by deitlab.create_model (got {type(model).__name__} without "
            "model_name): a folder must say which registry model to rebuild"
        )
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    c, h, w = model_input_size(model)
    card = ModelCard(
        preprocessing or Preprocessing.default_for(c, (h, w)),
        list(label_names) if label_names is not None else None,
        dict(provenance or {}),
    )
    config = build_config(model, card)
    validate_config(config, where="save_pretrained")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create model folder {directory}: {e.strerror or e}") from None
    save_weights(model, directory / WEIGHTS_NAME, extra={"label_names": card.label_names})
    write_config(directory, config)
    return directory


def build_config(model: nn.Module, card: ModelCard) -> dict[str, Any]:
    """The ``config.json`` contents for ``model`` and ``card``."""
    prep = card.preprocessing.to_dict()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.model_name,
        "model_args": dict(getattr(model, "model_kwargs", {})),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "label_names": card.label_names,
        "pretrained_cfg": {k: prep[k] for k in TIMM_FIELDS},
        "preprocessing": {k: prep[k] for k in DEITLAB_FIELDS},
        "deitlab_version": __version__,
        "provenance": {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **card.provenance},
    }


def write_config(directory: str | Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    atomic_write_bytes(Path(directory) / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())


def update_provenance(directory: str | Path, **facts: Any) -> None:
    """Add ``facts`` to a model folder's provenance (e.g. the test accuracy, known only after the final test)."""
    config = read_config(directory)
    config["provenance"] = {**config.get("provenance", {}), **facts}
    write_config(directory, config)


def read_config(directory: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a model folder.

    Raises:
        CheckpointError: no such file, or not JSON.
        ConfigError: unknown or missing keys, wrong types, class names that do not match.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model folder: it has no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    validate_config(config, where=str(path))
    return config


def validate_config(config: Any, *, where: str) -> None:
    """Check a ``config.json`` mapping: known keys only, the required ones present, consistent values."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(config).__name__}")
    unknown = [k for k in config if k not in KEYS]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, KEYS, 1)) else "")
                 for k in unknown]  # fmt: skip
        raise ConfigError(f"{where}: unknown key {', '.join(hints)}; allowed: {', '.join(KEYS)}")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    if config.get("format", FORMAT) != FORMAT or config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ConfigError(
            f"{where}: format {config.get('format')!r} version {config.get('format_version')} is not "
            f"{FORMAT!r} <= {FORMAT_VERSION} (written by a newer deitlab? upgrade it)"
        )
    for key, kind in (("model_args", dict), ("pretrained_cfg", dict), ("preprocessing", dict), ("provenance", dict)):
        if key in config and not isinstance(config[key], kind):
            raise ConfigError(f"{where}: {key} must be a JSON object, got {type(config[key]).__name__}")
    names, n = config.get("label_names"), config["num_classes"]
    if names is not None and (not isinstance(names, list) or len(names) != n):
        raise ConfigError(f"{where}: label_names must list {n} names (num_classes), got {names!r:.80}")
    card_from_config(config, where=where)


def card_from_config(config: dict[str, Any], *, where: str = CONFIG_NAME) -> ModelCard:
    """The :class:`ModelCard` a ``config.json`` mapping describes."""
    bad = [k for k in config["pretrained_cfg"] if k not in TIMM_FIELDS]
    if bad:
        raise ConfigError(f"{where}: unknown pretrained_cfg field(s) {', '.join(bad)}; allowed: {TIMM_FIELDS}")
    prep = Preprocessing.from_dict({**config["pretrained_cfg"], **config.get("preprocessing", {})}, where=where)
    return ModelCard(prep, config.get("label_names"), dict(config.get("provenance", {})))


def load_exact(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` requiring the same keys and shapes (no resampling, no dropped heads).

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / mis-shaped tensors (listed).
    """
    state, _ = read_checkpoint(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    problems = shapes[:3] + [f"{len(shapes) - 3} more shape mismatches"] * (len(shapes) > 3)
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{label} {len(keys)} tensors ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{path} does not fit {name}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def from_pretrained(directory: str | Path, *, device: torch.device | str = "cpu") -> Predictor:
    """Load a model folder: the model (eval mode, on ``device``) with its preprocessing and class names.

    ``directory`` may also be the folder's ``config.json`` or ``model.safetensors``.

    Raises:
        CheckpointError: not a model folder, weights missing or not fitting the architecture.
        ConfigError: unknown key in ``config.json``, unknown architecture or model argument.
    """
    directory = Path(directory)
    if directory.is_file() and directory.name in (CONFIG_NAME, WEIGHTS_NAME):
        directory = directory.parent
    if not directory.exists():
        raise CheckpointError(f"model folder not found: {directory}")
    config = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"model folder {directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    name, kwargs = config["architecture"], config["model_args"]
    try:
        model = create_model(name, **kwargs)
    except ConfigError as e:
        raise ConfigError(f"{directory / CONFIG_NAME}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{directory / CONFIG_NAME}: model_args do not build {name}: {e}") from None
    if int(getattr(model, "num_classes", config["num_classes"])) != config["num_classes"]:
        raise ConfigError(f"{directory / CONFIG_NAME}: num_classes={config['num_classes']} but {name} has "
                          f"{model.num_classes} (model_args disagree)")  # fmt: skip
    load_exact(model, weights)
    card = card_from_config(config, where=str(directory / CONFIG_NAME))
    return Predictor(model.to(device), card.preprocessing, card.label_names, source=str(directory), config=config)
