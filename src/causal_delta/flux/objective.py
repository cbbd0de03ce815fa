r"""Flux Matching objective (arXiv 2605.07319) and denoising score matching beside it.

A *stationary field* is a callable ``field(x) -> (B, d)`` on points ``x (B, d)``; modules built
in :mod:`causal_delta.flux.fields` also accept ``field(x, t)`` (``t`` ignored) and offer
``forward_jvp(x, t, dx) -> (f, J_f dx)``, so the library's JVP tools apply to them.

Stationarity of ``p`` under ``dx = f dt + √2 dW`` is ``∇·(p (f - s)) = 0`` with ``s = ∇ log p``.
Writing ``u = f - s``, the Langevin–Stein residual

.. math:: r(x) = ∇·u(x) + u(x)·s(x) = \frac{∇·(p u)}{p}(x)

must vanish; score matching is the special case ``u = 0``. The divergence is estimated by
Hutchinson's trick with Rademacher probes ``ε`` (``E[εεᵀ] = I``): ``∇·u ≈ εᵀ J_u ε``. With
``method="forward"`` the product ``J_u ε`` is one forward-mode JVP (the model's hand-written
``forward_jvp`` when it has one, else :func:`torch.func.jvp`); ``method="backward"`` is the
direct route, ``εᵀ ∇_x(u·ε)`` by reverse mode with ``create_graph``; ``method="exact"`` sums
``d`` JVPs on the unit vectors (small ``d``: tests and diagnostics).

The loss (as we read arXiv 2605.07319): minimise ``J(θ) = ∫_0^H E[r(x_0) r(x_t)] dt`` along
the KDE's Langevin diffusion started at ``x_0 = x + σ ε``. Its θ-gradient is, by reversibility
and Stein's identity ``E_p[(∇·v + v·s) g] = -E_p[v·∇g]``,
``∇_θ J = -2 E[∂_θ u(x_0) · ∇_{x_0} ∫ E[r(x_t) | x_0] dt]``; pathwise
``∂x_t/∂x_0 = e^{-t}``. So with ``t ~ U(0, H)`` (density ``q = 1/H``), ``ĝ = (e^{-t}/q) ∇r(x_t)``
computed by double backprop and detached, the surrogate is

.. math:: L(θ) = -2\, u_θ(x_0) · \mathrm{sg}(ĝ), \qquad u_θ = f_θ - s,

and θ gets its gradient only through ``f_θ(x_0)`` (first order). With ``pairing="posterior"``
(the authors' choice) ``ĝ_i`` averages ``∇r(x_t^{(j)})`` over the batch with weights
``softmax_i(-‖μ_i - x_t^{(j)}‖² / 2σ²(1 - e^{-2t}))``, ``μ_i`` the transition mean from
``x_0^{(i)}``; ``pairing="own"`` uses each sample's own ``x_t``.

Here ``J_u ε = J_f ε - ∇s ε`` uses the exact KDE Jacobian (so ``r ≡ 0`` when ``f = s``
exactly, without Hutchinson noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from .._compat import load_forward_ad
from .._validation import check_positive_int
from .reference import check_bandwidth, kde_score, kde_score_jvp, kde_weights, ou_simulate

__all__ = ["DIVERGENCE_METHODS", "PAIRINGS", "SIMULATIONS", "TIME_SAMPLINGS", "rademacher", "field_jvp",
           "field_jacobian", "divergence",
           "stein_residual", "flux_matching_loss", "dsm_loss"]

DIVERGENCE_METHODS = ("forward", "backward", "exact")
PAIRINGS = ("own", "posterior")
SIMULATIONS = ("label", "frozen-mean")
TIME_SAMPLINGS = ("uniform", "exponential")

Field = Callable[[Tensor], Tensor]


def _check_points(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, d), got {shape}")
    return x


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def rademacher(shape: tuple[int, ...], *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Independent ±1 entries with probability ½ each (``E[ε] = 0``, ``E[εεᵀ] = I``)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def field_jvp(field: Field, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(x), J_f(x) dx)``: the field's ``forward_jvp`` if it has one, else :func:`torch.func.jvp`.

    Shapes: x, dx (B, d) -> two (B, d) tensors. The loss backpropagates through ``J_f dx``, so
    ``method="forward"`` needs a twice-differentiable JVP: :func:`torch.func.jvp` is, and so are
    the JVPs of :class:`~causal_delta.flux.TimeFree` and :class:`~causal_delta.flux.MaskedMLP`
    (plain ops); a ``forward_jvp`` calling ATen's ``silu_backward`` directly (the library MLP's
    own) is not, which is why :class:`~causal_delta.flux.TimeFree` does not use it.
    """
    fj = getattr(field, "forward_jvp", None)
    if fj is not None:
        return fj(x, None, dx)
    load_forward_ad()  # first forward-mode call: without torch's jit.script FutureWarning
    # without has_aux, torch.func.jvp returns (output, jvp_out); its stub also allows the aux triple
    return cast("tuple[Tensor, Tensor]", torch.func.jvp(field, (x,), (dx,)))


