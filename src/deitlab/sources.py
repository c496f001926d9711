"""Where a model comes from: :func:`resolve_model`, the one resolver behind every verb that takes a model
(``eval``, ``predict``, ``export``, ``--teacher-path``, the analysis verbs).

A source is one of:

- a **run directory**: its ``model_best/`` model folder, else ``model/`` (``prefer="final"`` swaps them), else the
  run's ``best.safetensors`` / ``model.safetensors`` (runs written before model folders existed);
- a **model folder** (``config.json`` + ``model.safetensors``, :func:`deitlab.save_pretrained`), or its files;
- a **weights file** (``.safetensors``, ``.pth``, ``.pt``, ``.bin``): deitlab files name their model; timm and
  official DeiT files need ``model_name``. Inside a run directory it borrows that run's preprocessing and class
  names (from ``<run>/model/config.json``);
- ``timm:NAME=FILE`` (or ``torchvision:NAME=FILE``): that library's architecture (installed separately) with the
  weights of a local file, read without pickled code; classes and channels are taken from the file;
- an ``http(s)://`` URL of a weights file: downloaded once into ``$DEITLAB_CACHE`` (default
  ``~/.cache/deitlab``); without a network this is one error line that says to download it yourself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.errors import CheckpointError, ConfigError, DeitlabError
from deitlab.io import atomic_write_bytes, read_checkpoint
from deitlab.models import create_model
from deitlab.predictor import Predictor
from deitlab.preprocess import Preprocessing
from deitlab.pretrained import CONFIG_NAME, WEIGHTS_NAME, card_from_config, from_pretrained, read_config

log = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://")
FOREIGN_LIBS = ("timm", "torchvision")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
RUN_FOLDERS = {"best": ("model_best", "model"), "final": ("model", "model_best")}
RUN_WEIGHTS = {"best": ("best.safetensors", "model.safetensors"), "final": ("model.safetensors", "best.safetensors")}
DOWNLOAD_TIMEOUT_S = 30
CACHE_ENV = "DEITLAB_CACHE"
HEAD_KEYS = ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight")
SOURCE_HELP = (
    "a run directory, a model folder (config.json + model.safetensors), a .safetensors/.pth file, "
    "timm:NAME=FILE, or an http(s) URL"
)


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


def split_foreign(source: str) -> tuple[str, str, str | None] | None:
    """``"timm:NAME=FILE"`` -> ``("timm", "NAME", "FILE")``; ``"timm:NAME"`` -> ``("timm", "NAME", None)``;
    anything else -> ``None``."""
    lib, sep, rest = source.partition(":")
    if not sep or lib not in FOREIGN_LIBS:
        return None
    arch, eq, path = rest.partition("=")
    if not arch:
        raise ConfigError(f"{source!r}: name the architecture, e.g. {lib}:resnet18=weights.pth")
    return lib, arch, (path if eq else None)


def resolve_model(
    source: str | Path,
    *,
    model_name: str | None = None,
    prefer: str = "best",
    in_chans: int | None = None,
    img_size: int | None = None,
    device: torch.device | str = "cpu",
) -> Predictor:
    """The model a source names (see the module docstring), in eval mode, with whatever preprocessing and class
    names the source records (``preprocessing`` is ``None`` for a bare weights file outside a run).

    Args:
        source: the run, folder, file, ``timm:NAME=FILE`` or URL.
        model_name: the registry name (or ``timm:NAME``) for weights files that do not record it; it also
            overrides a file's own name.
        prefer: ``"best"`` (best evaluated epoch) or ``"final"`` (last epoch) for a run directory.
        in_chans, img_size: defaults for weights files that do not record them (a teacher: the data's).
        device: where the model goes.

    Raises:
        CheckpointError: nothing there, an unreadable or unfitting file, a failed download.
        ConfigError: a source of unknown kind, an unknown model, an optional library that is not installed.
    """
    if prefer not in RUN_FOLDERS:
        raise ConfigError(f"prefer={prefer!r} is not one of {', '.join(RUN_FOLDERS)}")
    text = str(source)
    if is_url(text):
        return _from_weights(download(text), model_name, in_chans, img_size).to(device)
    foreign = split_foreign(text) or (split_foreign(f"{model_name}={text}") if model_name else None)
    if foreign:
        return _from_foreign(*foreign).to(device)
    path = Path(source)
    if path.is_dir():
        return _from_directory(path, model_name, prefer, in_chans, img_size).to(device)
    if path.is_file():
        in_folder = path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).is_file() and model_name is None
        if path.name == CONFIG_NAME or in_folder:
            return from_pretrained(path.parent, device=device)
        return _from_weights(path, model_name, in_chans, img_size).to(device)
    raise CheckpointError(f"checkpoint not found: {source} (expected {SOURCE_HELP})")


def weights_path(source: str | Path, *, prefer: str = "best") -> Path:
    """The weights file a source names, without building a model: a run directory's ``model_best/`` (or ``model/``,
    or its older ``*.safetensors``), a model folder's ``model.safetensors``, a weights file itself, or a URL's
    download (``--finetune`` takes these).

    Raises:
        CheckpointError: nothing there, or a folder with neither a model folder nor weights inside.
    """
    if is_url(str(source)):
        return download(str(source))
    path = Path(source)
    if path.is_file():
        return path.parent / WEIGHTS_NAME if path.name == CONFIG_NAME else path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {source} (expected {SOURCE_HELP})")
    candidates = [path / WEIGHTS_NAME, *(path / d / WEIGHTS_NAME for d in RUN_FOLDERS[prefer])]
    found = next((c for c in [*candidates, *(path / n for n in RUN_WEIGHTS[prefer])] if c.is_file()), None)
    if found is None:
        raise CheckpointError(f"{path} holds no weights: expected {SOURCE_HELP}")
    return found


def _from_directory(
    path: Path, model_name: str | None, prefer: str, in_chans: int | None, img_size: int | None
) -> Predictor:
    if (path / CONFIG_NAME).is_file():
        return from_pretrained(path)
    for name in RUN_FOLDERS[prefer]:
        if (path / name / CONFIG_NAME).is_file():
            predictor = from_pretrained(path / name)
            prov = predictor.config.get("provenance", {})
            log.info(
                "using %s (%s epochs, %s weights)",
                path / name,
                prov.get("epochs_trained", "?"),
                prov.get("weights", "?"),
            )
            return predictor
    for name in RUN_WEIGHTS[prefer]:
        if (path / name).is_file():
            return _from_weights(path / name, model_name, in_chans, img_size)
    raise CheckpointError(
        f"{path} is neither a model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a run directory (model_best/, "
        "model/, best.safetensors or model.safetensors)"
    )


def _from_weights(path: Path, model_name: str | None, in_chans: int | None, img_size: int | None) -> Predictor:
    """A registry model from a weights file; preprocessing and class names from the run it sits in, if any."""
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path} is not a weights file ({', '.join(WEIGHT_SUFFIXES)}); expected {SOURCE_HELP}")
    state, meta = read_checkpoint(path)
    saved = meta.get("model")
    name = model_name or saved
    if not name:
        raise ConfigError(f"{path} does not say which model it holds; pass the registry name (--model NAME)")
    kwargs: dict[str, Any] = _json(meta.get("model_kwargs"), path) if name == saved else {}
    kwargs = {**inferred_shape_args(name, state, kwargs, in_chans, img_size), **kwargs}
    try:
        model = create_model(name, checkpoint_path=path, **kwargs)
    except ConfigError:
        raise
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit {name}: {str(e).splitlines()[0]}") from None
    preprocessing, labels, config = _run_card(path.parent)
    if labels is not None and len(labels) != getattr(model, "num_classes", len(labels)):
        preprocessing, labels, config = None, None, {}  # the run's card describes another model
    return Predictor(model, preprocessing, labels, source=str(path), config=config)


def inferred_shape_args(
    name: str, state: dict[str, torch.Tensor], known: dict[str, Any], in_chans: int | None, img_size: int | None
) -> dict[str, Any]:
    """``num_classes`` and ``in_chans`` as the weights have them (so the model is built like the file), and the
    callers' ``in_chans``/``img_size`` defaults; arguments the file records (``known``) win over all of these."""
    out: dict[str, Any] = {}
    if img_size is not None:
        out["img_size"] = img_size
    if in_chans is not None:
        out["in_chans"] = in_chans
    head = next((state[k] for k in HEAD_KEYS if k in state and state[k].ndim == 2), None)
    if head is not None and "num_classes" not in known:
        out["num_classes"] = int(head.shape[0])
    if "in_chans" not in known:
        with torch.device("meta"):
            probe = create_model(name, **{k: v for k, v in {**out, **known}.items() if k != "in_chans"})
        first_conv = next((k for k, v in probe.state_dict().items() if v.ndim == 4), None)
        if first_conv in state:
            out["in_chans"] = int(state[first_conv].shape[1])
    return out


