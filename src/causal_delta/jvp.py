r"""Jacobian-vector products of the generator :math:`f(x_0) = \phi_1(x_0)` through a solver.

The generator is the solution at ``t = 1`` of :math:`\dot x = v(x, t)` started at ``x0``,
*as discretised by the solver* (method and time grid). Three ways to differentiate it, all on
the same grid:

* **finite differences** (Eq. 5 of arXiv 2602.02793), forward
  :math:`(f(x_0 + \varepsilon z) - f(x_0)) / \varepsilon` or central
  :math:`(f(x_0 + \varepsilon z) - f(x_0 - \varepsilon z)) / 2\varepsilon`. Both passes run
  as one batch (PERF.md: a batch of 2B costs ~1.6x a batch of B, not 2x).
* **forward mode** (:func:`jvp_forward`): the tangent is carried through every solver step.
  Runge–Kutta discretisation commutes with linearisation, so integrating the augmented system
  :math:`\tfrac{d}{dt}(x, \dot x) = (v(x, t), J_v(x, t)\,\dot x)` with the same method and
  grid gives *exactly* the JVP of the discretised map. Each stage uses the model's
  ``forward_jvp(x, t, dx)`` when present, else :func:`torch.func.jvp`; everything runs under
  ``torch.no_grad``, so memory does not grow with the number of steps.
* **the full Jacobian** (:func:`jacobian`) for small event sizes, by forward mode on the
  identity directions.

Units: every function here returns :math:`J z` — the derivative along the probe ``z`` — never
:math:`J(\varepsilon z)`. (The original research code returned ``J u`` from one helper and
``J (ε u)`` from the other.) The paper's CelebA script perturbed each sample along one random
direction of norm ``ε = 1e-2``; that is ``probes=1, normalize=True`` here, with responses
``1/ε`` times the paper's — correlations are unaffected by this global scale.

:func:`attribute_jvp` composes the generator with a read-out (selected pixels, or a classifier
``C`` on logits): :math:`\Delta y = J_{C \circ f}(x_0) z`, shape ``(n·P, m)``, the input of
:mod:`causal_delta.dependence`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._compat import load_forward_ad
from ._validation import check_positive_int
from .solvers import METHODS, Velocity, dopri5_grid, integrate, time_grid

__all__ = [
    "MODES",
    "PROBE_KINDS",
    "default_eps",
    "make_probes",
    "GeneratorJVP",
    "jvp_fd",
    "jvp_forward",
    "generator_jvp",
    "jacobian",
    "AttributeJVP",
    "pixel_readout",
    "attribute_jvp",
    "readout_gradient",
    "SingularDirections",
    "top_singular_directions",
    "eps_sweep",
    "write_eps_sweep",
]

MODES = ("forward", "fd", "central")
"""``forward``: forward-mode AD; ``fd``: forward differences; ``central``: central differences."""

PROBE_KINDS = ("gaussian", "rademacher")

# A read-out maps generated samples (B, *event) to features (B, m).
Readout = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- checks


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _check_x0(x0: Tensor) -> Tensor:
    if not isinstance(x0, Tensor) or x0.ndim < 2 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating-point tensor of shape (B, *event), got {shape}")
    return x0


def _probe_layout(x0: Tensor, z: Tensor) -> int:
    """Number of probes per sample ``P``: ``z`` is ``(B, *event)`` (P = 1) or ``(B, P, *event)``."""
    if not isinstance(z, Tensor):
        raise ValueError(f"probes must be a tensor of shape (B, *event) or (B, P, *event), got {type(z).__name__}")
    event = tuple(x0.shape[1:])
    shape = tuple(z.shape)
    if shape == tuple(x0.shape):
        return 1
    if len(shape) == x0.ndim + 1 and shape[0] == x0.shape[0] and shape[2:] == event and shape[1] >= 1:
        return shape[1]
    want_b = (x0.shape[0], *event)
    raise ValueError(
        f"probes must have shape (B, *event) = {want_b} or (B, P, *event) = "
        f"({x0.shape[0]}, P, {', '.join(map(str, event))}) to match x0, got {shape}"
    )


def _check_eps(eps: float) -> float:
    e = float(eps)
    if not (e > 0.0) or not math.isfinite(e):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return e


def default_eps(dtype: torch.dtype, mode: str = "central") -> float:
    r"""Finite-difference step for ``dtype``: :math:`\sqrt{u}` (forward) or :math:`u^{1/3}` (central).

    ``u`` is the unit round-off ``torch.finfo(dtype).eps``. These balance truncation error
    (``O(ε)`` resp. ``O(ε²)``) against round-off (``O(u / ε)``) for a map with O(1) entries
    and O(1) derivatives, probed along a direction with O(1) entries (or unit norm).

    ========  ===========  ===========
    dtype     forward      central
    ========  ===========  ===========
    float32   3.5e-4       4.9e-3
    float64   1.5e-8       6.1e-6
    ========  ===========  ===========
    """
    if mode not in ("fd", "central", "forward"):
        raise ValueError(f"mode must be 'fd' or 'central', got {mode!r}")
    u = torch.finfo(dtype).eps
    return u ** (1.0 / 3.0) if mode == "central" else u ** 0.5


def _warn_roundoff(eps: float, dtype: torch.dtype, mode: str) -> None:
    """Warn when round-off (``u / ε``) dominates the finite-difference error."""
    u = torch.finfo(dtype).eps
    if eps < 0.1 * default_eps(dtype, mode):
        warnings.warn(
            f"finite differences in {str(dtype).replace('torch.', '')} with eps={eps:g}: round-off "
            f"dominates (relative error of order u/eps = {u / eps:.1e}; the original code's float32 "
            f"eps=1e-6 gives ~20 % error). Use eps ~ {default_eps(dtype, mode):.1e}, float64, "
            "or mode='forward'.",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- probes


def make_probes(
    n: int,
    event_shape: Sequence[int],
    *,
    probes: int = 1,
    kind: str = "gaussian",
    normalize: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Random probe directions ``z``, shape ``(n, probes, *event_shape)``.

    Args:
        kind: ``"gaussian"`` (:math:`z \sim N(0, I)`) or ``"rademacher"`` (entries ±1).
        normalize: rescale each probe to unit Euclidean norm. The paper's CelebA script used one
            random direction per sample of norm ``ε = 1e-2``, i.e. normalised probes
            (``probes=1, normalize=True``; our responses are in units of ``J z``, i.e. divided
            by ``ε``). Unnormalised Gaussian probes give :math:`E[(Jz)(Jz)^T] = J J^T` exactly;
            normalised ones give :math:`J J^T / d` — the same correlation.
    """
    check_positive_int("n", n)
    check_positive_int("probes", probes)
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    event = tuple(int(s) for s in event_shape)
    shape = (n, probes, *event)
    if kind == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    else:
        z = torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    if normalize:
        norms = z.flatten(2).norm(dim=2).clamp_min(torch.finfo(dtype).tiny)
        z = z / norms.reshape(n, probes, *([1] * len(event)))
    return z


