"""``deitlab <verb>``: a thin command line over the library, one module per verb.

Every error a user can cause is printed as one line, ``error: ...``, with exit code 2 for usage/config errors
and 1 for runtime failures; ``--debug`` shows the traceback instead. Failures of the machine rather than of the
input (out of memory, a collective that timed out) get one line with the likely fix (:func:`explain_runtime`).
Under ``torchrun`` only rank 0 prints: the other ranks log warnings and errors only, prefixed with their rank.

A verb module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``; adding a verb
means adding its module to :data:`VERBS`. ``train`` parses its own arguments (config files, ``--set``, DeiT flags).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.distributed

from deitlab import __version__
from deitlab.cli import demo, evaluate, models, recipes
from deitlab.cli.train import parse_train_args, run_train
from deitlab.errors import ConfigError, DeitlabError

log = logging.getLogger("deitlab")

VERBS: tuple[ModuleType, ...] = (models, evaluate, demo, recipes)
# What a library raises for bad input or a failed run, beyond DeitlabError: one line, exit code 1.
RUNTIME_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# Failures of the machine rather than of the input: what happened, and the likely fix.
_OOM_FIX = "lower --batch-size (data.batch_size; data.eval_batch_size for evaluation) or use --precision bf16"
_CPU_OOM = re.compile(r"can't allocate memory|DefaultCPUAllocator|not enough memory|Cannot allocate memory")
_TIMEOUT = re.compile(r"(?i)timed? ?out|timeout")
_DIST_WORDS = re.compile(r"(?i)\b(nccl|gloo|watchdog|collective|rendezvous|c10d)\b")
_TIMEOUT_FIX = "another process probably failed or stalled first: read its log above; NCCL_DEBUG=INFO tells more"
_DIST_FIX = "check that each process sees its GPU and the nodes reach each other (NCCL_DEBUG=INFO tells more)"


def explain_runtime(error: BaseException) -> str | None:
    """One line for an out-of-memory or distributed failure: what happened, its first line, the likely fix.
    None for anything else (a bug: the CLI then shows the traceback)."""
    if isinstance(error, MemoryError):
        return f"out of CPU memory; {_OOM_FIX}; for a large image folder set data.stream=true"
    if not isinstance(error, RuntimeError):
        return None
    text = str(error)
    first = (text.strip().splitlines() or [type(error).__name__])[0][:240]
    if isinstance(error, torch.OutOfMemoryError) or "CUDA error: out of memory" in text:
        return f"out of GPU memory ({first}); {_OOM_FIX}"
    if _CPU_OOM.search(text):
        return f"out of CPU memory ({first}); {_OOM_FIX}; for a large image folder set data.stream=true"
    distributed = isinstance(error, torch.distributed.DistError) or _DIST_WORDS.search(text)
    if distributed and _TIMEOUT.search(text):
        return f"a distributed collective timed out ({first}); {_TIMEOUT_FIX}"
    if distributed:
        return f"the process group failed ({first}); {_DIST_FIX}"
    return None


def configure_logging() -> None:
    """INFO lines on rank 0 (or a plain run); on the other ranks of a ``torchrun`` job warnings and errors only,
    prefixed with the rank, and nothing on stdout (the result table is rank 0's)."""
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(message)s")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deitlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"deitlab {__version__}")
    sub = parser.add_subparsers(dest="verb", parser_class=_Parser, metavar="VERB")
    sub.add_parser("train", help="train a model, optionally distilling from a teacher (see `deitlab train --help`)",
                   add_help=False)  # fmt: skip
    for verb in VERBS:
        p = sub.add_parser(verb.NAME, help=verb.HELP, description=verb.__doc__.splitlines()[0])
        verb.add_arguments(p)
        p.set_defaults(func=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    configure_logging()
    try:
        rest = [a for a in argv if a != "--debug"]
        if rest and rest[0] == "train":
            return run_train(rest[1:])
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DeitlabError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RUNTIME_ERRORS as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as e:
        line = explain_runtime(e)
        if debug or line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1


__all__ = ["VERBS", "build_parser", "main", "parse_train_args"]
