"""Progress bars without a hard dependency on tqdm (it comes with the ``cli`` extra).

:func:`progress_bar` returns ``tqdm(iterable, **kwargs)`` when tqdm is installed. Without it, it
warns once (naming the extra that brings it) and returns the iterable unchanged, or, for a
manual bar (``iterable=None``), an object with the methods the library calls on one
(``update``, ``set_postfix``, ``close``), which do nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

__all__ = ["progress_bar", "TQDM_MISSING"]

TQDM_MISSING = ("progress bars need tqdm, which is not installed: pip install tqdm (or causal-delta[cli]); "
                "continuing without a bar")


class _NoBar:
    """Stands in for a manual ``tqdm(total=...)`` bar."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(iterable, **kwargs)``, or the iterable itself (a no-op bar) without tqdm.

    Example:
        >>> list(progress_bar(range(3), disable=True))
        [0, 1, 2]
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(TQDM_MISSING, RuntimeWarning, stacklevel=2)
        return _NoBar() if iterable is None else iterable
    return tqdm(iterable, **kwargs)