# --------------------------------------------------------------------------- generator JVPs


@dataclass
class GeneratorJVP:
    """Result of :func:`jvp_fd` / :func:`jvp_forward`.

    Attributes:
        x: generated samples ``f(x0)``, shape ``(B, *event)``; ``None`` for central differences
            (which never evaluate ``f`` at ``x0``).
        jvp: ``J_f(x0) z``, shape of the probes — ``(B, *event)`` or ``(B, P, *event)``.
            Units: derivative along ``z`` (not multiplied by ε).
        grid: time points used, ``(N + 1,)``.
        nfe: velocity evaluations of one solve (one batch through the grid, plus the dopri5
            grid search when there was one); forward mode counts a primal + tangent call as one.
        mode: ``"forward"``, ``"fd"`` or ``"central"``.
        eps: finite-difference step (``None`` for forward mode).
        nfe_total: velocity calls of all chunks together (``nfe`` when there is one chunk).
    """

    x: Tensor | None
    jvp: Tensor
    grid: Tensor
    nfe: int
    mode: str
    eps: float | None = None
    nfe_total: int | None = None

    def __post_init__(self) -> None:
        if self.nfe_total is None:
            self.nfe_total = self.nfe


def _resolve_grid(velocity: Velocity, x0: Tensor, method: str, steps: int, grid: Tensor | None,
                  atol: float, rtol: float) -> tuple[Tensor, int]:
    """The grid shared by every pass: given, uniform, or chosen by dopri5 on the primal ``x0``."""
    if grid is not None:
        return grid.to(device=x0.device, dtype=x0.dtype), 0
    if method == "dopri5":
        with torch.no_grad():
            return dopri5_grid(velocity, x0, atol=atol, rtol=rtol)
    return time_grid(steps, dtype=x0.dtype, device=x0.device), 0


def _warn_training(module: Any, name: str) -> None:
    if isinstance(module, nn.Module) and module.training:
        warnings.warn(f"{name} is in training mode (dropout / batch-norm make the map random or "
                      f"batch-dependent); call {name}.eval()", RuntimeWarning, stacklevel=3)


def _fd_endpoints(velocity, x0, z, P, eps, mode, method, grid):
    """Generated samples at the FD evaluation points, one batch. Returns (f0 or None, fp, fm or None)."""
    B = x0.shape[0]
    event = tuple(x0.shape[1:])
    zf = z.reshape(B * P, *event)
    xr = x0.repeat_interleave(P, dim=0) if P > 1 else x0
    if mode == "fd":
        batch = torch.cat([x0, xr + eps * zf])
    else:
        batch = torch.cat([xr + eps * zf, xr - eps * zf])
    with torch.no_grad():
        sol = integrate(velocity, batch, method=method, grid=grid)
    out = sol.x
    if mode == "fd":
        return out[:B], out[B:], None, sol.nfe
    return None, out[: B * P], out[B * P:], sol.nfe


