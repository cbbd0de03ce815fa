r"""Log-likelihood of data under a trained flow, by the instantaneous change of variables.

The flow :math:`\dot x = v(x, t)` carries the source :math:`p_0` (``t = 0``, noise) to the
model :math:`p_1` (``t = 1``, data). Along a trajectory the log-density changes as
:math:`\tfrac{d}{dt} \log p_t(x(t)) = -\operatorname{div} v(x(t), t)` (Chen et al. 2018,
Neural ODEs, arXiv 1806.07366, Theorem 1; Grathwohl et al. 2019, FFJORD, arXiv 1810.01367,
Eq. 4), so for a data point ``x``

.. math::
    \log p_1(x) = \log p_0(x(0)) - \int_0^1 \operatorname{div} v(x(t), t)\, dt,
    \qquad x(1) = x.

:func:`log_likelihood` integrates the augmented state ``(x, ℓ)`` with
``d(x, ℓ)/dt = (v, div v)`` *backwards*, from ``t = 1`` (``ℓ = 0``) to ``t = 0``, with the
library's solvers (:func:`causal_delta.solvers.integrate`, fixed grid or adaptive dopri5), so
``ℓ(0) = -∫₀¹ div v dt`` and ``log p_1(x) = log p_0(x(0)) + ℓ(0)``.

The divergence ``div v = tr J_v`` (``J_v = ∂v/∂x``, ``D = prod(event)`` entries) is either

* ``"exact"``: ``Σ_i e_iᵀ J_v e_i`` from ``D`` forward-mode JVPs (one batched call of
  ``B·D`` tangents), for small ``D``; or
* ``"hutchinson"``: ``(1/P) Σ_p ε_pᵀ J_v ε_p`` with ``P`` Rademacher probes ``ε_p`` per
  sample, drawn once and held fixed along the trajectory (FFJORD, Eq. 7), so the estimate of
  the integral is unbiased; its spread adds to the standard error over samples.

Each JVP uses the model's ``forward_jvp(x, t, dx)`` when it has one, else
:func:`torch.func.jvp`. Units: nats per sample; bits per dimension is
``-log p_1(x) / (D ln 2)``. For images of ``K`` levels scaled to ``[-1, 1]`` (bin width
``Δ = 2 / (K - 1)``), the discrete bits/dim is ``(-log p_1(x) - D ln Δ) / (D ln 2)``; it is an
upper bound on the model's discrete negative log-likelihood when ``x`` is *dequantised*
(``x + Δ u``, ``u ~ U(-1/2, 1/2)^D``; Theis et al. 2016, arXiv 1511.01844, Section 3.1).
See :func:`dequantize` and :meth:`LogLikelihood.summary`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from ._compat import load_forward_ad
from ._validation import check_positive_int
from .solvers import METHODS, Velocity, integrate

__all__ = [
    "DIVERGENCES",
    "LogLikelihood",
    "standard_normal_log_prob",
    "divergence",
    "log_likelihood",
    "dequantize",
]

DIVERGENCES = ("exact", "hutchinson")
"""``exact``: trace from ``D`` forward-mode JVPs; ``hutchinson``: Rademacher trace estimate."""


def standard_normal_log_prob(x: Tensor) -> Tensor:
    r"""``log N(x; 0, I) = -|x|² / 2 - (D / 2) log 2π`` per sample: ``(B, *event) -> (B,)``.

    Example:
        >>> round(float(standard_normal_log_prob(torch.zeros(1, 2))[0]), 6)  # -log 2π
        -1.837877
    """
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * flat.pow(2).sum(1) - 0.5 * flat.shape[1] * math.log(2.0 * math.pi)


def _jvp_fn(velocity: Velocity) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(x (B), t (B,), dx (B·K)) -> (v (B), J_v dx (B·K))``: the library's per-stage JVP (the
    model's :class:`~causal_delta.jvp.ForwardJVP` when it has one, else ``torch.func.jvp``), so the
    primal runs once for the ``K`` directions of each sample."""
    from .jvp._forward import _stage_jvp

    load_forward_ad()  # torch's first forward-mode call warns otherwise
    return _stage_jvp(velocity, None)[0]


def _rademacher(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
                device: torch.device) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device="cpu")
    return (2.0 * bits - 1.0).to(dtype=dtype, device=device)


def _basis(x: Tensor) -> Tensor:
    """``(B·D, *event)``: for each sample the ``D`` unit directions, sample-major."""
    B, event = x.shape[0], tuple(x.shape[1:])
    D = math.prod(event)
    eye = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, *event)
    return eye.repeat(B, *([1] * len(event)))


