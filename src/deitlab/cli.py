"""``deitlab <verb>``: a thin command line over the library.

Every error a user can cause is printed as one line, ``error: ...``, with exit code 2 for usage/config errors
and 1 for runtime failures; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deitlab.errors import ConfigError, DeitlabError

log = logging.getLogger("deitlab")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from deitlab.models import get_model_entry, list_models
    from deitlab.models.complexity import complexity

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no registered model matches {args.pattern!r}; run `deitlab models` to see all")
    rows = []
    for name in names:
        entry = get_model_entry(name)
        with torch.device("meta"):  # no memory, no arithmetic: shapes are enough to count
            from deitlab.models import create_model

            model = create_model(name)
        c = complexity(model)
        rows.append((name, entry.family, f"{c.mparams:.2f}M", f"{c.gflops:.2f}", f"{c.img_size[0]}"))
    header = ("model", "family", "params", "GFLOPs", "img")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(f"{len(rows)} models; GFLOPs are multiply-adds per image at the default size, as the papers count them")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deitlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", parser_class=_Parser, metavar="VERB")
    p = sub.add_parser("models", help="list the model registry: params, GFLOPs, image size")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern or substring, e.g. 'deit_*' or 'vit_c'")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
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
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
