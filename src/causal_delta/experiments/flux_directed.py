r"""Directed structure with Flux Matching: a masked (lower-triangular) field on a linear SCM.

Two systems: the 4-variable SCM :data:`SCM_WEIGHTS`, and a short trajectory of a damped 2-D
oscillator (:func:`oscillator_system`, 4 time steps, ``d = 8``) whose mask is causal in time.

Data: the linear SCM ``x = B x + e`` of :data:`SCM_WEIGHTS` (4 variables in causal order,
unit noise), smoothed by the KDE bandwidth ``σ``, so the stationary target is
``N(0, Σ + σ² I)``. A :class:`~causal_delta.flux.MaskedMLP` whose Jacobian is lower-triangular
by construction is trained with Flux Matching and, from the same initialisation and mask, with
denoising score matching. The exact answer for Flux Matching is the unique lower-triangular
``A`` with ``A Σ + Σ Aᵀ = 2 I`` (:func:`~causal_delta.flux.directed.triangular_stationary_drift`):
the field ``-A x``. Reported:

- the directed dependency matrix of each field, ``E_x[∂f_i/∂x_j]`` over the smoothed data,
  next to ``-A`` (and the SCM's ``B``), with the largest entry-wise error;
- masked entries checked exactly zero both in the field Jacobian and in the Jacobian of the
  flow map ``x ↦ φ_1(x)`` of ``dx/dt = f(x)`` computed with :func:`causal_delta.jvp.jacobian`;
- MMD² of Langevin samples of each field to the smoothed data and the relative Frobenius
  error of their covariance against ``Σ + σ² I`` (the masked score cannot represent ``Σ⁻¹``,
  so DSM's samples should fit worse).

Under ``torchrun`` the fields train on rank 0 and their weights are broadcast; the flow-map
Jacobians and the Langevin chains split over the ranks (as in :mod:`.flux`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["SCM_WEIGHTS", "oscillator_system", "run_directed"]

SCM_WEIGHTS = ((0.0, 0.0, 0.0, 0.0), (0.8, 0.0, 0.0, 0.0), (0.0, -0.6, 0.0, 0.0), (0.5, 0.0, 0.7, 0.0))
"""``B[i][j]``: effect of ``x_j`` on ``x_i`` (x1 → x2 → x3 → x4 and x1 → x4)."""


def oscillator_system(steps: int = 4, *, rho: float = 0.9, omega: float = 0.6, noise: float = 0.5):
    r"""A damped 2-D oscillator observed at ``steps`` times, as a linear SCM over ``d = 2·steps``.

    ``z_{k+1} = ρ R(ω) z_k + ε_k``, ``ε_k ~ N(0, q I)`` (``q = noise²``), started in its
    stationary law ``N(0, q/(1-ρ²) I)``. Flattened as ``x = (z_0, z_1, …)`` it is ``x = B x + e``
    with ``B`` block-subdiagonal (``ρ R(ω)``): strictly lower-triangular, so the SCM tools apply.

    Returns:
        ``(B, noise_std)``: weights (d, d) float64 and per-variable noise standard deviations (d,).
    """
    import math

    d = 2 * steps
    rot = rho * torch.tensor([[math.cos(omega), -math.sin(omega)], [math.sin(omega), math.cos(omega)]],
                             dtype=torch.float64)
    B = torch.zeros(d, d, dtype=torch.float64)
    for k in range(steps - 1):
        B[2 * k + 2: 2 * k + 4, 2 * k: 2 * k + 2] = rot
    std = torch.full((d,), noise, dtype=torch.float64)
    std[:2] = noise / math.sqrt(1 - rho**2)
    return B, std


def run_directed(config, timer, *, system: str = "scm", progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train masked flux and DSM fields on the SCM; return ``(results, arrays for the figure)``.

    Uses ``config.directed_sigma`` (the bandwidth here: the batch KDE of 4-D data must be close
    to the smoothed population), ``directed_lr``, ``directed_hidden``, ``train_steps``,
    ``batch_size``, ``lr_schedule``, ``n_data``, ``n_samples``, ``langevin_steps``, ``eta``, the
    Flux Matching options (``method``, ``simulation``, ``pairing``, ``horizon``,
    ``time_sampling``) and ``seed``.
    """
    from ..flux import MaskedMLP, field_jacobian, mmd2
    from ..flux.directed import linear_scm_covariance, linear_scm_sample, triangular_stationary_drift
    from ..jvp import jacobian
    from ._common import seeded, split_rows
    from .flux import _fit, _langevin

    if system == "scm":
        B, noise_std = torch.tensor(SCM_WEIGHTS, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    elif system == "oscillator":
        B, noise_std = oscillator_system()
    else:
        raise ValueError(f"system must be 'scm' or 'oscillator', got {system!r}")
    d = B.shape[0]
    sigma = float(config.directed_sigma)
    cov = linear_scm_covariance(B, noise_std) + sigma**2 * torch.eye(d, dtype=torch.float64)
    true = -triangular_stationary_drift(cov)  # Jacobian of the exact triangular field
    with seeded(config.seed + 7) as gen:
        data = linear_scm_sample(B, config.n_data, noise_std=noise_std, generator=gen)
        smoothed = data + sigma * torch.randn(data.shape, generator=gen)
        start = torch.randn(config.n_samples, d, generator=gen) * 2.0
        init = MaskedMLP(range(d), hidden=config.directed_hidden, depth=2)
    ref_a, ref_b = smoothed[: config.n_samples], smoothed[config.n_samples: 2 * config.n_samples]
    mask = init.mask
    flux_kwargs = dict(method=config.method, simulation=config.simulation, pairing=config.pairing,
                       horizon=config.horizon, time_sampling=config.time_sampling)
    results: dict[str, Any] = {"scm_weights": B, "true_jacobian": true, "mask": mask,
                               "mmd2_noise_floor": mmd2(ref_a, ref_b)}
    arrays: dict[str, Any] = {"true": true}
    for objective in ("flux", "dsm"):
        field = copy.deepcopy(init)  # same initialisation for both objectives, no global RNG draw
        with timer(f"train_{system}_{objective}"):
            fit = _fit(field, data, objective=objective, sigma=sigma, steps=config.train_steps,
                       batch_size=config.batch_size, lr=config.directed_lr,
                       lr_schedule=config.lr_schedule, seed=config.seed + 7, progress=progress,
                       **(flux_kwargs if objective == "flux" else {}))
        with timer(f"measure_{system}_{objective}"):
            with torch.no_grad():
                J = field_jacobian(field, ref_a).double()
            est = J.mean(0)
            flow_J = split_rows(lambda a, f=field: jacobian(f, a, method="rk4", steps=10), ref_a[:200])
            gen = torch.Generator().manual_seed(config.seed + 8)
            x = _langevin(field, start, steps=config.langevin_steps, eta=config.eta, generator=gen,
                          progress=progress).x
            results[objective] = {
                "estimated_jacobian": est,
                "max_abs_error_vs_true": float((est - true).abs().max()),
                "masked_field_entries_nonzero": int(torch.count_nonzero(J * (1 - mask))),
                "masked_flow_map_entries_nonzero": int(torch.count_nonzero(flow_J * (1 - mask))),
                "max_abs_masked_entry": float((J * (1 - mask)).abs().max()),
                "mmd2": mmd2(x, ref_a),
                # relative Frobenius error of the sample covariance against Σ + σ² I
                "cov_rel_error": float(torch.linalg.matrix_norm(torch.cov(x.double().T) - cov)
                                       / torch.linalg.matrix_norm(cov)),
                "train_seconds": round(fit.seconds, 2),
            }
            arrays[objective] = est
    return results, arrays