def jvp_fd(
    velocity: Velocity,
    x0: Tensor,
    z: Tensor,
    *,
    eps: float | None = None,
    mode: str = "central",
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-6,
) -> GeneratorJVP:
    r"""Finite-difference JVP of the generator (Eq. 5), both passes as one batch.

    ``fd``: :math:`(f(x_0 + \varepsilon z) - f(x_0)) / \varepsilon`, error ``O(ε) + O(u/ε)``.
    ``central``: :math:`(f(x_0 + \varepsilon z) - f(x_0 - \varepsilon z)) / 2\varepsilon`,
    error ``O(ε²) + O(u/ε)``. Both return :math:`J z` (units of the probe, not of ``ε z``).

    Args:
        velocity: ``velocity(x: (B, *event), t: (B,))``.
        x0: source points ``(B, *event)``.
        z: probes ``(B, *event)`` or ``(B, P, *event)`` (``P`` probes per sample).
        eps: step; default :func:`default_eps` of ``x0.dtype``. A ``RuntimeWarning`` is raised
            when it is so small that round-off dominates (e.g. float32 with ``eps=1e-6``).
        mode: ``"fd"`` (forward differences) or ``"central"``.
        method, steps, grid: solver (see :func:`causal_delta.solvers.integrate`); every pass uses
            the same grid (for adaptive ``dopri5`` the grid is chosen on ``x0``).

    Returns:
        :class:`GeneratorJVP` (``x`` is ``None`` for central differences).
    """
    _check_x0(x0)
    if mode not in ("fd", "central"):
        raise ValueError(f"mode must be 'fd' or 'central' for finite differences, got {mode!r}")
    _check_method(method)
    P = _probe_layout(x0, z)
    eps = default_eps(x0.dtype, mode) if eps is None else _check_eps(eps)
    _warn_roundoff(eps, x0.dtype, mode)
    _warn_training(velocity, "velocity")
    z = z.to(dtype=x0.dtype, device=x0.device)
    grid, nfe0 = _resolve_grid(velocity, x0, method, steps, grid, atol, rtol)
    f0, fp, fm, nfe = _fd_endpoints(velocity, x0, z, P, eps, mode, method, grid)
    if mode == "fd":
        base = f0.repeat_interleave(P, dim=0) if P > 1 else f0
        d = (fp - base) / eps
    else:
        d = (fp - fm) / (2.0 * eps)
    return GeneratorJVP(x=f0, jvp=d.reshape(z.shape), grid=grid, nfe=nfe0 + nfe, mode=mode, eps=eps)


