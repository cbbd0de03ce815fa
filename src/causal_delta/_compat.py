"""Workarounds for the installed torch version (kept in one place so they are easy to drop)."""

from __future__ import annotations

import contextlib
import warnings

__all__ = ["load_forward_ad"]


def load_forward_ad() -> None:
    """Load torch's forward-AD decompositions now, without their ``torch.jit.script`` warning.

    The first forward-mode call in a process (``torch.func.jvp`` / ``jacfwd``, via
    ``torch.autograd.forward_ad.make_dual``) imports ``torch._decomp.decompositions_for_jvp``,
    which compiles its helpers with ``torch.jit.script`` and so prints a ``FutureWarning``
    ("`torch.jit.script` is deprecated") on every run. Importing that module first, with
    exactly that warning silenced, keeps a run's output to the tool's own; later calls find it
    in ``sys.modules`` and cost nothing. Other warnings stay visible.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        with contextlib.suppress(ImportError):  # a torch without this module has no warning either
            import torch._decomp.decompositions_for_jvp  # noqa: F401
