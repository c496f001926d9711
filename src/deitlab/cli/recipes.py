"""``deitlab recipes``: the training recipes shipped with deitlab (usable as ``deitlab train -c NAME``)."""

from __future__ import annotations

import argparse

from deitlab.config.recipes import recipe_description, recipe_names, recipe_text

NAME = "recipes"
HELP = "list the shipped training recipes (deitlab train -c NAME), or print one"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="print this recipe's YAML (with its source, command, time and result)")


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(recipe_text(args.name), end="")
        return 0
    names = recipe_names()
    width = max(len(n) for n in names) + 2
    for name in names:
        print(f"{name:<{width}}{recipe_description(name)}")
    print("\nuse: deitlab train -c NAME [--data-path DIR] [--set key=value ...]; `deitlab recipes NAME` shows one")
    return 0
