r"""Gradient variance of the flow-matching loss as a function of time (arXiv 2510.18118).

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

Per-sample gradients are reduced chunk by chunk without forming the ``n × P`` matrix in float64:
a two-pass variance per coordinate inside each chunk (``torch.var_mean``), merged across chunks
with the pairwise update of Chan, Golub & LeVeque (no cancellation of a large mean gradient).
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
        from .._progress import progress_bar as tqdm  # tqdm is optional

        grid = tqdm(grid, desc="gradient variance", unit="t", leave=False, dynamic_ncols=True)
    was_training = net.training
    net.eval()
    try:
        for t_val in grid:
            t = torch.full((n,), float(t_val), dtype=dtype, device=x0.device)
            batch = path.sample(x0, x1, t, generator=generator)
            count, mean, m2, loss_sum = 0, None, 0.0, 0.0
            for lo in range(0, n, chunk):
                sl = slice(lo, lo + chunk)
                g, values = per_sample(params, batch.x_t[sl], batch.t[sl], batch.target[sl])
                c = values.shape[0]
                # per coordinate: two-pass variance inside the chunk, then Chan et al.'s update
                # to merge chunks (sum of squared deviations M2 and the running mean)
                parts = [torch.var_mean(v.reshape(c, -1), dim=0, correction=0) for v in g.values()]
                m2_c = sum(float(var.sum(dtype=torch.float64)) for var, _ in parts) * c
                mean_c = torch.cat([mu for _, mu in parts]).to(torch.float64)
                if mean is None:
                    mean, m2 = mean_c, m2_c
                else:
                    delta = mean_c - mean
                    m2 = m2 + m2_c + float(delta.square().sum()) * count * c / (count + c)
                    mean = mean + delta * (c / (count + c))
                count += c
                loss_sum += float(values.sum())
            traces.append(m2 / (n - 1))
            means.append(float(mean.square().sum()))
            losses.append(loss_sum / n)
    finally:
        net.train(was_training)
    return GradientVariance(t=ts, trace=torch.tensor(traces, dtype=torch.float64),
                            mean_grad_sq=torch.tensor(means, dtype=torch.float64),
                            loss=torch.tensor(losses, dtype=torch.float64), n=n, n_params=n_params,
                            sigma=float(sigma))
