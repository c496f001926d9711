"""Run configuration: typed dataclasses, YAML files, dotted overrides and DeiT/timm flag aliases.

A config is built once at the edge (CLI or caller), validated, then passed down as explicit values; nothing in
the library reads a global config. Unknown keys and flags are errors that suggest the closest valid name.

- :mod:`deitlab.config.schema`: the sections and their defaults, ``ALIASES``, ``CHOICES``, range checks
  (:func:`validate`) and what may change on resume (``RESUMABLE_KEYS``).
- :mod:`deitlab.config.parse`: YAML files, ``key=value`` overrides, saved configs, resume and YAML dumps.
"""

from deitlab.config.parse import (
    build_config,
    config_from_dict,
    dump_yaml,
    load_yaml,
    merge_dict,
    parse_override,
    resume_config,
    set_value,
)
from deitlab.config.schema import (
    ALIASES,
    CHOICES,
    RESUMABLE_KEYS,
    AugConfig,
    Config,
    DataConfig,
    DistillConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    TeacherConfig,
    TrainConfig,
    all_keys,
    changed_keys,
    get_value,
    validate,
)

__all__ = [
    "ALIASES",
    "CHOICES",
    "RESUMABLE_KEYS",
    "AugConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "TeacherConfig",
    "TrainConfig",
    "all_keys",
    "build_config",
    "changed_keys",
    "config_from_dict",
    "dump_yaml",
    "get_value",
    "load_yaml",
    "merge_dict",
    "parse_override",
    "resume_config",
    "set_value",
    "validate",
]