def _velocity_and_divergence(jvp_fn, x: Tensor, t: Tensor, probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(v (B, *event), div (B,))``; ``probes`` ``(B·P, *event)`` for Hutchinson, ``None`` for exact."""
    B = x.shape[0]
    tangents = _basis(x) if probes is None else probes
    K = tangents.shape[0] // B  # D directions or P probes per sample
    v, dv = jvp_fn(x.contiguous(), t, tangents)  # an expanded x would alias under forward mode
    quad = (tangents * dv).reshape(B, K, -1).sum(-1)  # e_kᵀ J e_k for each direction / probe
    div = quad.sum(1) if probes is None else quad.mean(1)
    return v, div


def divergence(velocity: Velocity, x: Tensor, t: Tensor, *, method: str = "exact", probes: int = 1,
               generator: torch.Generator | None = None) -> Tensor:
    r"""Divergence ``div v(x, t) = tr ∂v/∂x`` per sample, ``(B,)``.

    Args:
        velocity: ``velocity(x: (B, *event), t: (B,)) -> (B, *event)``.
        x: points ``(B, *event)``.
        t: times ``(B,)``.
        method: ``"exact"`` (``D`` JVPs) or ``"hutchinson"`` (``probes`` Rademacher probes per
            sample: ``(1/P) Σ_p ε_pᵀ J ε_p``, unbiased).
        probes: ``P`` for Hutchinson.
        generator: draws the Rademacher probes.

    Example:
        >>> field = lambda x, t: 2.0 * x  # div = 2 D
        >>> divergence(field, torch.ones(3, 4), torch.zeros(3)).tolist()
        [8.0, 8.0, 8.0]
    """
    _check_divergence(method)
    check_positive_int("probes", probes)
    with torch.no_grad():
        eps = None
        if method == "hutchinson":
            eps = _rademacher((x.shape[0] * probes, *x.shape[1:]), generator, x.dtype, x.device)
        return _velocity_and_divergence(_jvp_fn(velocity), x, t, eps)[1]


def _check_divergence(method: str) -> None:
    if method not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {method!r}")


@dataclass
class LogLikelihood:
    """Result of :func:`log_likelihood` for ``n`` data points of ``D = prod(event)`` entries.

    Attributes:
        log_prob: ``log p_1(x)`` in nats, ``(n,)``.
        log_prob_source: ``log p_0(x(0))``, ``(n,)``.
        divergence_integral: ``∫₀¹ div v(x(t), t) dt`` along each trajectory, ``(n,)``
            (``log_prob = log_prob_source - divergence_integral``).
        x0: the source points ``x(0)`` the data map to, ``(n, *event)``.
        dim: ``D``.
        divergence: ``"exact"`` or ``"hutchinson"``.
        probes: Rademacher probes per sample (0 for exact).
        nfe: velocity evaluations per batch (each on ``B·D`` or ``B·P`` rows).
    """

    log_prob: Tensor
    log_prob_source: Tensor
    divergence_integral: Tensor
    x0: Tensor
    dim: int
    divergence: str
    probes: int
    nfe: int

    def summary(self, *, level: float = 0.95, bin_width: float | None = None) -> dict:
        r"""Mean log-likelihood (nats per sample) and bits/dim, each with a normal CI.

        The CI is ``mean ± z·SE`` with ``SE = std / √n`` over the samples (for Hutchinson the
        probe noise is part of each sample's value, so it is in the SE too).

        Args:
            level: confidence level of the intervals.
            bin_width: ``Δ`` of a quantised data set in model units (``2 / (K - 1)`` for ``K``
                levels scaled to ``[-1, 1]``); adds ``bits_per_dim_discrete``
                ``= (-log p - D ln Δ) / (D ln 2)`` (an upper bound on the discrete NLL for
                dequantised ``x``, see :func:`dequantize`).

        Returns:
            dict with ``n``, ``dim``, ``level``, ``log_likelihood`` (nats/sample: ``mean``,
            ``se``, ``ci``), ``nll_nats_per_dim`` and ``bits_per_dim`` (same keys), and
            ``bits_per_dim_discrete`` with ``bin_width`` when given.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        n = self.log_prob.numel()
        if n == 0:
            raise ValueError("summary needs at least one data point")
        lp = self.log_prob.double()
        mean = float(lp.mean())
        se = float(lp.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        z = NormalDist().inv_cdf(0.5 + level / 2.0)

        def scaled(m: float, s: float, scale: float) -> dict:
            lo, hi = sorted(((m - z * s) * scale, (m + z * s) * scale))
            return {"mean": m * scale, "se": s * abs(scale), "ci": [lo, hi]}

        out = {
            "n": n, "dim": self.dim, "level": level, "divergence": self.divergence, "probes": self.probes,
            "log_likelihood": scaled(mean, se, 1.0),
            "nll_nats_per_dim": scaled(mean, se, -1.0 / self.dim),
            "bits_per_dim": scaled(mean, se, -1.0 / (self.dim * math.log(2.0))),
        }
        if bin_width is not None:
            if not bin_width > 0:
                raise ValueError(f"bin_width must be > 0, got {bin_width!r}")
            shifted = mean + self.dim * math.log(bin_width)  # log P(bin) ≈ log p + D ln Δ
            out["bin_width"] = bin_width
            out["bits_per_dim_discrete"] = scaled(shifted, se, -1.0 / (self.dim * math.log(2.0)))
        return out


def log_likelihood(
    velocity: Velocity,
    x: Tensor,
    *,
    divergence: str = "exact",
    probes: int = 1,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    source_log_prob: Callable[[Tensor], Tensor] = standard_normal_log_prob,
    progress: bool = False,
) -> LogLikelihood:
    r"""``log p_1(x)`` of data ``x`` under the flow of ``velocity`` (module docstring).

    Integrates ``(x, ℓ)`` backwards from ``t = 1`` to ``t = 0`` with ``d(x, ℓ)/dt = (v, div v)``
    on the solver grid (default ``steps`` uniform steps from 1 to 0; ``method="dopri5"`` without
    a grid chooses one per batch to ``atol``/``rtol``, the divergence entry included), then
    ``log p_1(x) = source_log_prob(x(0)) + ℓ(0)``.

    Args:
        velocity: ``velocity(x: (B, *event), t: (B,)) -> (B, *event)``; ``t = 0`` is the source.
        x: data ``(n, *event)``, in the model's units (e.g. images in ``[-1, 1]``).
        divergence: ``"exact"`` (``D`` JVPs per evaluation; small ``D``) or ``"hutchinson"``.
        probes: Rademacher probes per sample for Hutchinson (ignored for exact).
        method, steps, grid, atol, rtol: as :func:`causal_delta.solvers.integrate`; a ``grid``
            must run from 1 down to 0.
        batch_size: data points per integration (the JVP batch is ``batch_size·D`` or
            ``batch_size·probes``).
        generator: draws the Hutchinson probes (batch by batch, in order).
        source_log_prob: ``log p_0``, ``(B, *event) -> (B,)``; standard normal by default.
        progress: show a tqdm bar over batches.

    Returns:
        :class:`LogLikelihood` (float64 values in the dtype of ``x`` when that is float64).

    Example:
        >>> from causal_delta.closed_form import GaussianFlow
        >>> flow = GaussianFlow(torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64))
        >>> x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
        >>> res = log_likelihood(flow.velocity, x, steps=200)
        >>> exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), flow.cov)
        >>> abs(float(res.log_prob[0] - exact.log_prob(x)[0])) < 1e-9
        True
    """
    _check_divergence(divergence)
    check_positive_int("probes", probes)
    check_positive_int("batch_size", batch_size)
    check_positive_int("steps", steps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (n, *event), got "
                         f"{getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite (no NaN or inf)")
    if grid is not None and not (grid.ndim == 1 and grid.numel() >= 2 and float(grid[0]) == 1.0
                                 and float(grid[-1]) == 0.0):
        raise ValueError("grid must be a 1-D tensor running from t = 1 down to t = 0")
    event = tuple(x.shape[1:])
    D = math.prod(event)
    jvp_fn = _jvp_fn(velocity)
    hutch = divergence == "hutchinson"
    chunks = torch.split(x, batch_size)
    iterator = chunks
    if progress:
        from ._progress import progress_bar

        iterator = progress_bar(chunks, desc=f"log-likelihood ({divergence}, {method})", unit="batch")
    lp, lp0, integ, x0s, nfe = [], [], [], [], 0
    with torch.no_grad():
        for xb in iterator:
            B = xb.shape[0]
            eps = _rademacher((B * probes, *event), generator, xb.dtype, xb.device) if hutch else None

            def augmented(state: Tensor, t: Tensor, B=B, eps=eps) -> Tensor:
                v, div = _velocity_and_divergence(jvp_fn, state[:, :D].reshape(B, *event), t, eps)
                return torch.cat([v.reshape(B, D), div.to(state.dtype)[:, None]], dim=1)

            state = torch.cat([xb.reshape(B, D), xb.new_zeros(B, 1)], dim=1)
            sol = integrate(augmented, state, method=method, steps=steps, grid=grid, t0=1.0, t1=0.0,
                            atol=atol, rtol=rtol)
            x0 = sol.x[:, :D].reshape(B, *event)
            ell = sol.x[:, D]  # = -∫₀¹ div v dt
            log0 = source_log_prob(x0)
            lp.append(log0 + ell)
            lp0.append(log0)
            integ.append(-ell)
            x0s.append(x0)
            nfe = max(nfe, sol.nfe)
    return LogLikelihood(log_prob=torch.cat(lp), log_prob_source=torch.cat(lp0),
                         divergence_integral=torch.cat(integ), x0=torch.cat(x0s), dim=D,
                         divergence=divergence, probes=probes if hutch else 0, nfe=nfe)


def dequantize(x: Tensor, bin_width: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantisation ``x + Δ u``, ``u ~ U(-1/2, 1/2)`` entrywise (same shape as ``x``).

    For data on a grid of spacing ``Δ`` (``2 / (K - 1)`` for ``K`` pixel levels in ``[-1, 1]``),
    ``E_u[-log p(x + Δu)] - D ln Δ`` bounds the discrete NLL from above (Jensen).

    Example:
        >>> y = dequantize(torch.zeros(1000, 1), 0.5, torch.Generator().manual_seed(0))
        >>> bool(y.abs().max() <= 0.25)
        True
    """
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width!r}")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device) - 0.5
    return x + bin_width * u
