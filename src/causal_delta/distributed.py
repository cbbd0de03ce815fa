"""Multi-process runs on PyTorch's own engine: ``torch.distributed`` under ``torchrun``.

``torchrun --nproc-per-node N ...`` starts N processes and gives each ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. :func:`init` reads them
and joins the process group (``gloo`` for CPU tensors, plus ``nccl`` for CUDA tensors when a GPU
is present: the backend string ``"cpu:gloo,cuda:nccl"``). Every helper here is a no-op (or the
identity) in a single process, so library code calls them unconditionally::

    from causal_delta import distributed as dist

    dist.init()                         # no-op without torchrun
    mine = dist.shard(n)                # the global indices this rank owns (contiguous block)
    part = compute(mine)                # (len(mine), ...)
    whole = dist.all_gather(part)       # (n, ...) in global index order, on every rank
    if dist.is_main():
        write(whole)

or, for the common case of per-row work gathered on every rank, ``whole = dist.map_rows(compute, n)``;
work that one process must do alone (a classifier trained with its checkpoints, a data file
written for the others to read) runs as ``result = dist.on_main(fn)``.

What runs where: every rank computes its shard; collective calls (:func:`all_gather`,
:func:`all_reduce`, :func:`barrier`, :func:`broadcast_object`) must be reached by every rank in
the same order; files are written by rank 0 only (:func:`is_main`): the library's report
writers (:func:`causal_delta.report.write_json`, ``write_text``, ``save_figure``) write nothing on
the other ranks, which compute the same report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "all_gather",
    "all_reduce",
    "barrier",
    "broadcast_object",
    "device",
    "init",
    "is_distributed",
    "is_main",
    "launched",
    "local_rank",
    "map_rows",
    "on_main",
    "rank",
    "shard",
    "shutdown",
    "world_size",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_REDUCE_OPS = ("sum", "mean", "min", "max")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def is_distributed() -> bool:
    """Whether a process group is up (``init`` was called under ``torchrun``, or by the caller)."""
    tdist = sys.modules.get("torch.distributed")  # not imported yet: no group, and no torch import
    return tdist is not None and tdist.is_available() and tdist.is_initialized()


def init(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment; idempotent.

    Args:
        backend: ``None`` chooses ``"cpu:gloo,cuda:nccl"`` when CUDA is available, else
            ``"gloo"``; any string :func:`torch.distributed.init_process_group` accepts.

    Returns:
        ``True`` when this process is part of a process group after the call (launched by
        torchrun, or a group the caller set up), ``False`` in a plain single process.

    Raises:
        ValueError: torchrun's variables are malformed (``RANK`` not below ``WORLD_SIZE``).
    """
    if is_distributed():
        return True
    if not launched():
        return False
    import torch
    import torch.distributed as tdist

    r, w, lr = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not 0 <= r < w:
        raise ValueError(f"torchrun environment: RANK must lie in [0, WORLD_SIZE), got RANK={r}, WORLD_SIZE={w}")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and "nccl" in backend:
        torch.cuda.set_device(lr)  # NCCL needs each rank on its own GPU before the first collective
    tdist.init_process_group(backend=backend, rank=r, world_size=w)
    return True


def shutdown() -> None:
    """Leave the process group once every rank is here (no-op when none is up)."""
    if is_distributed():
        import torch.distributed as tdist

        tdist.barrier()  # a rank that left early would break its peers' last collectives
        tdist.destroy_process_group()


def rank() -> int:
    """This process's rank in ``[0, world_size())`` (0 in a single process)."""
    if is_distributed():
        import torch.distributed as tdist

        return tdist.get_rank()
    return 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 in a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 in a single process)."""
    if is_distributed():
        import torch.distributed as tdist

        return tdist.get_world_size()
    return 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (no-op in a single process)."""
    if world_size() > 1:
        import torch.distributed as tdist

        tdist.barrier()


