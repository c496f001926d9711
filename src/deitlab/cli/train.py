"""``deitlab train``: config files or shipped recipes, ``--set key=value`` overrides and DeiT/timm flag aliases -> one
training run (or, with ``--print-config``, the resolved config)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from deitlab.config import ALIASES, build_config, dump_yaml
from deitlab.config.help import keys_help
from deitlab.engine import train
from deitlab.errors import ConfigError

_TRAIN_FLAGS = {"-c": "config", "--config": "config", "--set": "set", "--overwrite": "overwrite", "--quiet": "quiet",
                "--print-config": "print-config"}  # fmt: skip
_BOOL_ALIASES = {"model-ema"}


def parse_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``deitlab train`` arguments into configs (files or recipe names) and ``key=value`` overrides.

    Accepts ``-c FILE|RECIPE`` (repeatable), ``--set key=value`` (repeatable), the DeiT/timm aliases in
    :data:`deitlab.config.ALIASES` (``--lr 1e-3`` or ``--lr=1e-3``), ``--overwrite``, ``--quiet`` and
    ``--print-config`` (handled by :func:`run_train`). An unknown flag is an error that suggests the closest known one.
    """
    files: list[str] = []
    overrides: list[str] = []
    args = list(argv)
    i = 0
    known = sorted([*_TRAIN_FLAGS, *(f"--{a}" for a in ALIASES), "--debug"])
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        takes_next = (
            not eq and i + 1 < len(args) and not (args[i + 1].startswith("--") and not args[i + 1][2:3].isdigit())
        )
        nxt = inline if eq else (args[i + 1] if takes_next else None)

        def value(flag: str = flag, nxt: str | None = nxt, eq: str = eq) -> str:
            nonlocal i
            if nxt is None:
                raise ConfigError(f"{flag} needs a value")
            if not eq:
                i += 1
            return nxt

        if flag in ("--debug", "--print-config"):
            pass
        elif flag in ("-c", "--config"):
            files.append(value())
        elif flag == "--set":
            overrides.append(value())
        elif flag == "--overwrite":
            overrides.append("train.overwrite=true")
        elif flag == "--quiet":
            overrides.append("train.progress=false")
        elif flag.startswith("--") and flag[2:] in ALIASES:
            name = flag[2:]
            if name in _BOOL_ALIASES and not eq and (i + 1 >= len(args) or args[i + 1].startswith("-")):
                overrides.append(f"{ALIASES[name]}=true")
            else:
                overrides.append(f"{ALIASES[name]}={value()}")
        else:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else "; see `deitlab train --help`"
            raise ConfigError(f"unknown flag {flag!r}{hint}")
        i += 1
    return files, overrides


_TRAIN_HELP = """usage: deitlab train [-c FILE|RECIPE]... [--set key=value]... [DeiT flags] [--finetune WEIGHTS]
                     [--overwrite] [--quiet] [--print-config] [--debug]

Train a model (optionally distilling from a teacher). -c takes a YAML file or the name of a recipe shipped with
deitlab (`deitlab recipes` lists them: DeiT-Ti/S/B with and without distillation, the 384 px fine-tunes, ViT_C,
DeepViT, the demo's); later -c files, then --set and flags, override earlier values. --print-config prints the
resolved config as YAML and exits. --finetune WEIGHTS starts from a trained model at the model's img_size
(position embeddings resampled, a new head when the class count differs, a plain checkpoint starts a distilled
student). --batch-size is the GLOBAL batch (all processes together); the lr is scaled by batch/512 unless
optim.scale_lr=false.

Config keys (section.key, default, meaning [DeiT/timm flag]); set any with --set key=value:
{keys}
"""


def run_train(argv: Sequence[str]) -> int:
    """``deitlab train ...`` (its own parser: config files or recipes, ``--set`` overrides and DeiT flag aliases)."""
    if any(a in ("-h", "--help") for a in argv):
        print(_TRAIN_HELP.format(keys=keys_help()))
        return 0
    files, overrides = parse_train_args(argv)
    cfg = build_config(files, overrides)
    if "--print-config" in argv:
        print(dump_yaml(cfg), end="")
        return 0
    result = train(cfg)
    if result.stopped_early:
        print(f"stopped; resume with: deitlab train --resume {result.run_dir}")
        return 0
    _print_metrics(result.final, result.teacher, result.splits)
    print(f"run directory: {result.run_dir}")
    return 0


def _print_metrics(final: dict[str, float], teacher: dict[str, float], splits: dict[str, str | None]) -> None:
    """The final accuracies, each with the split it was measured on (``test_*`` may be ``val``: an image folder
    without ``test/``)."""

    def split_of(key: str) -> str:
        split = splits.get("test" if "test_" in key else "eval")
        return f"  ({split} split)" if split else ""

    prefixes = ("acc", "test_acc", "ema_acc", "test_ema_acc", "agreement", "test_agreement")
    keys = [k for k in final if k.startswith(prefixes)]
    keys = [k for k in keys if "acc5" not in k]
    for k in keys:
        print(f"  {k:28s} {final[k]:7.2f}%{split_of(k)}")
    for k in ("teacher_acc", "teacher_test_acc"):
        if k in teacher:
            print(f"  {k:28s} {teacher[k]:7.2f}%{split_of(k)}")
