"""Where :func:`deitlab.optimize_for` keeps its measurements: one JSON file per machine user.

``$DEITLAB_CACHE/optimize.json`` (default ``~/.cache/deitlab``; ``DEITLAB_CACHE=off`` disables it). An entry is
keyed by everything its timings depend on: the processor or GPU model, the torch version, the thread count, the
model (registry name + constructor overrides, or class + parameter shapes), the batch shape and layout, the mode and
the settings that were fixed by the caller. torch.compile's own artefacts (inductor's FX graph cache) go to
``$DEITLAB_CACHE/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.io import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_ENV = "DEITLAB_CACHE"
CACHE_FILE = "optimize.json"
FORMAT = 1
MAX_ENTRIES = 500  # oldest entries are dropped beyond this
_CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "avx2")


def cache_root() -> Path | None:
    """The cache directory, or None when ``DEITLAB_CACHE`` is ``off``/``none``/``0``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("off", "none", "0", "false"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "deitlab"


@cache
def cpu_name() -> str:
    """The processor model with its family/model/stepping and the matrix-unit flags that decide bf16 speed (a VM
    may report only "AMD EPYC", and hide flags its host has)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name and name not in fields:
                fields[name] = value.strip()
            if not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        return platform.processor() or platform.machine()
    model = fields.get("model name", platform.processor() or platform.machine())
    ident = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    flags = set(fields.get("flags", "").split())
    isa = " ".join(f for f in _CPU_FLAGS if f in flags)
    return f"{model} ({ident}; {isa})" if ident or isa else model


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def model_identity(model: nn.Module) -> dict[str, Any]:
    """A deitlab model's registry name and constructor overrides; any other module's class and parameter shapes."""
    name = getattr(model, "model_name", None)
    if name is not None:
        return {"name": name, "kwargs": getattr(model, "model_kwargs", {})}
    shapes = ";".join(f"{k}:{tuple(p.shape)}" for k, p in model.named_parameters())
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:16]
    return {"name": f"{type(model).__module__}.{type(model).__qualname__}", "shapes": digest}


def cache_key(model: nn.Module, example: torch.Tensor, mode: str, requested: dict[str, Any]) -> dict[str, Any]:
    """Everything the measured times depend on (JSON-safe)."""
    device = example.device
    channels_last = example.ndim == 4 and example.is_contiguous(memory_format=torch.channels_last)
    key = {
        "machine": machine_name(device),
        "device": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "model": model_identity(model),
        "batch": list(example.shape),
        "dtype": str(example.dtype).removeprefix("torch."),
        "channels_last": bool(channels_last and not example.is_contiguous()),
        "mode": mode,
        "requested": requested,
    }
    return json.loads(json.dumps(key, default=str))  # tuples -> lists, odd values -> str: compares as stored


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class TuneCache:
    """The JSON file of measured plans; a missing, unreadable or foreign-format file is an empty cache."""

    def __init__(self, root: Path) -> None:
        self.path = root / CACHE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable tuning cache %s (%s); it will be rewritten", self.path, e)
            return {}
        entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FORMAT else None
        return entries if isinstance(entries, dict) else {}

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        entry = self._load().get(key_id(key))
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("plan"), dict):
            return entry["plan"]
        return None

    def put(self, key: dict[str, Any], plan: dict[str, Any]) -> None:
        entries = self._load()
        entries[key_id(key)] = {"key": key, "plan": plan, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if len(entries) > MAX_ENTRIES:
            oldest = sorted(entries, key=lambda k: str(entries[k].get("saved", "")))
            for k in oldest[: len(entries) - MAX_ENTRIES]:
                del entries[k]
        payload = {"format": FORMAT, "entries": entries}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(payload, indent=1).encode())
        except OSError as e:  # a read-only home must not stop a run
            log.warning("could not write the tuning cache %s: %s", self.path, e)


def open_cache(enabled: bool = True) -> TuneCache | None:
    root = cache_root() if enabled else None
    return TuneCache(root) if root is not None else None


def use_inductor_cache() -> None:
    """Keep torch.compile's artefacts beside ours (persistent across reboots, unlike the default under /tmp)."""
    root = cache_root()
    if root is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
