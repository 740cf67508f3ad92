"""`livereel train {vae,dit,decoder}`: the training stages, each resumable with --resume."""

from __future__ import annotations

import argparse
import importlib

STAGES = {"vae": "model.train.vae", "dit": "model.train.dit", "decoder": "model.train.decoder"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, module in STAGES.items():
        mod = importlib.import_module(module)
        s = sub.add_parser(name, help=mod.__doc__.splitlines()[0], description=mod.__doc__)
        mod.add_arguments(s)


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(STAGES[args.stage]).main(args)
