r"""Finite-difference error against forward mode over ε and dtypes (appendix C of arXiv 2602.02793).

The maths only; :func:`causal_delta.jvp.write_eps_sweep` (in ``_plot``) writes the JSON and figure.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..solvers import Velocity
from ._common import _check_eps, _check_method, _check_x0, _probe_layout
from ._fd import default_eps, jvp_fd
from ._forward import jvp_forward

__all__ = ["eps_sweep"]


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