def device(requested: str | torch.device = "auto") -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``"auto"`` / ``"cuda"`` under several
    processes, otherwise :func:`causal_delta.training.resolve_device` of ``requested``.

    Raises:
        ValueError: an explicit ``cuda:N`` under several processes (each rank must own a GPU).
    """
    import torch

    from .training import resolve_device

    dev = resolve_device(requested)
    if world_size() == 1 or dev.type != "cuda":
        return dev
    if str(requested) not in ("auto", "cuda"):
        raise ValueError(f"device {str(requested)!r} names one GPU, but {world_size()} processes run; give "
                         f"device 'cuda' or 'auto' (each rank then uses cuda:LOCAL_RANK)")
    return torch.device("cuda", local_rank())


def shard(n: int, *, rank_: int | None = None, world_size_: int | None = None) -> range:
    """The global indices ``[start, stop)`` of ``range(n)`` that this rank owns.

    Contiguous blocks in rank order, sizes differing by at most one
    (``start = r·n // W``), so concatenating the shards of ranks ``0..W-1`` gives ``range(n)``.
    ``rank_`` / ``world_size_`` override the process group's (for tests and planning).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    if not 0 <= r < w:
        raise ValueError(f"rank must lie in [0, {w}), got {r}")
    return range(r * n // w, (r + 1) * n // w)


def all_gather(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order, on every rank.

    Shapes may differ in dim 0 only (e.g. uneven shards from :func:`shard`): each rank's block is
    padded to the longest, gathered, and trimmed. Returns ``tensor`` itself in a single process.
    """
    w = world_size()
    if w == 1:
        return tensor
    import torch
    import torch.distributed as tdist

    t = tensor.contiguous()
    sizes = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(w)]
    tdist.all_gather(all_sizes, sizes)
    lengths = [int(s) for s in all_sizes]
    longest = max(lengths)
    if t.shape[0] < longest:
        t = torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(t) for _ in range(w)]
    tdist.all_gather(parts, t)
    return torch.cat([p[:k] for p, k in zip(parts, lengths)])


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce ``tensor`` element-wise over ranks (``"sum"``, ``"mean"``, ``"min"``, ``"max"``).

    Returns a new tensor (the input is left untouched); ``tensor`` itself in a single process.
    ``"mean"`` is the sum divided by the world size.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {_REDUCE_OPS}, got {op!r}")
    w = world_size()
    if w == 1:
        return tensor
    import torch.distributed as tdist

    out = tensor.detach().clone()
    red = {"sum": tdist.ReduceOp.SUM, "mean": tdist.ReduceOp.SUM, "min": tdist.ReduceOp.MIN,
           "max": tdist.ReduceOp.MAX}[op]
    tdist.all_reduce(out, op=red)
    return out / w if op == "mean" else out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in a single process)."""
    if world_size() == 1:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def map_rows(fn: Callable[[range], Any], n: int) -> Any:
    """``fn`` over this rank's share of ``range(n)``, its rows gathered in global order on every rank.

    The per-sample loops of the experiments (``reproduce`` under ``torchrun``) and of the CLI run
    through this: rank ``r`` calls ``fn(shard(n))`` once, and the results of all ranks are
    concatenated along dim 0 in rank order (:func:`all_gather`), so every rank holds what
    ``fn(range(n))`` returns in one process. The result equals the single-process one whenever
    row ``i`` of ``fn(rows)`` depends on ``i`` only (draw inputs for all ``n`` rows on every rank
    and slice them, or draw per index with :mod:`causal_delta._rng`), up to the floating-point
    differences of other batch shapes.

    Args:
        fn: maps a contiguous ``range`` of global row indices to a tensor, or a tuple / list of
            tensors, each with ``len(rows)`` rows (dim 0); tensors stay on their device (gloo
            gathers CPU tensors, NCCL CUDA tensors).
        n: number of rows in all (>= 1). With fewer rows than processes every rank computes
            all of them (``fn(range(n))``, no gather): each rank still ends with the same rows.

    Returns:
        ``fn(range(n))``'s layout: a tensor ``(n, ...)``, or a tuple of them.

    Example:
        >>> import torch
        >>> map_rows(lambda rows: torch.arange(rows.start, rows.stop) ** 2, 4)
        tensor([0, 1, 4, 9])
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    split = n >= world_size()  # every rank decides alike: all of them take part in the gathers, or none
    rows = shard(n) if split else range(n)
    out = fn(rows)
    parts = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    for k, part in enumerate(parts):
        if not isinstance(part, torch.Tensor) or part.dim() == 0 or part.shape[0] != len(rows):
            what = f"a {type(part).__name__}" if not isinstance(part, torch.Tensor) else f"shape {tuple(part.shape)}"
            raise ValueError(f"map_rows: fn(rows) must return tensors with len(rows) = {len(rows)} rows in dim 0; "
                             f"result {k} has {what}")
    if not split:
        return out
    gathered = tuple(all_gather(p) for p in parts)
    return gathered if isinstance(out, (tuple, list)) else gathered[0]


_RERAISE = (ValueError, FloatingPointError, OSError, KeyboardInterrupt)


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by rank 0 alone; its result (picklable) is returned on every rank.

    For work that one process must do and the others need the result of: a model trained with
    its checkpoints (the others would race on the same files), a data file written for the other
    ranks to read. The other ranks wait at the broadcast, so the call is also a barrier. In a
    single process this is ``fn()``.

    Raises:
        Whatever ``fn`` raised, on rank 0; on the other ranks the same kind (``ValueError``,
        ``OSError``, ``FloatingPointError``, ``KeyboardInterrupt``; else ``RuntimeError``) with
        rank 0's message, so that every rank stops instead of waiting for a result.
    """
    if world_size() == 1:
        return fn()
    result, failure = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # the others wait for a word; they must get one
            failure = exc
    word = broadcast_object((result, None if failure is None else (type(failure), str(failure))) if is_main()
                            else None)
    if failure is not None:
        raise failure
    result, error = word
    if error is not None:
        kind, message = error
        base = next((k for k in _RERAISE if issubclass(kind, k)), RuntimeError)
        raise base(f"rank 0 failed: {message}")
    return result
