"""Building a config: YAML files, dotted ``key=value`` overrides and saved run configs, type-checked on the way in.

Unknown keys and wrong types are errors that name the key, the value and the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from deitlab.config.recipes import config_source
from deitlab.config.schema import CHOICES, RESUMABLE_KEYS, Config, changed_keys, get_value, validate
from deitlab.errors import ConfigError

SUGGESTION_CUTOFF = 0.5  # difflib similarity above which a key counts as a likely typo of a real one
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


def _unknown(key: str, candidates: list[str], what: str = "config key") -> ConfigError:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=SUGGESTION_CUTOFF)
    leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], [c.rsplit(".", 1)[-1] for c in candidates], n=1)
    if not close and leaf:
        close = [c for c in candidates if c.endswith("." + leaf[0])][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {what} {key!r}{hint}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to the field's type or raise a ConfigError naming the key, value and type."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    optional = type(None) in hints
    base = next((h for h in hints if h is not type(None)), annotation) if hints else annotation
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~") and base is not str):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty; give a {getattr(base, '__name__', base)}")
    if isinstance(value, str) and value.lower() in ("none", "null") and optional:
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
                return value.lower() in TRUE_WORDS
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if origin is tuple:
            items = value if isinstance(value, list | tuple) else yaml.safe_load(f"[{value}]")
            args = typing.get_args(base)
            if len(items) != len(args):
                raise TypeError
            return tuple(_coerce(key, v, a) for v, a in zip(items, args))
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError, yaml.YAMLError):
        pass
    else:
        return value
    tname = getattr(base, "__name__", str(base)).replace("tuple", "pair")
    raise ConfigError(f"{key} expects {'an' if tname[0] in 'aeiou' else 'a'} {tname}, got {value!r}")


def _field_types(cfg: Config) -> dict[str, Any]:
    out = {}
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            out[f"{section.name}.{f.name}"] = hints[f.name]
    return out


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set dotted ``key`` (``optim.lr``; ``model.kwargs.<arg>`` for any model override) with type checking."""
    types_ = _field_types(cfg)
    if key.startswith("model.kwargs."):
        cfg.model.kwargs[key.split(".", 2)[2]] = yaml.safe_load(value) if isinstance(value, str) else value
        return
    if key not in types_:
        raise _unknown(key, list(types_))
    section, name = key.split(".")
    value = _coerce(key, value, types_[key])
    if key in CHOICES and value not in CHOICES[key]:
        close = difflib.get_close_matches(str(value), CHOICES[key], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(CHOICES[key])}{hint}")
    setattr(getattr(cfg, section), name, value)


def merge_dict(cfg: Config, data: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (a parsed YAML file) onto ``cfg``."""
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "model.kwargs" and "." not in key:
            merge_dict(cfg, v, f"{key}.")
        elif key == "model.kwargs":
            if not isinstance(v, dict):
                raise ConfigError(f"model.kwargs expects a mapping, got {v!r}")
            cfg.model.kwargs.update(v)
        else:
            set_value(cfg, key, v)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)`` (values are read as YAML scalars)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(files: list[str | Path] = (), overrides: list[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Defaults <- ``base`` <- each config (a YAML file, or the name of a shipped recipe: ``deit_small``) <- each
    ``key=value`` override, then :func:`validate`."""
    cfg = Config()
    if base:
        merge_dict(cfg, base)
    for f in files:
        source = config_source(f)
        merge_dict(cfg, source if isinstance(source, dict) else load_yaml(source))
    for o in overrides:
        set_value(cfg, *parse_override(o))
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (resume files, ``config.yaml``)."""
    cfg = Config()
    merge_dict(cfg, data)
    validate(cfg)
    return cfg


def resume_config(saved: Config, requested: Config) -> Config:
    """The saved run's config, with what the resume command set explicitly (only :data:`RESUMABLE_KEYS`)."""
    changes = changed_keys(requested)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS and get_value(saved, k) != v}
    if refused:
        k, v = next(iter(refused.items()))
        raise ConfigError(
            f"cannot change {k} (to {v!r}, was {get_value(saved, k)!r}) when resuming; only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change. Start a new run to change it."
        )
    for k, v in changes.items():
        section, name = k.split(".", 1)
        setattr(getattr(saved, section), name, v)
    validate(saved)
    return saved


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML (tuples as lists), saved beside every run."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(i) for i in v]
        if isinstance(v, dict):
            return {k: plain(i) for k, i in v.items()}
        return v

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
