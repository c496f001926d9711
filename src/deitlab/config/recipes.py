"""Recipes shipped inside the package: YAML configs under ``deitlab/recipes/``, read with ``importlib.resources`` (so
they work from a wheel, a zip or a source checkout alike), usable as ``deitlab train -c NAME``.

A recipe's first line is a comment with its one-line description (``deitlab recipes`` lists them); the following
comment lines say where its values come from, the command, and the time and result it should give.
"""

from __future__ import annotations

import difflib
from importlib import resources

try:  # Python >= 3.11; importlib.abc.Traversable is deprecated there
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from deitlab.errors import ConfigError

RECIPE_PACKAGE, RECIPE_FOLDER, RECIPE_SUFFIX = "deitlab", "recipes", ".yaml"


def _folder() -> Traversable:
    return resources.files(RECIPE_PACKAGE).joinpath(RECIPE_FOLDER)


def recipe_names() -> list[str]:
    """The shipped recipes, sorted."""
    return sorted(f.name[: -len(RECIPE_SUFFIX)] for f in _folder().iterdir() if f.name.endswith(RECIPE_SUFFIX))


def _unknown_recipe(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, recipe_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(
        f"no config file or recipe named {name!r}{hint} (recipes: {', '.join(recipe_names())}; `deitlab recipes` "
        "describes them)"
    )


def recipe_text(name: str) -> str:
    """The YAML text of recipe ``name`` (with its comments); an unknown name lists the close matches."""
    entry = _folder().joinpath(name + RECIPE_SUFFIX)
    if name not in recipe_names():
        raise _unknown_recipe(name)
    return entry.read_text(encoding="utf-8")


def recipe_description(name: str) -> str:
    """The recipe's one-line description: its first comment line."""
    first = recipe_text(name).lstrip().splitlines()[0]
    return first.lstrip("#").strip() if first.startswith("#") else ""


def load_recipe(name: str) -> dict[str, Any]:
    """Recipe ``name`` parsed into the nested mapping a config is built from."""
    data = yaml.safe_load(recipe_text(name)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name} must hold a mapping of sections")  # a packaging bug, not user input
    return data


def is_recipe_name(source: str | Path) -> bool:
    """Whether ``-c source`` means a recipe: no such file, and a bare name (no folder, no ``.yaml``/``.yml``)."""
    text = str(source)
    return not (Path(text).exists() or "/" in text or "\\" in text or text.endswith((".yaml", ".yml")))


def config_source(source: str | Path) -> dict[str, Any] | Path:
    """``-c`` argument -> a recipe's mapping, or the path of a YAML file (read by the caller)."""
    if is_recipe_name(source):
        if str(source) in recipe_names():
            return load_recipe(str(source))
        raise _unknown_recipe(str(source))
    return Path(source)