def _json(text: str | None, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its model_kwargs metadata is not JSON") from None
    return value if isinstance(value, dict) else {}


def _run_card(directory: Path) -> tuple[Preprocessing | None, list[str] | None, dict[str, Any]]:
    """The preprocessing and class names of the run (or model folder) ``directory``, when it records them."""
    for folder in (directory, directory / "model", directory / "model_best"):
        if (folder / CONFIG_NAME).is_file():
            try:
                config = read_config(folder)
            except (ConfigError, CheckpointError) as e:  # not ours, or damaged: the weights still load
                log.warning("ignoring %s: %s", folder / CONFIG_NAME, e)
                continue
            card = card_from_config(config)
            return card.preprocessing, card.label_names, config
    return None, None, {}


def _from_foreign(lib: str, arch: str, path: str | None) -> Predictor:
    """A timm or torchvision classifier built to the shapes of the weights in ``path``."""
    source = f"{lib}:{arch}"
    if path is None:
        raise ConfigError(
            f"{source} has no weights (deitlab downloads none): give a local file as {source}=FILE "
            f"(or --teacher-model {source} --teacher-path FILE)"
        )
    if is_url(path):
        path = str(download(path))
    state, _ = read_checkpoint(path)
    try:
        model = _build_foreign(lib, arch, state)
        model.load_state_dict(state)
    except ImportError as e:
        raise ConfigError(f"{source} needs the optional package {lib!r} (pip install 'deitlab[timm]'): {e}") from None
    except DeitlabError:
        raise
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{source} cannot load {path}: {str(e).splitlines()[0][:300]}") from None
    return Predictor(model, _timm_preprocessing(model), None, source=f"{source}={path}")


def _build_foreign(lib: str, arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    if lib == "torchvision":
        import torchvision  # optional extra

        head = next((state[k] for k in HEAD_KEYS if k in state and state[k].ndim == 2), None)
        kw = {"num_classes": int(head.shape[0])} if head is not None else {}
        return torchvision.models.get_model(arch, weights=None, **kw)
    import timm  # optional extra

    try:
        probe = timm.create_model(arch, pretrained=False)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"timm:{arch}: {str(e).splitlines()[0]}") from None
    cfg = getattr(probe, "pretrained_cfg", {}) or {}
    kw: dict[str, Any] = {}
    classifier = cfg.get("classifier")
    first_conv = cfg.get("first_conv")
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        kw["num_classes"] = int(state[f"{classifier}.weight"].shape[0])
    if isinstance(first_conv, str) and f"{first_conv}.weight" in state:
        kw["in_chans"] = int(state[f"{first_conv}.weight"].shape[1])
    return timm.create_model(arch, pretrained=False, **kw) if kw else probe


def _timm_preprocessing(model: nn.Module) -> Preprocessing | None:
    """A timm model's own ``pretrained_cfg`` as deitlab preprocessing (``None`` when it has none)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or "input_size" not in cfg:
        return None
    c = int(getattr(model, "in_chans", cfg["input_size"][0]))
    mean, std = tuple(cfg.get("mean", ()))[:c], tuple(cfg.get("std", ()))[:c]
    try:
        return Preprocessing(
            input_size=(c, *map(int, cfg["input_size"][1:])), mean=mean, std=std,
            interpolation=cfg.get("interpolation", "bicubic"), crop_pct=float(cfg.get("crop_pct", 1.0)),
            color_mode="L" if c == 1 else "RGB",
        )  # fmt: skip
    except ConfigError:
        return None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "deitlab")


def download(url: str) -> Path:
    """The local copy of ``url`` (downloaded once, atomically, into :func:`cache_dir`/downloads).

    Raises:
        CheckpointError: the download failed (no network, HTTP error); the message says to fetch it by hand.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "weights"
    target = cache_dir() / "downloads" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        return target
    log.info("downloading %s -> %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(
            f"cannot download {url} ({reason}); without a network, download it elsewhere and pass the local file"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return target
