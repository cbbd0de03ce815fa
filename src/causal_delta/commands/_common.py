"""Plumbing shared by the CLI commands: output locks and the errors a user can cause.

A command opts in to the output lock by defining ``outputs(args)`` next to ``run(args)``: it
returns the :class:`Output` s the command will write. :func:`causal_delta.cli.main` checks
that each can be written and locks it (:func:`causal_delta._runlock.output_lock`) *before*
``run`` starts, and holds the locks until ``run`` returns or fails::

    def outputs(args):
        return [Output(args.out)]                    # a folder named by --out
        # or Output(args.out, kind="file")          # a single file (sidecar lock beside it)

Errors a user can cause (:data:`USER_ERRORS`) become one line on stderr and exit status 2 in
``cli.main``; a command raises them with a message that names the argument or file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Output", "USER_ERRORS", "EXIT_USER_ERROR", "EXIT_INTERRUPTED", "command_outputs", "one_line"]

EXIT_USER_ERROR = 2
"""Exit status of a run stopped by bad input, a fault the user can fix, or a held lock."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)
"""Exceptions shown as one line (the library's own errors derive from these: ``CheckpointError``
is a ``ValueError``, ``OutputInUseError`` an ``OSError``, ``TrainingDiverged`` a
``FloatingPointError``)."""


@dataclass(frozen=True)
class Output:
    """Something a command writes: a folder (locked as a whole) or a single file.

    Attributes:
        path: the folder or file.
        kind: ``"folder"`` or ``"file"``.
        arg: the option that named it, for error messages.
    """

    path: str | Path
    kind: str = "folder"
    arg: str = "--out"


def command_outputs(module, args: argparse.Namespace) -> Sequence[Output]:
    """The outputs a command module declares for ``args`` (none when it has no ``outputs``)."""
    fn = getattr(module, "outputs", None)
    return [o for o in (fn(args) if fn is not None else []) if o.path is not None]


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type name when it has no message).

    An ``OSError`` shows its reason and file without the ``[Errno N]`` prefix.
    """
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None:
            text += f": {exc.filename}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2}"
    text = " ".join(text.split())
    return text or type(exc).__name__