def _stage_jvp(velocity: Velocity, use_forward_jvp: bool | None) -> tuple[Callable, bool]:
    """``(x, t, dx) -> (v, J_v dx)``: the model's ``forward_jvp`` when present, else torch.func.jvp."""
    fj = getattr(velocity, "forward_jvp", None)
    owner = getattr(velocity, "__self__", None)
    if fj is None and owner is not None and getattr(velocity, "__name__", "") in ("velocity", "forward", "__call__"):
        # a bound ``obj.velocity`` / ``module.forward``: the owner's forward_jvp is its JVP
        fj = getattr(owner, "forward_jvp", None)
    if use_forward_jvp and fj is None:
        raise ValueError("use_forward_jvp=True but the velocity has no forward_jvp(x, t, dx) method")
    if fj is not None and use_forward_jvp is not False:
        return fj, True

    def fn(x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        try:
            return torch.func.jvp(lambda y: velocity(y, t), (x,), (dx,))
        except RuntimeError as exc:  # pragma: no cover - depends on the model
            raise RuntimeError(
                "forward-mode JVP failed inside the velocity (a custom autograd Function without "
                "forward-mode support, or an in-place op?); give the model a forward_jvp(x, t, dx) "
                f"or use mode='central'. Original error: {exc}"
            ) from exc

    return fn, False


def _augmented_velocity(velocity: Velocity, B: int, P: int, event: tuple[int, ...],
                        use_forward_jvp: bool | None) -> Velocity:
    r"""Velocity of the augmented state ``cat([x (B), ẋ (B·P)])``: ``(v(x, t), J_v(x, t) ẋ)``."""
    stage, fast = _stage_jvp(velocity, use_forward_jvp)

    def aug(state: Tensor, t: Tensor) -> Tensor:
        x, dx = state[:B], state[B:]
        tb = t[:B]
        if P == 1:
            v, dv = stage(x, tb, dx)
        elif fast:
            # forward_jvp takes primal and tangent of the same shape: repeat the primal per probe.
            vr, dv = stage(x.repeat_interleave(P, dim=0), t[B:], dx)
            v = vr[::P]
        else:
            # vmap over the probe axis: the primal runs once, the tangent P times batched.
            dxp = dx.reshape(B, P, *event).transpose(0, 1)
            v, dvp = torch.func.vmap(
                lambda d: torch.func.jvp(lambda y: velocity(y, tb), (x,), (d,)),
                in_dims=0, out_dims=(None, 0),
            )(dxp)
            dv = dvp.transpose(0, 1).reshape(B * P, *event)
        return torch.cat([v, dv])

    return aug


def jvp_forward(
    velocity: Velocity,
    x0: Tensor,
    z: Tensor,
    *,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    chunk_size: int | None = None,
    use_forward_jvp: bool | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-6,
) -> GeneratorJVP:
    r"""Exact JVP :math:`J_f(x_0) z` of the *discretised* generator by forward mode.

    Integrates the augmented system :math:`\tfrac{d}{dt}(x, \dot x) = (v(x,t), J_v(x,t)\dot x)`,
    :math:`\dot x(0) = z`, with the same method and grid as the primal; since Runge–Kutta
    methods commute with linearisation this equals the derivative of the solver's map, to
    round-off. Per stage, ``velocity.forward_jvp(x, t, dx)`` is used when it exists (hand-written,
    ~1.6–2× a velocity call), else :func:`torch.func.jvp` (with several probes per sample,
    ``vmap`` over the probes so the primal runs once). Runs under ``torch.no_grad``: memory is
    that of one step, whatever the number of steps.

    Args:
        x0: ``(B, *event)``.
        z: probes ``(B, *event)`` or ``(B, P, *event)``.
        method, steps, grid: solver; ``dopri5`` without grid chooses its grid on the primal ``x0``
            (all chunks share it).
        chunk_size: samples per integration call (each with its ``P`` probes); default all.
        use_forward_jvp: ``None`` (use the model's ``forward_jvp`` if present), ``True``
            (require it), ``False`` (always ``torch.func.jvp``). With ``P > 1`` probes per
            sample the ``forward_jvp`` route repeats the primal once per probe, while the
            ``torch.func.jvp`` route (``vmap`` over probes) computes it once; for many probes the
            latter can be cheaper per probe (see ``benchmarks/jvp.py``).

    Returns:
        :class:`GeneratorJVP` with ``x = f(x0)`` and ``jvp`` shaped like ``z``. ``nfe`` counts
        augmented velocity calls (one primal + tangent evaluation each).
    """
    _check_x0(x0)
    _check_method(method)
    P = _probe_layout(x0, z)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    _warn_training(velocity, "velocity")
    z = z.to(dtype=x0.dtype, device=x0.device)
    B = x0.shape[0]
    event = tuple(x0.shape[1:])
    grid, nfe_grid = _resolve_grid(velocity, x0, method, steps, grid, atol, rtol)
    zf = z.reshape(B, P, *event)
    chunk = B if chunk_size is None else chunk_size
    xs, dxs = [], []
    nfe = nfe_total = nfe_grid
    load_forward_ad()
    with torch.no_grad():
        for s in range(0, B, chunk):
            xc = x0[s: s + chunk]
            b = xc.shape[0]
            dxc = zf[s: s + chunk].reshape(b * P, *event)
            aug = _augmented_velocity(velocity, b, P, event, use_forward_jvp)
            sol = integrate(aug, torch.cat([xc, dxc]), method=method, grid=grid)
            xs.append(sol.x[:b])
            dxs.append(sol.x[b:])
            nfe = nfe_grid + sol.nfe  # the same grid for every chunk: one solve's count
            nfe_total += sol.nfe
    return GeneratorJVP(x=torch.cat(xs), jvp=torch.cat(dxs).reshape(z.shape), grid=grid, nfe=nfe,
                        mode="forward", eps=None, nfe_total=nfe_total)


def generator_jvp(
    velocity: Velocity,
    x0: Tensor,
    z: Tensor,
    *,
    mode: str = "forward",
    eps: float | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    chunk_size: int | None = None,
) -> GeneratorJVP:
    """:func:`jvp_forward` (``mode="forward"``) or :func:`jvp_fd` (``"fd"``, ``"central"``)."""
    _check_mode(mode)
    if mode == "forward":
        if eps is not None:
            _check_eps(eps)
        return jvp_forward(velocity, x0, z, method=method, steps=steps, grid=grid, chunk_size=chunk_size)
    return jvp_fd(velocity, x0, z, eps=eps, mode=mode, method=method, steps=steps, grid=grid)


def jacobian(
    velocity: Velocity,
    x0: Tensor,
    *,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Full Jacobian of the discretised generator, ``(B, d, d)`` with ``d = prod(event)``.

    ``J[b, i, j] = ∂f_i / ∂x0_j`` (flattened event indices), computed by forward mode on the
    ``d`` identity directions (``d`` probes per sample). Cost ``≈ d`` JVPs per sample: meant for
    small ``d`` (tests, low-dimensional closed forms), not for images.
    """
    _check_x0(x0)
    B = x0.shape[0]
    event = tuple(x0.shape[1:])
    d = math.prod(event)
    eye = torch.eye(d, dtype=x0.dtype, device=x0.device).reshape(d, *event)
    z = eye.unsqueeze(0).expand(B, d, *event)
    res = jvp_forward(velocity, x0, z, method=method, steps=steps, grid=grid, chunk_size=chunk_size)
    # res.jvp[b, j] = J[b] e_j  ->  column j
    return res.jvp.reshape(B, d, d).transpose(1, 2)


# --------------------------------------------------------------------------- read-outs


def pixel_readout(indices: Sequence[int] | Tensor) -> Readout:
    """Read-out selecting flattened event entries ``indices`` (m,): ``x -> x.flatten(1)[:, indices]``.

    Linear, so its JVP is the same selection of the tangent.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        raise ValueError("features must hold at least one index")

    def readout(x: Tensor) -> Tensor:
        flat = x.flatten(1)
        if int(idx.max()) >= flat.shape[1] or int(idx.min()) < -flat.shape[1]:
            raise ValueError(f"feature indices must lie in [0, {flat.shape[1]}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return flat[:, idx.to(flat.device)]

    readout.linear = True  # type: ignore[attr-defined]
    return readout


def _identity_readout(x: Tensor) -> Tensor:
    """Every coordinate is a feature: ``x -> x.flatten(1)`` (the default read-out, linear)."""
    return x.flatten(1)


_identity_readout.linear = True  # type: ignore[attr-defined]


def _readout_jvp(readout: Readout | nn.Module) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(x, dx) -> (r(x), J_r dx)``: linear read-outs directly, ``forward_jvp`` if present, else func.jvp."""
    if getattr(readout, "linear", False):
        return lambda x, dx: (readout(x), readout(dx))
    fj = getattr(readout, "forward_jvp", None)
    if fj is not None:
        return fj
    load_forward_ad()
    return lambda x, dx: torch.func.jvp(readout, (x,), (dx,))


def _check_classifier(classifier: Any) -> None:
    if not callable(classifier):
        raise ValueError(f"classifier must be a callable nn.Module x -> logits, got {type(classifier).__name__}")
    if isinstance(classifier, nn.Module) and classifier.training:
        raise ValueError("classifier must be in eval mode (call classifier.eval()): batch-norm / dropout "
                         "in training mode make its output batch-dependent")


def _make_readout(classifier: Any, features: Sequence[int] | Tensor | None) -> Readout:
    if classifier is not None and features is not None:
        raise ValueError("give either classifier or features (pixel indices), not both")
    if classifier is not None:
        _check_classifier(classifier)
        return classifier
    if features is None:
        return _identity_readout  # every coordinate, as for tabular data
    return pixel_readout(features)


@dataclass
class AttributeJVP:
    r"""Responses :math:`\Delta y = J_{C\circ f}(x_0) z` of a read-out to probes (:func:`attribute_jvp`).

    Attributes:
        responses: ``(n·P, m)`` rows ordered sample-major (row ``i·P + p`` is sample ``i``,
            probe ``p``); units of ``J z``.
        x0: source points ``(n, *event)``.
        probes: ``(n, P, *event)`` — the directions actually pushed through.
        samples: generated ``f(x0)``, ``(n, *event)`` (``None`` for central differences).
        outputs: read-out at the samples ``C(f(x0))``, ``(n, m)`` (``None`` for central differences).
        grid: solver time grid ``(N + 1,)``.
        nfe: velocity evaluations of one solve (one batch through the grid, plus the dopri5
            grid search when there was one), whatever the number of batches; forward mode
            counts a primal + tangent call as one.
        mode: ``"forward"``, ``"fd"`` or ``"central"``.
        eps: finite-difference step or ``None``.
        method: solver method.
        nfe_total: velocity calls of all batches together (``nfe`` for one batch).
    """

    responses: Tensor
    x0: Tensor
    probes: Tensor
    samples: Tensor | None
    outputs: Tensor | None
    grid: Tensor
    nfe: int
    mode: str
    eps: float | None = None
    method: str = "rk4"
    meta: dict = field(default_factory=dict)
    nfe_total: int | None = None

    def __post_init__(self) -> None:
        if self.nfe_total is None:
            self.nfe_total = self.nfe

    @property
    def sample_index(self) -> Tensor:
        """``(n·P,)`` index of the sample each response row belongs to."""
        n, P = self.probes.shape[:2]
        return torch.arange(n, device=self.responses.device).repeat_interleave(P)


def attribute_jvp(
    velocity: Velocity,
    x0: Tensor,
    probes: Tensor,
    *,
    classifier: nn.Module | Callable[[Tensor], Tensor] | None = None,
    features: Sequence[int] | Tensor | None = None,
    mode: str = "forward",
    eps: float | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int = 256,
) -> AttributeJVP:
    r"""Attribute-level responses :math:`\Delta y = J_{C \circ f}(x_0)\, z` (Section 5).

    The read-out is a classifier ``C`` (any ``nn.Module`` in eval mode, on its logits; its
    ``forward_jvp(x, dx)`` is used if present, else :func:`torch.func.jvp` at the end point), a
    selection of flattened pixel indices ``features``, or — when neither is given — the identity
    (every flattened coordinate is a feature, ``m = prod(event)``). Forward mode pushes the probe exactly;
    finite differences difference the read-out, :math:`(C(f(x_0+\varepsilon z)) - C(f(x_0)))/\varepsilon`.

    Args:
        x0: ``(n, *event)``; probes: ``(n, *event)`` or ``(n, P, *event)`` (see :func:`make_probes`).
        batch_size: samples per batch (each with its ``P`` probes).

    Returns:
        :class:`AttributeJVP` with ``responses`` of shape ``(n·P, m)``.
    """
    _check_x0(x0)
    _check_mode(mode)
    _check_method(method)
    check_positive_int("batch_size", batch_size)
    P = _probe_layout(x0, probes)
    if eps is not None:
        eps = _check_eps(eps)
    readout = _make_readout(classifier, features)
    r_jvp = _readout_jvp(readout)
    n = x0.shape[0]
    event = tuple(x0.shape[1:])
    probes = probes.to(dtype=x0.dtype, device=x0.device).reshape(n, P, *event)
    grid_, nfe_grid = _resolve_grid(velocity, x0, method, steps, grid, 1e-6, 1e-6)
    nfe = nfe_total = nfe_grid
    resp, samples, outputs = [], [], []
    used_eps = None
    if mode != "forward":
        used_eps = default_eps(x0.dtype, mode) if eps is None else eps
        _warn_roundoff(used_eps, x0.dtype, mode)
        _warn_training(velocity, "velocity")
    for s in range(0, n, batch_size):
        xb, zb = x0[s: s + batch_size], probes[s: s + batch_size]
        if mode == "forward":
            g = jvp_forward(velocity, xb, zb, method=method, grid=grid_)
            b = xb.shape[0]
            with torch.no_grad():
                xr = g.x.repeat_interleave(P, dim=0) if P > 1 else g.x
                y, dy = r_jvp(xr, g.jvp.reshape(b * P, *event))
            resp.append(dy.reshape(b * P, -1))
            samples.append(g.x)
            outputs.append(y[::P].reshape(b, -1))
        else:
            b = xb.shape[0]
            f0, fp, fm, nfe_b = _fd_endpoints(velocity, xb, zb, P, used_eps, mode, method, grid_)
            with torch.no_grad():
                if mode == "fd":
                    y0 = readout(f0)
                    y0r = y0.repeat_interleave(P, dim=0) if P > 1 else y0
                    dy = (readout(fp) - y0r) / used_eps
                    samples.append(f0)
                    outputs.append(y0.reshape(b, -1))
                else:
                    dy = (readout(fp) - readout(fm)) / (2.0 * used_eps)
            resp.append(dy.reshape(b * P, -1))
        nfe_batch = g.nfe if mode == "forward" else nfe_b  # the grid is given: no search inside
        nfe = nfe_grid + nfe_batch
        nfe_total += nfe_batch
    return AttributeJVP(
        responses=torch.cat(resp),
        x0=x0,
        probes=probes,
        samples=torch.cat(samples) if samples else None,
        outputs=torch.cat(outputs) if outputs else None,
        grid=grid_,
        nfe=nfe,
        mode=mode,
        eps=used_eps,
        method=method,
        nfe_total=nfe_total,
    )


def readout_gradient(
    velocity: Velocity,
    x0: Tensor,
    k: int,
    *,
    classifier: nn.Module | Callable[[Tensor], Tensor] | None = None,
    features: Sequence[int] | Tensor | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int = 64,
    mode: str = "reverse",
) -> Tensor:
    r"""Gradient :math:`g = \nabla_{x_0} (C_k \circ f)(x_0)` per sample, shape ``(n, *event)``.

    Used by :func:`causal_delta.dependence.hold_fixed_probes` to project probes onto the null
    space of ``g``, so that the response of read-out ``k`` vanishes to first order. The read-out is
    ``classifier``, the pixel selection ``features``, or by default the identity (``k`` is then
    a flattened coordinate of the sample).

    Cost: ``mode="reverse"`` is one vector-Jacobian product per sample by reverse mode through
    the whole solver — about 2–3 sampling passes of time, and memory that *grows with the
    number of steps* (the autograd graph of every step of a batch is kept); use a small
    ``batch_size`` for images. ``mode="forward"`` builds the full Jacobian by ``d`` forward-mode
    JVPs per sample (flat memory, cost ``≈ d`` sampling passes): only for small ``d``.
    Read-outs must treat samples independently (eval mode).
    """
    _check_x0(x0)
    _check_method(method)
    check_positive_int("batch_size", batch_size)
    if mode not in ("reverse", "forward"):
        raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
    readout = _make_readout(classifier, features)
    with torch.no_grad():
        m = readout(x0[:1]).reshape(1, -1).shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < m:
        raise ValueError(f"k must be an integer in [0, {m}) (index of a read-out feature), got {k!r}")
    grid_, _ = _resolve_grid(velocity, x0, method, steps, grid, 1e-6, 1e-6)
    event = tuple(x0.shape[1:])
    out = []
    for s in range(0, x0.shape[0], batch_size):
        xb = x0[s: s + batch_size]
        if mode == "forward":
            d = math.prod(event)
            eye = torch.eye(d, dtype=x0.dtype, device=x0.device).reshape(d, *event)
            z = eye.unsqueeze(0).expand(xb.shape[0], d, *event)
            res = attribute_jvp(velocity, xb, z, classifier=classifier, features=features,
                                mode="forward", method=method, grid=grid_, batch_size=batch_size)
            out.append(res.responses[:, k].reshape(xb.shape[0], *event))
        else:
            with torch.enable_grad():
                xg = xb.detach().clone().requires_grad_(True)
                y = readout(integrate(velocity, xg, method=method, grid=grid_).x).reshape(xb.shape[0], -1)
                (g,) = torch.autograd.grad(y[:, k].sum(), xg)
            out.append(g.detach())
    return torch.cat(out)


# --------------------------------------------------------------------------- singular directions


@dataclass
class SingularDirections:
    r"""Top singular triplets of the generator Jacobian at one point, :math:`J \approx U\,\mathrm{diag}(s)\,V^T`.

    Attributes:
        values: ``(k,)`` singular values, descending.
        left: ``(k, *event)`` output directions ``u_i`` (unit norm).
        right: ``(k, *event)`` input (latent) directions ``v_i`` with ``J v_i = s_i u_i``.
        matvecs: number of JVPs + VJPs spent.
    """

    values: Tensor
    left: Tensor
    right: Tensor
    matvecs: int


def top_singular_directions(
    velocity: Velocity,
    x0: Tensor,
    k: int = 5,
    *,
    oversample: int = 5,
    iters: int = 2,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SingularDirections:
    r"""Top-``k`` singular directions of :math:`J_f(x_0)` by randomised subspace iteration.

    Halko, Martinsson & Tropp (2011), Alg. 4.4, with :math:`J` applied by forward mode
    (:func:`jvp_forward`, ``l = k + oversample`` probes at once) and :math:`J^T` by reverse mode
    through the solver (one backward pass of a batch of ``l`` copies; memory grows with the number
    of steps). ``iters`` power iterations sharpen the spectrum gap; the cost is
    ``(iters + 1)·l`` JVPs plus ``(iters + 1)·l`` VJPs.

    Args:
        x0: one source point, shape ``event`` (or ``(1, *event)``).
    """
    check_positive_int("k", k)
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 0:
        raise ValueError(f"oversample must be an integer >= 0, got {oversample!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if x0.ndim >= 2 and x0.shape[0] == 1:
        x0 = x0[0]
    if not x0.is_floating_point() or x0.ndim < 1:
        raise ValueError(f"x0 must be one floating-point source point of shape event, got {tuple(x0.shape)}")
    event = tuple(x0.shape)
    d = math.prod(event)
    if k > d:
        raise ValueError(f"k must be <= d = {d}, got {k}")
    _check_method(method)
    l = min(d, k + oversample)
    xb = x0.unsqueeze(0)
    grid_, _ = _resolve_grid(velocity, xb, method, steps, grid, 1e-6, 1e-6)

    def J(V: Tensor) -> Tensor:  # (d, l) -> (d, l)
        z = V.T.reshape(1, V.shape[1], *event)
        return jvp_forward(velocity, xb, z, method=method, grid=grid_).jvp.reshape(V.shape[1], d).T

    def Jt(U: Tensor) -> Tensor:  # (d, l) -> (d, l)
        cols = U.shape[1]
        with torch.enable_grad():
            xr = xb.detach().expand(cols, *event).clone().requires_grad_(True)
            y = integrate(velocity, xr, method=method, grid=grid_).x
            (g,) = torch.autograd.grad(y, xr, grad_outputs=U.T.reshape(cols, *event).to(y.dtype))
        return g.detach().reshape(cols, d).T

    omega = torch.randn(d, l, generator=generator, dtype=x0.dtype).to(x0.device)
    Q, _ = torch.linalg.qr(J(omega))
    matvecs = l
    for _ in range(iters):
        W, _ = torch.linalg.qr(Jt(Q))
        Q, _ = torch.linalg.qr(J(W))
        matvecs += 2 * l
    Bt = Jt(Q)  # (d, l) = J^T Q = (Q^T J)^T
    matvecs += l
    Ub, s, Vt = torch.linalg.svd(Bt.T, full_matrices=False)
    U = Q @ Ub
    return SingularDirections(
        values=s[:k],
        left=U[:, :k].T.reshape(k, *event),
        right=Vt[:k].reshape(k, *event),
        matvecs=matvecs,
    )


# --------------------------------------------------------------------------- ε sweep (appendix C)


def _velocity_in(velocity: Velocity | Mapping[torch.dtype, Velocity], dtype: torch.dtype) -> Velocity:
    if isinstance(velocity, Mapping):
        if dtype not in velocity:
            raise ValueError(f"velocity mapping has no entry for {dtype}")
        return velocity[dtype]
    if isinstance(velocity, nn.Module):
        return copy.deepcopy(velocity).to(dtype)
    return velocity


def eps_sweep(
    velocity: Velocity | Mapping[torch.dtype, Velocity],
    x0: Tensor,
    z: Tensor,
    *,
    eps_values: Sequence[float] | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    modes: Sequence[str] = ("fd", "central"),
    method: str = "rk4",
    steps: int = 50,
) -> dict:
    r"""Finite-difference error against forward mode over ``ε`` and dtypes (appendix C).

    The reference is the forward-mode JVP in float64 (exact for the discretised map). For each
    dtype and finite-difference mode the relative error
    :math:`\|J z_{FD} - J z_{ref}\|_F / \|J z_{ref}\|_F` is reported per ``ε``, together with the
    forward-mode error in that dtype. Expect a V shape: truncation ``O(ε)`` (``O(ε²)`` central)
    on the right, round-off ``O(u/ε)`` on the left; float32 at ``ε = 1e-6`` sits far on the
    round-off side (~1e-1).

    Args:
        velocity: a velocity usable in every dtype, an ``nn.Module`` (copied and cast per dtype),
            or a mapping ``{dtype: velocity}``.
        x0, z: ``(B, *event)`` and probes (cast to each dtype).

    Returns:
        JSON-ready dict: ``eps``, ``errors[dtype][mode]`` (list per ε), ``forward_mode_error[dtype]``,
        ``default_eps[dtype][mode]``, ``method``, ``steps``.
    """
    _check_x0(x0)
    _probe_layout(x0, z)
    _check_method(method)
    eps_list = [float(e) for e in (eps_values if eps_values is not None else torch.logspace(-10, -1, 19).tolist())]
    for e in eps_list:
        _check_eps(e)
    for m in modes:
        if m not in ("fd", "central"):
            raise ValueError(f"modes must be 'fd' or 'central', got {m!r}")
    ref = jvp_forward(_velocity_in(velocity, torch.float64), x0.double(), z.double(), method=method,
                      steps=steps).jvp
    ref_norm = float(ref.norm())
    out: dict = {"eps": eps_list, "errors": {}, "forward_mode_error": {}, "default_eps": {},
                 "method": method, "steps": steps, "reference": "forward mode, float64"}
    for dt in dtypes:
        name = str(dt).replace("torch.", "")
        v = _velocity_in(velocity, dt)
        xd, zd = x0.to(dt), z.to(dt)
        fm = jvp_forward(v, xd, zd, method=method, steps=steps).jvp
        out["forward_mode_error"][name] = float((fm.double() - ref).norm()) / ref_norm
        out["errors"][name] = {}
        out["default_eps"][name] = {m: default_eps(dt, m) for m in modes}
        for m in modes:
            errs = []
            for e in eps_list:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    d = jvp_fd(v, xd, zd, eps=e, mode=m, method=method, steps=steps).jvp
                err = float((d.double() - ref).norm()) / ref_norm
                errs.append(err if math.isfinite(err) else float("inf"))
            out["errors"][name][m] = errs
    return out


def write_eps_sweep(result: Mapping, out_dir: str, *, stem: str = "eps_sweep") -> dict:
    """Write :func:`eps_sweep` output as ``{stem}.json`` and a log-log ``{stem}.png`` in ``out_dir``."""
    from pathlib import Path

    from . import report

    out = Path(out_dir)
    paths = {"json": report.write_json(out / f"{stem}.json", result)}
    fig, ax = report.new_figure(figsize=(6, 4))
    eps = result["eps"]
    styles = {"fd": "-o", "central": "-s"}
    for i, (dt, per_mode) in enumerate(result["errors"].items()):
        color = f"C{i}"
        for m, errs in per_mode.items():
            ax.loglog(eps, [max(e, 1e-17) for e in errs], styles.get(m, "-"), color=color, ms=3,
                      label=f"{m} ({dt})")
        ax.axhline(max(result["forward_mode_error"][dt], 1e-17), color=color, ls=":",
                   label=f"forward mode ({dt})")
    ax.set_xlabel("ε")
    ax.set_ylabel("relative error vs forward mode (float64)")
    ax.set_title(f"finite-difference JVP error ({result['method']}, {result['steps']} steps)")
    ax.legend(fontsize=7)
    paths["png"] = report.save_figure(fig, out / f"{stem}.png")
    return paths
