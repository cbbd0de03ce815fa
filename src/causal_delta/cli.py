"""The ``causal-delta`` command line.

Each subcommand lives in :mod:`causal_delta.commands` as a module with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import torch and the
library lazily inside ``run`` so that ``causal-delta --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main", "build_parser", "COMMANDS"]

# Subcommand name -> module under causal_delta.commands. Order is the order of --help.
COMMANDS: dict[str, str] = {
    "mixture": "mixture",
    "train": "train",
    "sample": "sample",
    "jvp": "jvp",
    "dependence": "dependence",
    "reproduce": "reproduce",
    "classifier": "classifier",
}


def _command_modules():
    for name, module in COMMANDS.items():
        yield name, importlib.import_module(f"causal_delta.commands.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causal-delta",
        description="Jacobian-based dependency analysis of flow-matching generative models "
        "(Causality-Delta, arXiv 2602.02793).",
    )
    parser.add_argument("--version", action="version", version=f"causal-delta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _command_modules():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: one clear line naming the problem, no traceback.
        print(f"causal-delta {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