def field_jacobian(field: Field, x: Tensor) -> Tensor:
    """``J[b, i, j] = ∂f_i/∂x_j`` at each point, ``(B, d, d)``, from ``d`` JVPs in one batch."""
    _check_points("x", x)
    B, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    xs = x.repeat_interleave(d, dim=0)  # (B d, d): point b with direction j at row b d + j
    _, cols = field_jvp(field, xs, eye.repeat(B, 1))
    return cols.reshape(B, d, d).transpose(1, 2)


def divergence(field: Field, x: Tensor, *, method: str = "forward", probes: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    r"""Divergence ``∇·f(x)``, shape ``(B,)``: exact, or Hutchinson ``εᵀ J_f ε`` (one probe).

    Args:
        method: ``"exact"`` (trace of :func:`field_jacobian`), ``"forward"`` (``J ε`` by a JVP)
            or ``"backward"`` (``∇_x(f·ε)`` by reverse mode; ``x`` must be part of a graph or
            a leaf that can require grad).
        probes: ``ε`` of shape (B, d); Rademacher from ``generator`` when omitted.
    """
    _check_choice("method", method, DIVERGENCE_METHODS)
    _check_points("x", x)
    if method == "exact":
        return torch.diagonal(field_jacobian(field, x), dim1=-2, dim2=-1).sum(-1)
    eps = rademacher(tuple(x.shape), generator=generator, dtype=x.dtype, device=x.device) \
        if probes is None else probes
    if eps.shape != x.shape:
        raise ValueError(f"probes must have the shape of x {tuple(x.shape)}, got {tuple(eps.shape)}")
    if method == "forward":
        return (eps * field_jvp(field, x, eps)[1]).sum(-1)
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        g = torch.autograd.grad((field(x) * eps).sum(), x, create_graph=True)[0]
    return (eps * g).sum(-1)


def stein_residual(u: Field, x: Tensor, score: Tensor | Field, *, method: str = "exact",
                   probes: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    r"""Langevin–Stein residual ``r = ∇·u + u·s`` of the field ``u = f - s``, shape ``(B,)``.

    ``score`` is ``s(x)`` as a (B, d) tensor or a callable. Zero for every ``u`` with
    ``∇·(p u) = 0``, e.g. ``u = R₉₀ ∇ψ / p`` or ``u = R₉₀ s`` in 2-D.
    """
    _check_points("x", x)
    s = score(x) if callable(score) else score
    return divergence(u, x, method=method, probes=probes, generator=generator) + (u(x) * s).sum(-1)


def _kde_residual(field: Field, z: Tensor, ref: Tensor, sigma: float, eps: Tensor, method: str) -> Tensor:
    """``r̂(z)`` for ``u = f - s_KDE`` with one probe ``eps``; differentiable in ``z``."""
    w = kde_weights(z, ref, sigma)
    s = kde_score(z, ref, sigma, weights=w)
    if method == "backward":
        f = field(z)
        g = torch.autograd.grad(((f - s) * eps).sum(), z, create_graph=True)[0]
        div = (eps * g).sum(-1)
    else:
        if method == "forward":
            f, jf = field_jvp(field, z, eps)
            ju = jf - kde_score_jvp(z, eps, ref, sigma, weights=w)
            div = (eps * ju).sum(-1)
        else:  # exact
            f = field(z)
            div = divergence(lambda y: field(y) - kde_score(y, ref, sigma), z, method="exact")
    return div + ((f - s) * s).sum(-1)


def flux_matching_loss(field: Field, x: Tensor, sigma: float, *, horizon: float = 4.0, simulation: str = "label",
                       ou_steps: int = 4, method: str = "forward", pairing: str = "own",
                       time_sampling: str = "uniform", generator: torch.Generator | None = None) -> Tensor:
    r"""Stop-gradient Flux Matching surrogate ``mean_i -2 u_θ(x_0^i) · sg(ĝ_i)`` (module docstring).

    Args:
        field: the trainable stationary field ``f_θ``.
        x: data batch (B, d); it is also the KDE reference.
        sigma: KDE bandwidth ``σ`` (the stationary law is the data smoothed by ``N(0, σ² I)``).
        horizon: ``H``; one ``t`` per batch.
        time_sampling: ``"uniform"``: ``t ~ U(0, H)``, weight ``e^{-t} H``; ``"exponential"``:
            importance sampling ``q(t) ∝ e^{-t}`` on ``[0, H]``, so the weight ``e^{-t}/q(t) =
            1 - e^{-H}`` is constant (lower variance, same expectation).
        simulation: how ``x_t`` is drawn from ``x_0 = x_i + σ ε_i``. ``"label"``: the exact OU
            towards the kernel ``x_i`` that ``x_0`` was drawn from,
            ``x_t = x_i + σ (e^{-t} ε_i + \sqrt{1 - e^{-2t}} ξ)`` — one fused step, no
            ``B × B`` work; this Markov process on (kernel, point) is reversible with the KDE
            as its stationary law, so ``∫ E[r(x_0) r(x_t)] dt`` is still a non-negative form that
            vanishes only at ``r ≡ 0``. ``"frozen-mean"``: ``ou_steps`` OU steps towards the
            softmax mean ``m(z)`` of the whole batch (the authors' simulation).
        method: divergence estimator inside ``r`` (see :func:`divergence`).
        pairing: ``"own"`` (``ĝ_i`` from sample ``i``'s own ``x_t``) or ``"posterior"`` (the
            authors' batch average, module docstring).

    Returns:
        The scalar surrogate. Its value is not the objective ``J``; its θ-gradient estimates
        ``∇_θ J`` (pathwise in ``x_0`` with ``∂x_t/∂x_0 ≈ e^{-t} I``) and is exactly zero in
        expectation wherever ``r ≡ 0``.
    """
    _check_points("x", x)
    sigma = check_bandwidth(sigma)
    _check_choice("method", method, DIVERGENCE_METHODS)
    _check_choice("pairing", pairing, PAIRINGS)
    _check_choice("simulation", simulation, SIMULATIONS)
    _check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    check_positive_int("ou_steps", ou_steps)
    if not float(horizon) > 0:
        raise ValueError(f"horizon must be a number > 0, got {horizon!r}")
    x = x.detach()
    B, d = x.shape
    noise = torch.randn(B, d, generator=generator, dtype=x.dtype, device=x.device)
    x0 = x + sigma * noise
    u = torch.rand((), generator=generator, dtype=x.dtype, device=x.device)
    if time_sampling == "uniform":
        t = float(horizon) * u
        weight = float(horizon) * torch.exp(-t)
    else:  # inverse CDF of the truncated exponential
        mass = 1.0 - math.exp(-float(horizon))
        t = -torch.log1p(-u * mass)
        weight = torch.as_tensor(mass, dtype=x.dtype, device=x.device)
    rho = torch.exp(-t)
    if simulation == "label":
        xi = torch.randn(B, d, generator=generator, dtype=x.dtype, device=x.device)
        # fused exact OU step: x + σ (ρ ε + √(1-ρ²) ξ)
        xt = x + sigma * torch.addcmul(rho * noise, xi, torch.sqrt((1 - rho * rho).clamp_min(0)))
    else:
        xt = ou_simulate(x0, x, sigma, t, steps=ou_steps, generator=generator)
    eps = rademacher((B, d), generator=generator, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        z = xt.detach().requires_grad_(True)
        r = _kde_residual(field, z, x, sigma, eps, method)
        grad_r = torch.autograd.grad(r.sum(), z)[0].detach()
    if pairing == "posterior":
        w0 = kde_weights(x0, x, sigma)
        mu = torch.lerp(w0 @ x, x0, rho)  # transition mean from each x_0 over time t
        var = (sigma**2 * (1 - rho * rho)).clamp_min(torch.finfo(x.dtype).tiny)
        logits = -(torch.cdist(mu, xt).pow(2)) / (2 * var)  # (i, j)
        grad_r = torch.softmax(logits, dim=0) @ grad_r
    g_hat = weight * grad_r
    with torch.no_grad():
        s0 = kde_score(x0, x, sigma)
    return -2.0 * ((field(x0) - s0) * g_hat).sum(-1).mean()


def dsm_loss(field: Field, x: Tensor, sigma: float, *, target: str = "noise",
             generator: torch.Generator | None = None) -> Tensor:
    r"""Denoising score matching at noise ``σ``: ``σ² mean ‖f(x + σε) - τ‖²`` (summed over d).

    ``target="noise"``: ``τ = -ε/σ`` (Vincent 2011); ``target="kde"``: ``τ`` the exact batch-KDE
    score at ``x + σε`` (same minimiser, lower variance). Either way the minimiser is the
    score of the data smoothed by ``N(0, σ² I)`` — the stationary law Flux Matching targets.
    """
    _check_points("x", x)
    sigma = check_bandwidth(sigma)
    _check_choice("target", target, ("noise", "kde"))
    x = x.detach()
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    xn = x + sigma * eps
    tau = -eps / sigma if target == "noise" else kde_score(xn, x, sigma)
    return sigma**2 * (field(xn) - tau).pow(2).sum(-1).mean()
