"""Workarounds for the installed torch version (kept in one place so they are easy to drop).

The first forward-mode call in a process (``torch.func.jvp`` / ``jacfwd``, via
``torch.autograd.forward_ad.make_dual``) imports ``torch._decomp.decompositions_for_jvp``,
which compiles its helpers with ``torch.jit.script`` and so prints a ``FutureWarning``
("`torch.jit.script` is deprecated") — on every run that uses forward mode. Two remedies, both
matching exactly that message, so every other warning stays visible:

* :func:`load_forward_ad`: import that module once with the warning silenced (the library's
  forward-mode entry points call it; later calls find the module loaded and cost nothing);
* :func:`quiet_forward_ad`: a context manager that ignores that warning inside it (the CLI
  runs every command inside it, so commands that call ``torch.func`` directly are quiet too).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["JIT_SCRIPT_WARNING", "load_forward_ad", "quiet_forward_ad"]

JIT_SCRIPT_WARNING = r"`torch\.jit\.script` is deprecated"
"""Regular expression matching the start of torch's ``torch.jit.script`` deprecation message."""


@contextlib.contextmanager
def quiet_forward_ad() -> Iterator[None]:
    """Ignore torch's ``torch.jit.script`` ``FutureWarning`` (and only it) inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_SCRIPT_WARNING, category=FutureWarning)
        yield


def load_forward_ad() -> None:
    """Load torch's forward-AD decompositions now, without their ``torch.jit.script`` warning."""
    with quiet_forward_ad(), contextlib.suppress(ImportError):  # no such module: no warning either
        import torch._decomp.decompositions_for_jvp  # noqa: F401
