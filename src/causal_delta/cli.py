"""The ``causal-delta`` command line.

Each subcommand lives in :mod:`causal_delta.commands` as a module with ``HELP`` (one line),
``add_arguments(parser)``, ``run(args) -> int`` and, when it writes files, ``outputs(args)``
(see :mod:`causal_delta.commands._common`). Command modules import torch and the library lazily
inside ``run`` so that ``causal-delta --help`` answers at once.

:func:`main` is the one place where errors become exit statuses:

* before ``run``, every declared output is checked for writability and locked (one writer per
  output; a second writer stops at once, naming the folder and the holder's PID);
* an error the user can cause (``ValueError``, ``OSError``, ``FloatingPointError`` and the
  library's errors derived from them) prints one line ``causal-delta CMD: error: ...`` on
  stderr and exits with status 2;
* Ctrl-C prints one line (for ``train``: the step reached, the intact checkpoint and the
  command that resumes) and exits with status 130 (128 + SIGINT, as shells report it);
* ``--debug`` (or ``CAUSAL_DELTA_DEBUG=1``) lets the exception through, with its traceback.

Commands run with torch's ``torch.jit.script`` ``FutureWarning`` silenced (see
:mod:`causal_delta._compat`), so a normal run prints only the tool's own output.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
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
    "graph": "graph",
    "diagnose": "diagnose",
    "reproduce": "reproduce",
    "classifier": "classifier",
}


def _command_modules():
    for name, module in COMMANDS.items():
        yield name, importlib.import_module(f"causal_delta.commands.{module}")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``prog: error: ...``), exit status 2 as before."""

    def error(self, message: str):  # type: ignore[override]
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="causal-delta",
        description="Jacobian-based dependency analysis of flow-matching generative models "
        "(Causality-Delta, arXiv 2602.02793).",
    )
    parser.add_argument("--version", action="version", version=f"causal-delta {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also CAUSAL_DELTA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _command_modules():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error (also CAUSAL_DELTA_DEBUG=1)")
        p.set_defaults(_run=mod.run, _module=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    from ._compat import quiet_forward_ad
    from ._runlock import output_lock
    from .commands._common import EXIT_INTERRUPTED, EXIT_USER_ERROR, USER_ERRORS, command_outputs, one_line

    debug = bool(args.debug) or os.environ.get("CAUSAL_DELTA_DEBUG", "") not in ("", "0")
    args._argv = argv  # so a command can print the line that resumes it
    prefix = f"causal-delta {args.command}"
    try:
        with contextlib.ExitStack() as held:
            for out in command_outputs(args._module, args):
                held.enter_context(output_lock(out.path, kind=out.kind, arg=out.arg))
            held.enter_context(quiet_forward_ad())  # torch's first forward-mode call warns otherwise
            return int(args._run(args) or 0)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"{prefix}: {one_line(exc) if str(exc) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        if debug:
            raise
        # Bad input or a fault the user can fix: one clear line naming the problem.
        print(f"{prefix}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
