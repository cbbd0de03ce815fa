r"""The conditional flow-matching loss, public so that users can keep their own training loop.

For end points ``x0 ~ p_init``, ``x1 ~ p_data`` and times ``t`` (Lipman et al. 2023,
arXiv 2210.02747, eq. 9 with the linear path of Liu et al. 2023, arXiv 2209.03003):

.. math::  L(\theta) = \frac{1}{B\,d} \sum_{i=1}^{B} \| g_\theta(x_{t_i}, t_i) - y_i \|^2,
   \qquad x_t = (1 - t) x_0 + t x_1 \,(+\, \sigma \varepsilon),

with target ``y = x1 - x0`` (velocity parametrisation) or ``y = x1`` (x1-prediction), ``d`` the
number of coordinates per sample (Lipman et al. 2023, arXiv 2210.02747). This is ``F.mse_loss`` over the batch and every
coordinate, exactly what :func:`causal_delta.training.train` minimises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..paths import LinearPath

__all__ = ["flow_matching_loss", "sample_t"]


def sample_t(kind: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` training times, ``(n,)`` float32 on the CPU: ``"uniform"`` ``U(0, 1)`` or
    ``"logit-normal"`` ``sigmoid(N(0, 1))`` (Esser et al. 2024, arXiv 2403.03206, §3.1)."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"kind must be 'uniform' or 'logit-normal', got {kind!r}")


def flow_matching_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    x1: Tensor,
    t: Tensor,
    path: LinearPath | None = None,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean squared error of ``model(x_t, t)`` against the path's regression target.

    Args:
        model: ``model(x, t)`` with ``x`` ``(B, *event)`` and ``t`` ``(B,)``, returning ``(B, *event)``.
        x0, x1: source and data points, ``(B, *event)``.
        t: times ``(B,)`` in [0, 1].
        path: the interpolant (default :class:`~causal_delta.paths.LinearPath` with ``sigma=0``
            and the velocity parametrisation).
        noise: ``ε`` ``(B, *event)`` for ``sigma > 0``; drawn from ``generator`` when ``None``.

    Returns:
        The scalar loss (differentiable in the model's parameters).

    Example:
        >>> import torch
        >>> x0, x1, t = torch.zeros(3, 2), torch.ones(3, 2), torch.rand(3)
        >>> float(flow_matching_loss(lambda x, t: torch.ones_like(x), x0, x1, t))  # exact velocity
        0.0
    """
    path = LinearPath() if path is None else path
    batch = path.sample(x0, x1, t, noise=noise, generator=generator)
    out = model(batch.x_t, batch.t)
    if out.shape != batch.target.shape:
        raise ValueError(f"model output has shape {tuple(out.shape)}, expected {tuple(batch.target.shape)} "
                         f"(the shape of x)")
    return F.mse_loss(out, batch.target)
