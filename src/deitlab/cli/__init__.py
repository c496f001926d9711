"""``deitlab <verb>``: a thin command line over the library, one module per verb.

Every error a user can cause is printed as one line, ``error: ...``, with exit code 2 for usage/config errors
and 1 for runtime failures; ``--debug`` shows the traceback instead.

A verb module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``; adding a verb
means adding its module to :data:`VERBS`. ``train`` parses its own arguments (config files, ``--set``, DeiT flags).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from deitlab import __version__
from deitlab.cli import analyze, demo, evaluate, models, sweep
from deitlab.cli.train import parse_train_args, run_train
from deitlab.errors import ConfigError, DeitlabError

log = logging.getLogger("deitlab")

VERBS: tuple[ModuleType, ...] = (models, evaluate, demo, analyze, sweep)
# What a library raises for bad input or a failed run, beyond DeitlabError: one line, exit code 1.
RUNTIME_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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


__all__ = ["VERBS", "build_parser", "main", "parse_train_args"]
