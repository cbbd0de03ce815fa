r"""The batch-KDE reference density of Flux Matching and its exact Ornstein–Uhlenbeck dynamics.

Reference density (arXiv 2605.07319): the Gaussian kernel density estimate of a batch
``x_1 … x_B`` (rows of ``ref``, shape ``(B, d)``) with bandwidth ``σ``,

.. math:: p(z) = \frac1B \sum_j N(z \mid x_j, σ^2 I),

whose score is exact:

.. math::
    w_j(z) = \mathrm{softmax}_j\big(-\lVert z - x_j\rVert^2 / 2σ^2\big), \qquad
    m(z) = \sum_j w_j x_j, \qquad s(z) = (m(z) - z) / σ^2 .

Its Jacobian is ``∇s = (C_w / σ^2 - I) / σ^2`` with ``C_w = Σ_j w_j (x_j - m)(x_j - m)ᵀ``, so
``∇s · v = (C_w v / σ^2 - v) / σ^2`` and ``∇·s = (Σ_j w_j ‖x_j‖² - ‖m‖²) / σ^4 - d / σ^2``.

Langevin dynamics of ``p`` with time scaled by ``σ²``, ``dz = σ² s dt + √2 σ dW``, reads
``dz = (m(z) - z) dt + √2 σ dW``: an Ornstein–Uhlenbeck process towards ``m(z)``. With ``m``
frozen over a step of length ``h`` it is solved exactly (``ρ = e^{-h}``):

.. math:: z' = m(z) + ρ (z - m(z)) + σ \sqrt{1 - ρ^2}\, ξ, \qquad ξ \sim N(0, I),

which is exact for a one-point batch and for points near a single kernel (the authors' code
uses 4 such steps over a horizon ``t ≤ 4``).

References:
    Pao-Huang, Qiu, Ermon, "Generative Modeling with Flux Matching", arXiv:2605.07319.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_positive_int

__all__ = ["check_bandwidth", "kde_weights", "kde_score", "kde_score_jvp", "kde_score_divergence",
           "ou_step", "ou_simulate"]


def check_bandwidth(sigma: float) -> float:
    """Return ``sigma`` as a float if it is a finite number > 0, else ``ValueError`` naming it."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return s


def _check_ref(z: Tensor, ref: Tensor) -> None:
    if ref.ndim != 2 or ref.shape[0] < 1:
        raise ValueError(f"ref must have shape (B, d) with B >= 1, got {tuple(ref.shape)}")
    if z.ndim != 2 or z.shape[1] != ref.shape[1]:
        raise ValueError(f"z must have shape (N, {ref.shape[1]}) to match ref, got {tuple(z.shape)}")


def kde_weights(z: Tensor, ref: Tensor, sigma: float) -> Tensor:
    r"""Kernel responsibilities ``w_{ij} = softmax_j(-‖z_i - x_j‖² / 2σ²)``, shape ``(N, B)``.

    ``‖z_i‖²`` is the same for every ``j`` and cancels in the softmax, so the logits are
    ``(z_i·x_j - ‖x_j‖²/2) / σ²``: one GEMM, no ``(N, B, d)`` difference tensor.
    """
    _check_ref(z, ref)
    sigma = check_bandwidth(sigma)
    logits = (z @ ref.T - 0.5 * ref.pow(2).sum(-1)) / sigma**2
    return torch.softmax(logits, dim=-1)


def kde_score(z: Tensor, ref: Tensor, sigma: float, *, weights: Tensor | None = None) -> Tensor:
    r"""Exact score of the batch KDE, ``s(z) = (Σ_j w_j x_j - z) / σ²``: z (N, d) -> (N, d)."""
    w = kde_weights(z, ref, sigma) if weights is None else weights
    return (w @ ref - z) / float(sigma) ** 2


def kde_score_jvp(z: Tensor, v: Tensor, ref: Tensor, sigma: float, *, weights: Tensor | None = None) -> Tensor:
    r"""``∇s(z) · v = (C_w v / σ² - v) / σ²`` with ``C_w v = Σ_j w_j x_j ((x_j - m)·v)``.

    Shapes: z, v (N, d) -> (N, d). Differentiable in ``z`` (used inside the double backprop).
    """
    s2 = float(sigma) ** 2
    w = kde_weights(z, ref, sigma) if weights is None else weights
    m = w @ ref
    proj = v @ ref.T - (m * v).sum(-1, keepdim=True)  # (N, B): (x_j - m)·v
    return ((w * proj) @ ref / s2 - v) / s2


def kde_score_divergence(z: Tensor, ref: Tensor, sigma: float, *, weights: Tensor | None = None) -> Tensor:
    r"""``∇·s(z) = (Σ_j w_j ‖x_j‖² - ‖m‖²) / σ⁴ - d / σ²``, shape ``(N,)``."""
    s2 = float(sigma) ** 2
    w = kde_weights(z, ref, sigma) if weights is None else weights
    m = w @ ref
    return (w @ ref.pow(2).sum(-1) - m.pow(2).sum(-1)) / s2**2 - ref.shape[1] / s2


def ou_step(z: Tensor, ref: Tensor, sigma: float, h: float | Tensor, noise: Tensor) -> Tensor:
    r"""One exact OU step of length ``h`` towards ``m(z)``: ``z' = m + ρ (z - m) + σ√(1-ρ²) ξ``.

    Shapes: z, noise (N, d); ``h`` a number or a 0-d tensor >= 0; ``ρ = e^{-h}``. The mean and
    the noise are combined in one fused ``lerp`` + ``addcmul`` (no intermediate score).
    """
    rho = torch.exp(-torch.as_tensor(h, dtype=z.dtype, device=z.device))
    m = kde_weights(z, ref, sigma) @ ref
    std = float(sigma) * torch.sqrt((1 - rho * rho).clamp_min(0))
    return torch.addcmul(torch.lerp(m, z, rho), noise, std)


def ou_simulate(z: Tensor, ref: Tensor, sigma: float, t: float | Tensor, *, steps: int = 4,
                generator: torch.Generator | None = None) -> Tensor:
    r"""Simulate ``dz = σ² s(z) dt + √2 σ dW`` from ``z`` for time ``t`` in ``steps`` exact OU steps.

    Shapes: z (N, d) -> (N, d). Randomness only through ``generator``.
    """
    check_positive_int("steps", steps)
    t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    if t.ndim != 0 or not bool(t >= 0):
        raise ValueError(f"t must be a single number >= 0, got {t!r}")
    h = t / steps
    for _ in range(steps):
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        z = ou_step(z, ref, sigma, h, noise)
    return z
