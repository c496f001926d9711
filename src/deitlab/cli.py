"""``deitlab <verb>``: a thin command line over the library.

Every error a user can cause is printed as one line, ``error: ...``, with exit code 2 for usage/config errors
and 1 for runtime failures; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
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


# ---- train ------------------------------------------------------------------------------------------------------
_TRAIN_FLAGS = {"-c": "config", "--config": "config", "--set": "set", "--overwrite": "overwrite", "--quiet": "quiet"}
_BOOL_ALIASES = {"model-ema"}


def parse_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``deitlab train`` arguments into config files and ``key=value`` overrides.

    Accepts ``-c FILE`` (repeatable), ``--set key=value`` (repeatable), the DeiT/timm aliases in
    :data:`deitlab.config.ALIASES` (``--lr 1e-3`` or ``--lr=1e-3``), ``--overwrite`` and ``--quiet``.
    An unknown flag is an error that suggests the closest known one.
    """
    from deitlab.config import ALIASES

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


def _cmd_train(argv: Sequence[str]) -> int:
    from deitlab.config import ALIASES, build_config
    from deitlab.engine import train

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


# ---- eval -------------------------------------------------------------------------------------------------------
def _cmd_eval(args: argparse.Namespace) -> int:
    from deitlab.engine.eval_checkpoint import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, dataset=args.data_set, data_path=args.data_path, split=args.split,
        batch_size=args.batch_size, precision=args.precision, model_name=args.model,
    )  # fmt: skip
    print(f"{report['model']} on {report['dataset']} ({report['images']} images)")
    for k, v in report["metrics"].items():
        if k.startswith(("acc", "agreement")):
            print(f"  {k:20s} {v:7.2f}%")
    return 0


# ---- demo -------------------------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from deitlab.demo import format_table, run_demo

    result = run_demo(
        quick=args.quick, output_dir=args.output_dir, dataset=args.data_set, data_path=args.data_path,
        baseline=args.baseline, progress=not args.quiet,
    )  # fmt: skip
    print()
    print(format_table(result))
    print(f"plots: {result.out_dir / 'curves.png'}, {result.out_dir / 'confusion_student.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deitlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", parser_class=_Parser, metavar="VERB")
    p = sub.add_parser("models", help="list the model registry: params, GFLOPs, image size")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern or substring, e.g. 'deit_*' or 'vit_c'")
    p.set_defaults(func=_cmd_models)
    sub.add_parser("train", help="train a model, optionally distilling from a teacher (see `deitlab train --help`)",
                   add_help=False)  # fmt: skip
    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set: per-head top-1/top-5")
    p.add_argument("checkpoint", help="a .safetensors file or a run directory")
    p.add_argument("--data-set", default=None, help="data set name (default: the one the run trained on)")
    p.add_argument("--data-path", default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--model", default=None, help="registry name, for checkpoints without deitlab metadata")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("demo", help="the main job: teacher CNN + distilled ViT on Fashion-MNIST, table and plots")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds): checks the pipeline end to end")
    p.add_argument("--baseline", action="store_true", help="also train a non-distilled student of the same budget")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--data-set", default=None, choices=("fashion_mnist", "digits", "mnist"))
    p.add_argument("--data-path", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rest = [a for a in argv if a != "--debug"]
        if rest and rest[0] == "train":
            return _cmd_train(rest[1:])
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
