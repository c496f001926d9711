"""``deitlab train``: config files, ``--set key=value`` overrides and DeiT/timm flag aliases -> one training run."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from deitlab.config import ALIASES, build_config
from deitlab.engine import train
from deitlab.errors import ConfigError

_TRAIN_FLAGS = {"-c": "config", "--config": "config", "--set": "set", "--overwrite": "overwrite", "--quiet": "quiet"}
_BOOL_ALIASES = {"model-ema"}


def parse_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``deitlab train`` arguments into config files and ``key=value`` overrides.

    Accepts ``-c FILE`` (repeatable), ``--set key=value`` (repeatable), the DeiT/timm aliases in
    :data:`deitlab.config.ALIASES` (``--lr 1e-3`` or ``--lr=1e-3``), ``--overwrite`` and ``--quiet``.
    An unknown flag is an error that suggests the closest known one.
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

        if flag == "--debug":
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


_TRAIN_HELP = """usage: deitlab train [-c FILE]... [--set key=value]... [DeiT flags] [--overwrite] [--quiet] [--debug]

Train a model (optionally distilling from a teacher). Configs are YAML files with sections model, teacher,
distill, data, aug, optim, train (see src/deitlab/configs/); --set overrides any key, e.g. --set optim.lr=1e-3.
DeiT/timm flags work as aliases: {aliases}.
--batch-size is the GLOBAL batch (all processes together); the lr is scaled by batch/512 unless optim.scale_lr=false.
"""


def run_train(argv: Sequence[str]) -> int:
    """``deitlab train ...`` (its own parser: config files, ``--set`` overrides and DeiT flag aliases)."""
    if any(a in ("-h", "--help") for a in argv):
        print(_TRAIN_HELP.format(aliases=", ".join(f"--{a}" for a in ALIASES)))
        return 0
    files, overrides = parse_train_args(argv)
    cfg = build_config(files, overrides)
    result = train(cfg)
    if result.stopped_early:
        print(f"stopped; resume with: deitlab train --resume {result.run_dir}")
        return 0
    _print_metrics(result.final, result.teacher)
    print(f"run directory: {result.run_dir}")
    return 0


def _print_metrics(final: dict[str, float], teacher: dict[str, float]) -> None:
    keys = [k for k in final if k.startswith(("acc", "test_acc", "ema_acc", "agreement", "test_agreement"))]
    keys = [k for k in keys if "acc5" not in k]
    for k in keys:
        print(f"  {k:28s} {final[k]:7.2f}%")
    for k in ("teacher_acc", "teacher_test_acc"):
        if k in teacher:
            print(f"  {k:28s} {teacher[k]:7.2f}%")
