r"""Gradient variance of the flow-matching loss as a function of time (arXiv 2510.18118, MATH.md §7).

At a fixed time ``t`` the per-sample loss of pair ``i`` is

.. math::  \ell_i(\theta; t) = \frac{1}{D} \| g_\theta(x_{t,i}, t) - y_i \|^2, \qquad
    x_{t,i} = (1 - t) x_{0,i} + t x_{1,i} + \sigma \varepsilon_i,

with ``y_i = x1_i - x0_i`` (velocity parametrisation) or ``x1_i`` (x1-prediction) and ``D`` the
event size (so ``ℓ_i`` is the training loss of a batch of one). The diagnostic is the trace of
the covariance of the per-sample gradients,

.. math::  V(t) = \operatorname{tr} \widehat{\mathrm{Cov}}_i[\nabla_\theta \ell_i]
    = \frac{1}{n - 1} \sum_i \| \nabla_\theta \ell_i - \overline{\nabla_\theta \ell} \|^2,

on a grid of ``t``. Per-sample gradients come from ``torch.func.vmap(torch.func.grad_and_value(ℓ))`` over
``torch.func.functional_call`` (one vectorised pass per chunk, no Python loop over samples).
A field that fits every pair exactly has ``ℓ_i = 0`` and ``∇ℓ_i = 0``, so ``V(t) = 0``
(Proposition 1 of the paper); where deterministic lines cross (``x_{t,i}`` equal, ``y_i``
different) no field can fit them and ``V(t)`` spikes.

Sums are accumulated in float64 around the first chunk's mean (a shift that keeps the
one-pass variance free of cancellation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_nonnegative, check_positive_int
from ..paths import LinearPath

__all__ = ["GradientVariance", "gradient_variance"]


@dataclass
class GradientVariance:
    """Result of :func:`gradient_variance`.

    Attributes:
        t: ``(T,)`` the time grid.
        trace: ``(T,)`` trace of the per-sample gradient covariance ``V(t)``.
        mean_grad_sq: ``(T,)`` squared norm of the mean gradient ``‖mean_i ∇ℓ_i‖²``.
        loss: ``(T,)`` mean per-sample loss.
        n: number of pairs used at each ``t``.
        n_params: number of trainable parameters.
        sigma: the interpolant's noise level.
    """

    t: Tensor
    trace: Tensor
    mean_grad_sq: Tensor
    loss: Tensor
    n: int
    n_params: int
    sigma: float

    def to_dict(self) -> dict:
        return {"t": self.t.tolist(), "trace": self.trace.tolist(), "mean_grad_sq": self.mean_grad_sq.tolist(),
                "loss": self.loss.tolist(), "n": self.n, "n_params": self.n_params, "sigma": self.sigma}


def _network(model: nn.Module, parametrization: str | None) -> tuple[nn.Module, str]:
    """The raw network and what it regresses (a :class:`VelocityField` is unwrapped)."""
    from ..paths import VelocityField

    if isinstance(model, VelocityField):
        return model.model, model.parametrization
    return model, parametrization or "velocity"


def gradient_variance(
    model: nn.Module,
    x0: Tensor,
    x1: Tensor,
    ts,
    *,
    sigma: float = 0.0,
    parametrization: str | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> GradientVariance:
    """Trace of the per-sample gradient covariance of the loss at each ``t`` of ``ts``.

    Args:
        model: the network ``g_θ(x, t)`` (or a :class:`~causal_delta.paths.VelocityField`,
            whose network and parametrisation are used).
        x0, x1: the pairs, ``(n, *event)`` each, ``n >= 2``.
        ts: times in [0, 1], a sequence or ``(T,)`` tensor.
        sigma: noise level of the stochastic interpolant (``ε`` drawn from ``generator``).
        parametrization: ``"velocity"`` or ``"x1"`` for a raw network (default velocity).
        chunk: samples per vectorised per-sample-gradient pass (bounds memory: ``chunk × params``).
        progress: tqdm bar over the grid.
    """
    from torch.func import functional_call, grad_and_value, vmap

    net, param = _network(model, parametrization)
    path = LinearPath(sigma=check_nonnegative("sigma", sigma), parametrization=param)
    check_positive_int("chunk", chunk)
    if not isinstance(x0, Tensor) or not isinstance(x1, Tensor) or x0.shape != x1.shape or x0.ndim < 2:
        raise ValueError(f"x0 and x1 must be tensors of the same shape (n, *event), got "
                         f"{getattr(x0, 'shape', type(x0).__name__)} and {getattr(x1, 'shape', type(x1).__name__)}")
    n = x0.shape[0]
    if n < 2:
        raise ValueError(f"x0 and x1 need at least 2 pairs for a variance, got {n}")
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    if ts.numel() == 0 or not ((ts >= 0) & (ts <= 1)).all():
        raise ValueError(f"ts must be a non-empty sequence of times in [0, 1], got {ts.tolist()}")
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    n_params = sum(v.numel() for v in params.values())

    def loss_one(p, xt, tt, y):
        out = functional_call(net, (p, buffers), (xt.unsqueeze(0), tt.unsqueeze(0)))
        return (out - y.unsqueeze(0)).square().mean()

    per_sample = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0, 0))
    dtype = x0.dtype
    traces, means, losses = [], [], []
    grid = ts.tolist()
    if progress:
        from tqdm.auto import tqdm

        grid = tqdm(grid, desc="gradient variance", unit="t", leave=False, dynamic_ncols=True)
    was_training = net.training
    net.eval()
    try:
        for t_val in grid:
            t = torch.full((n,), float(t_val), dtype=dtype, device=x0.device)
            batch = path.sample(x0, x1, t, generator=generator)
            shift = None
            s1 = s2 = None
            loss_sum = 0.0
            for lo in range(0, n, chunk):
                sl = slice(lo, lo + chunk)
                g, values = per_sample(params, batch.x_t[sl], batch.t[sl], batch.target[sl])
                flat = torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], dim=1).to(torch.float64)
                if shift is None:
                    shift = flat.mean(0)
                    s1 = torch.zeros_like(shift)
                    s2 = torch.zeros((), dtype=torch.float64, device=flat.device)
                dev = flat - shift
                s1 = s1 + dev.sum(0)
                s2 = s2 + dev.square().sum()
                loss_sum += float(values.sum())
            mean_dev = s1 / n
            traces.append(float((s2 - n * mean_dev.square().sum()) / (n - 1)))
            means.append(float((shift + mean_dev).square().sum()))
            losses.append(loss_sum / n)
    finally:
        net.train(was_training)
    return GradientVariance(t=ts, trace=torch.tensor(traces, dtype=torch.float64),
                            mean_grad_sq=torch.tensor(means, dtype=torch.float64),
                            loss=torch.tensor(losses, dtype=torch.float64), n=n, n_params=n_params,
                            sigma=float(sigma))
