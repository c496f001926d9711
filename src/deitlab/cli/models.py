"""``deitlab models [PATTERN]``: the registry with parameters, GFLOPs and image size."""

from __future__ import annotations

import argparse

import torch

from deitlab.errors import ConfigError
from deitlab.models import create_model, get_model_entry, list_models
from deitlab.models.complexity import complexity

NAME = "models"
HELP = "list the model registry: params, GFLOPs, image size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern or substring, e.g. 'deit_*' or 'vit_c'")


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no registered model matches {args.pattern!r}; run `deitlab models` to see all")
    rows = []
    for name in names:
        entry = get_model_entry(name)
        with torch.device("meta"):  # no memory, no arithmetic: shapes are enough to count
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
