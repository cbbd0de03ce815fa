r"""Table 4 and Figure 2 of the paper, done right: Jacobians of the flow onto a Gaussian mixture.

The drift of the flow ``N(μ0, Σ0) → Σ_k π_k N(μ_k, Σ_k)`` and its Jacobian are known in closed
form (Eq. 3-4, :class:`causal_delta.closed_form.GaussianMixture`). At each time ``t`` of
``config.times`` (paper: 0, .25, .5, .75, .99) this job draws ``n_points`` evaluation points and
reports the mean Frobenius gap ``‖J_est - ∇v‖_F`` between the analytic Jacobian ``∇v`` and

- ``autodiff_jacfwd_float64``: forward-mode autodiff (``torch.func.jacfwd``) in float64;
- ``central_fd_float64``: central finite differences in float64 (``fd_eps_central``);
- ``forward_fd_float64``: forward differences in float64 with ``fd_eps_float32`` (isolates
  the effect of precision from that of the difference scheme);
- ``forward_fd_float32``: forward differences in float32 with ε = 1e-6, as the original code
  did; its ~0.1-0.3 gap is rounding error, and it is what the paper's "numerical vs
  analytical" column measured;
- ``intervention_generating``: the intervention Jacobian ``A_K(t)`` with ``K`` the label of the
  mixture component that generated the point's ``x1`` (``points="path"``), or, for
  ``points="standard_normal"`` where no generating label exists, ``K`` drawn from ``γ(x)``;
- ``intervention_sampled``: ``A_K(t)`` with ``K ~ Categorical(γ(x, t))``, the posterior of the
  generating label given ``x_t`` (same distribution as the generating label, drawn afresh);
- ``intervention_responsibility_weighted``: ``Σ_k γ_k A_k(t)``, which is what the original
  code called the intervention Jacobian (with its wrong ``A_k``); it is the first term of Eq. 4,
  so its gap is the norm of the ``Σ_k b_k ∇γ_kᵀ`` term.

Evaluation points: ``points="path"`` (default) draws ``x_t = (1-t) x0 + t x1`` with
``x0 ~ N(μ0, Σ0)`` and ``(x1, K)`` from the mixture, i.e. points where the flow actually goes;
``points="standard_normal"`` uses ``x ~ N(0, I)`` at every ``t`` as the original code did
(10 points per ``t`` there).

Differences from the paper's Table 4 that the numbers reflect: the original code's analytic
drift used ``A_k = t Σ_k S_k⁻¹`` (wrong: the drift's slope is ``A_k = (t Σ_k - (1-t) Σ_0) S_k⁻¹``,
cf. arXiv 2602.02793 App. B.3), its finite differences were float32 with ε = 1e-6, it averaged
10 points, and its "intervention" was the
responsibility-weighted ``Σ_k γ_k A_k``, not a fixed component.

The mixture: by default the one the original release draws for its Table 4 (K = 3, d = 2,
``μ_k = 3(2U - 1)``, ``Σ_k = ½ BBᵀ + ½ I`` with ``U`` uniform and ``B`` standard normal
under ``torch.manual_seed(42069)`` on the CPU, uniform weights, base ``N(0, I)``), regenerated
here and stored with 8 significant digits. It is a reconstruction from the released code,
not numbers printed in the paper.

Under ``torchrun`` every rank computes the whole closed-form table (about 2 s at the full size;
its ``intervention_sampled`` labels come from the one generator stream) and rank 0 writes; an
extra estimator may split its points over the ranks itself (``mixture_learned`` does).

Extending: :func:`run_mixture` takes ``estimators``, a mapping ``name -> fn(points) -> (N, d, d)``
(see :class:`EvalPoints` and :func:`default_estimators`), so a learned velocity field's
Jacobian can be added as one more row of the table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_positive_int, check_time
from ..closed_form import GaussianMixture
from . import _common as C

__all__ = [
    "MixtureConfig",
    "EvalPoints",
    "Estimator",
    "PAPER_MIXTURE",
    "PUBLISHED",
    "paper_mixture",
    "build_mixture",
    "draw_points",
    "default_estimators",
    "frobenius_gaps",
    "run_mixture",
]

PAPER_MIXTURE: dict[str, Any] = {
    "weights": (1 / 3, 1 / 3, 1 / 3),
    "means": ((1.8608469, 0.75287247), (2.5465586, 2.5745182), (2.8347123, 2.6698873)),
    "covs": (
        ((1.2205639, -0.24465944), (-0.24465944, 1.2252476)),
        ((1.9548715, 0.54655230), (0.54655230, 2.7581115)),
        ((0.56011599, 0.032353625), (0.032353625, 0.54874778)),
    ),
    "base_mean": (0.0, 0.0),
    "base_cov": ((1.0, 0.0), (0.0, 1.0)),
    "source": "regenerated from the original release (scripts/2D/eval/mixture_gaussian.py, "
              "create_mixture_gaussians, torch.manual_seed(42069), CPU): mu_k = 3(2U-1), "
              "Sigma_k = 0.5 B B^T + 0.5 I, uniform weights, base N(0, I); not printed in the paper",
}
"""The 3-component 2-D mixture of the paper's Table 4 / Figure 2 (see module docstring)."""

PUBLISHED: dict[str, Any] = {
    "times": [0.0, 0.25, 0.5, 0.75, 0.99],
    "numerical_vs_analytical": [0.058, 0.289, 0.219, 0.251, 0.179],
    "intervention_vs_analytical": ["<0.001", 0.284, 0.300, 0.039, "<0.001"],
    "note": "paper Table 4 (arXiv 2602.02793 §6): float32 forward differences with eps = 1e-6 and "
            "a responsibility-weighted 'intervention', both against an analytic Jacobian that used "
            "A_k = t Sigma_k S_k^-1; 10 points x ~ N(0, I) per t",
}
"""Published Table 4 numbers."""

_POINTS = ("path", "standard_normal")
_LABELS = ("generating", "sampled")


@dataclass
class MixtureConfig(C.SizedConfig):
    """Settings of the closed-form mixture job (Table 4, Figure 2).

    Attributes:
        seed: seed of the generator for points, labels and probes.
        n_points: evaluation points per time.
        times: times ``t`` in [0, 1] of the Table 4 comparison.
        out_dir: output folder (used when :func:`run_mixture` gets no ``out_dir``).
        points: ``"path"`` (``x_t`` on the flow-matching path, with the generating label) or
            ``"standard_normal"`` (``x ~ N(0, I)``, the original code's choice).
        fd_eps_central: step of the float64 central differences.
        fd_eps_float32: step of the forward differences (float32 and float64); 1e-6 as the paper.
        intervention_label: which label ``K`` the headline intervention gap uses:
            ``"generating"`` or ``"sampled"`` (``K ~ γ(x)``); both are always reported.
        figure_times: times of the drift-field panels (Figure 2).
        grid_size: arrows per axis in the drift-field panels.
        weights, means, covs, base_mean, base_cov: the mixture (``None``: :data:`PAPER_MIXTURE`).
        progress: show tqdm progress bars.
        size: ``"full"`` or ``"quick"`` (label only; see :meth:`quick`).
    """

    seed: int = 0
    n_points: int = 2000
    times: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.99)
    out_dir: str | None = None
    points: str = "path"
    fd_eps_central: float = 1e-5
    fd_eps_float32: float = 1e-6
    intervention_label: str = "generating"
    figure_times: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.99)
    grid_size: int = 21
    weights: tuple | None = None
    means: tuple | None = None
    covs: tuple | None = None
    base_mean: tuple | None = None
    base_cov: tuple | None = None
    progress: bool = True
    size: str = "full"

    # CI size: 300 points per time, coarser figure. Full size: 2,000 points per time.
    QUICK: ClassVar[dict[str, Any]] = dict(n_points=300, grid_size=15, size="quick")

    def validate(self) -> MixtureConfig:
        """Raise ``ValueError`` naming the first bad setting; return ``self``."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        check_positive_int("n_points", self.n_points)
        check_positive_int("grid_size", self.grid_size)
        if len(self.times) == 0:
            raise ValueError("times must hold at least one time in [0, 1]")
        check_time("times", torch.as_tensor(self.times, dtype=torch.float64))
        if len(self.figure_times):
            check_time("figure_times", torch.as_tensor(self.figure_times, dtype=torch.float64))
        for name in ("fd_eps_central", "fd_eps_float32"):
            eps = getattr(self, name)
            if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps < 1):
                raise ValueError(f"{name} must be a number in (0, 1), got {eps!r}")
        if self.points not in _POINTS:
            raise ValueError(f"points must be one of {_POINTS}, got {self.points!r}")
        if self.intervention_label not in _LABELS:
            raise ValueError(f"intervention_label must be one of {_LABELS}, got {self.intervention_label!r}")
        return self


def paper_mixture(dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """:data:`PAPER_MIXTURE` as a :class:`GaussianMixture`."""
    p = PAPER_MIXTURE
    return GaussianMixture(p["weights"], p["means"], p["covs"], p["base_mean"], p["base_cov"], dtype=dtype)


def build_mixture(config: MixtureConfig) -> GaussianMixture:
    """The mixture of ``config`` (:data:`PAPER_MIXTURE` unless weights/means/covs are given)."""
    given = [config.weights is not None, config.means is not None, config.covs is not None]
    if not any(given):
        p = PAPER_MIXTURE
        base_mean = p["base_mean"] if config.base_mean is None else config.base_mean
        base_cov = p["base_cov"] if config.base_cov is None else config.base_cov
        return GaussianMixture(p["weights"], p["means"], p["covs"], base_mean, base_cov)
    if not all(given):
        raise ValueError("weights, means and covs must be given together (or none, for the paper's mixture)")
    return GaussianMixture(config.weights, config.means, config.covs, config.base_mean, config.base_cov)


@dataclass
class EvalPoints:
    """Evaluation points at one time, handed to every Jacobian estimator.

    Attributes:
        mixture: the ground-truth field (float64).
        t: the time.
        x: points ``(N, d)`` float64.
        labels: component label per point ``(N,)`` int64 (generating label for ``"path"``
            points, drawn from ``γ(x)`` otherwise).
        generator: a seeded ``torch.Generator`` for estimators that draw random numbers.
        config: the run's settings.
    """

    mixture: GaussianMixture
    t: float
    x: Tensor
    labels: Tensor
    generator: torch.Generator
    config: MixtureConfig = field(repr=False)


Estimator = Callable[[EvalPoints], Tensor]
"""``fn(points) -> (N, d, d)`` Jacobian estimate at ``points.x`` (rows = output coordinates)."""


def draw_points(mixture: GaussianMixture, t: float, n: int, generator: torch.Generator,
                points: str = "path") -> tuple[Tensor, Tensor]:
    """Evaluation points ``(N, d)`` and labels ``(N,)`` at time ``t`` (see :class:`MixtureConfig`)."""
    if points == "path":
        x0 = mixture.sample_base(n, generator=generator)
        x1, labels = mixture.sample(n, generator=generator, return_labels=True)
        return (1 - t) * x0 + t * x1, labels
    if points == "standard_normal":
        x = torch.randn(n, mixture.dim, generator=generator, dtype=mixture.dtype)
        gamma = mixture.responsibilities(x, t)
        return x, torch.multinomial(gamma, 1, generator=generator).squeeze(-1)
    raise ValueError(f"points must be one of {_POINTS}, got {points!r}")


def _columns(fn: Callable[[Tensor], Tensor], x: Tensor, eps: float, central: bool) -> Tensor:
    """Finite-difference Jacobian ``(N, d, d)`` of ``fn`` at ``x (N, d)``, column by column."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    base = None if central else fn(x)
    cols = []
    for j in range(x.shape[-1]):
        step = eps * eye[j]
        if central:
            cols.append((fn(x + step) - fn(x - step)) / (2 * eps))
        else:
            cols.append((fn(x + step) - base) / eps)
    return torch.stack(cols, dim=-1)


def _jacfwd(p: EvalPoints) -> Tensor:
    t = p.t
    return torch.func.vmap(torch.func.jacfwd(lambda xi: p.mixture.velocity(xi, t)))(p.x)


def _central_fd64(p: EvalPoints) -> Tensor:
    return _columns(lambda z: p.mixture.velocity(z, p.t), p.x, p.config.fd_eps_central, central=True)


def _forward_fd64(p: EvalPoints) -> Tensor:
    return _columns(lambda z: p.mixture.velocity(z, p.t), p.x, p.config.fd_eps_float32, central=False)


def _forward_fd32(p: EvalPoints) -> Tensor:
    mix32 = p.mixture.to(torch.float32)
    J = _columns(lambda z: mix32.velocity(z, p.t), p.x.to(torch.float32), p.config.fd_eps_float32, central=False)
    return J.to(torch.float64)


def _intervention_generating(p: EvalPoints) -> Tensor:
    return p.mixture.intervention_jacobian(p.labels, p.t)


def _intervention_sampled(p: EvalPoints) -> Tensor:
    gamma = p.mixture.responsibilities(p.x, p.t)
    k = torch.multinomial(gamma, 1, generator=p.generator).squeeze(-1)
    return p.mixture.intervention_jacobian(k, p.t)


def _intervention_weighted(p: EvalPoints) -> Tensor:
    gamma = p.mixture.responsibilities(p.x, p.t)
    return torch.einsum("nk,kij->nij", gamma, p.mixture.A(p.t))


def default_estimators() -> dict[str, Estimator]:
    """The Jacobian estimators of the report, in table order (a new dict on every call)."""
    return {
        "autodiff_jacfwd_float64": _jacfwd,
        "central_fd_float64": _central_fd64,
        "forward_fd_float64": _forward_fd64,
        "forward_fd_float32": _forward_fd32,
        "intervention_generating": _intervention_generating,
        "intervention_sampled": _intervention_sampled,
        "intervention_responsibility_weighted": _intervention_weighted,
    }


_DESCRIPTIONS = {
    "autodiff_jacfwd_float64": "forward-mode autodiff (torch.func.jacfwd), float64",
    "central_fd_float64": "central finite differences, float64, eps = fd_eps_central",
    "forward_fd_float64": "forward finite differences, float64, eps = fd_eps_float32",
    "forward_fd_float32": "forward finite differences, float32, eps = fd_eps_float32 (the paper's method)",
    "intervention_generating": "A_K(t), K = label of the component that generated x1 (sampled from gamma "
                               "for points='standard_normal')",
    "intervention_sampled": "A_K(t), K ~ Categorical(gamma(x, t))",
    "intervention_responsibility_weighted": "sum_k gamma_k A_k(t) (the original code's 'intervention')",
}


def frobenius_gaps(estimate: Tensor, exact: Tensor) -> dict[str, float]:
    """Mean, standard error, median and max of ``‖estimate - exact‖_F`` over points ``(N, d, d)``."""
    gap = (estimate.to(exact.dtype) - exact).flatten(1).norm(dim=1)
    n = gap.numel()
    return {
        "mean": float(gap.mean()),
        "se": float(gap.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "median": float(gap.median()),
        "max": float(gap.max()),
    }


def _figure_drift(mixture: GaussianMixture, times, grid_size: int, path: Path) -> None:
    """Figure 2: drift field (arrows) over the responsibilities (colours) at several times."""
    from ..report import new_figure, save_figure

    palette = torch.tensor([[0.89, 0.10, 0.11], [0.22, 0.49, 0.72], [0.30, 0.69, 0.29], [0.60, 0.31, 0.64],
                            [1.00, 0.50, 0.00], [0.65, 0.34, 0.16]], dtype=torch.float64)
    K = mixture.n_components
    colours = palette[torch.arange(K) % palette.shape[0]]
    centres = torch.cat([mixture.means, mixture.base_mean[None]])
    spread = float(torch.sqrt(torch.cat([torch.diagonal(mixture.covs, dim1=-2, dim2=-1).flatten(),
                                         mixture.base_cov.diagonal()]).max()))
    lo = (centres.min(0).values - 3 * spread).tolist()
    hi = (centres.max(0).values + 3 * spread).tolist()
    fine = 120
    gx = torch.linspace(lo[0], hi[0], fine, dtype=torch.float64)
    gy = torch.linspace(lo[1], hi[1], fine, dtype=torch.float64)
    X, Y = torch.meshgrid(gx, gy, indexing="xy")
    grid = torch.stack([X, Y], -1)
    cx = torch.linspace(lo[0], hi[0], grid_size, dtype=torch.float64)
    cy = torch.linspace(lo[1], hi[1], grid_size, dtype=torch.float64)
    QX, QY = torch.meshgrid(cx, cy, indexing="xy")
    coarse = torch.stack([QX, QY], -1)
    n = len(times)
    fig, axes = new_figure(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, t in zip(axes[0], times):
        gamma = mixture.responsibilities(grid, float(t))  # (fine, fine, K)
        rgb = (gamma @ colours).clamp(0, 1)
        ax.imshow(rgb.numpy(), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", alpha=0.55)
        v = mixture.velocity(coarse, float(t))
        ax.quiver(QX.numpy(), QY.numpy(), v[..., 0].numpy(), v[..., 1].numpy(), color="k", alpha=0.75,
                  angles="xy", width=0.004)
        m = mixture.component_means(float(t))
        for k in range(K):
            ax.plot(float(m[k, 0]), float(m[k, 1]), "o", color=colours[k].tolist(), markeredgecolor="k", ms=6)
        ax.set_title(f"t = {float(t):.2f}")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("drift v(x, t) (arrows) and responsibilities γ_k(x, t) (colour = component), "
                 "dots: component means m_k(t)", fontsize=9)
    save_figure(fig, path)


def _figure_gaps(times, gap_mean: Mapping[str, list[float]], path: Path) -> None:
    from ..report import new_figure, save_figure

    fig, ax = new_figure(figsize=(6.4, 4.2))
    for name, values in gap_mean.items():
        vals = [max(v, 1e-17) for v in values]
        ax.semilogy(times, vals, "o-", label=name, ms=4)
    pub_t = PUBLISHED["times"]
    ax.semilogy(pub_t, PUBLISHED["numerical_vs_analytical"], "s--", color="gray", label="paper: numerical")
    inter = [1e-3 if isinstance(v, str) else v for v in PUBLISHED["intervention_vs_analytical"]]
    ax.semilogy(pub_t, inter, "^--", color="silver", label="paper: intervention (<0.001 drawn at 1e-3)")
    ax.set(xlabel="t", ylabel="mean ‖J - ∇v‖_F", title="Jacobian estimates vs the analytic Jacobian")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, path)


def run_mixture(config: MixtureConfig, out_dir: str | os.PathLike | None = None, *,
                progress: bool | None = None,
                estimators: Mapping[str, Estimator] | None = None) -> dict[str, Any]:
    """Run the closed-form mixture job and write ``report.json``, figures and ``summary.md``.

    Args:
        config: the settings (validated here).
        out_dir: output folder; defaults to ``config.out_dir``.
        progress: show tqdm bars (defaults to ``config.progress``).
        estimators: ``name -> fn(EvalPoints) -> (N, d, d)``; defaults to
            :func:`default_estimators`. Extra estimators (e.g. a learned flow's Jacobian) appear
            as extra rows.

    Returns:
        The report (the dict written to ``report.json``): ``results["per_time"]`` lists, per
        time, the analytic Jacobian's mean Frobenius norm and, per estimator, the mean / SE /
        median / max of the Frobenius gap; ``results["gap_mean"][name]`` is the Table 4 column.
    """

    config.validate()
    target = out_dir if out_dir is not None else config.out_dir
    if target is None:
        raise ValueError("out_dir must be given (argument or config.out_dir)")
    out = C.prepare_output(target)
    show = config.progress if progress is None else progress
    mixture = build_mixture(config)
    ests = dict(default_estimators() if estimators is None else estimators)
    timer = C.Timer()
    per_time = []
    with timer("jacobians"), C.seeded(config.seed) as gen:
        for t in C.progress(config.times, desc="mixture: Jacobians over t", enabled=show):
            t = float(t)
            x, labels = draw_points(mixture, t, config.n_points, gen, config.points)
            exact = mixture.jacobian(x, t)
            pts = EvalPoints(mixture, t, x, labels, gen, config)
            row: dict[str, Any] = {
                "t": t,
                "analytic_norm_mean": float(exact.flatten(1).norm(dim=1).mean()),
                "max_responsibility_mean": float(mixture.responsibilities(x, t).max(-1).values.mean()),
                "gaps": {},
            }
            for name, fn in ests.items():
                row["gaps"][name] = frobenius_gaps(fn(pts), exact)
            per_time.append(row)
    times = [r["t"] for r in per_time]
    gap_mean = {name: [r["gaps"][name]["mean"] for r in per_time] for name in ests}
    gap_se = {name: [r["gaps"][name]["se"] for r in per_time] for name in ests}

    figures: list[str] = []
    with timer("figures"):
        if mixture.dim == 2 and len(config.figure_times):
            _figure_drift(mixture, config.figure_times, config.grid_size, out / "drift_field.png")
            figures.append("drift_field.png")
        _figure_gaps(times, gap_mean, out / "jacobian_gaps.png")
        figures.append("jacobian_gaps.png")

    chosen = f"intervention_{config.intervention_label}"
    headline: dict[str, Any] = {}
    for key, name in (("autodiff_gap_max_over_t", "autodiff_jacfwd_float64"),
                      ("central_fd_float64_gap_max_over_t", "central_fd_float64"),
                      ("forward_fd_float32_gap_max_over_t", "forward_fd_float32"),
                      ("intervention_gap_max_over_t", chosen)):
        if name in gap_mean:
            headline[key] = max(gap_mean[name])
    params = mixture.parameters_dict()
    results = {
        "mixture": {**params, "source": PAPER_MIXTURE["source"] if config.weights is None else "config"},
        "points": config.points,
        "intervention_label": config.intervention_label,
        "estimators": {name: _DESCRIPTIONS.get(name, "user-supplied") for name in ests},
        "times": times,
        "gap_mean": gap_mean,
        "gap_se": gap_se,
        "analytic_norm_mean": [r["analytic_norm_mean"] for r in per_time],
        "per_time": per_time,
        "table4": {
            "numerical_vs_analytical": {"published": PUBLISHED["numerical_vs_analytical"],
                                        "float32_forward_fd": gap_mean.get("forward_fd_float32"),
                                        "float64_central_fd": gap_mean.get("central_fd_float64"),
                                        "float64_forward_autodiff": gap_mean.get("autodiff_jacfwd_float64")},
            "intervention_vs_analytical": {"published": PUBLISHED["intervention_vs_analytical"],
                                           "fixed_label": gap_mean.get(chosen),
                                           "responsibility_weighted": gap_mean.get(
                                               "intervention_responsibility_weighted")},
        },
        "headline": headline,
    }

    header = ["t", "‖∇v‖_F"] + list(ests) + ["paper: numerical", "paper: intervention"]
    pub_num = dict(zip(PUBLISHED["times"], PUBLISHED["numerical_vs_analytical"]))
    pub_int = dict(zip(PUBLISHED["times"], PUBLISHED["intervention_vs_analytical"]))
    rows = []
    for r in per_time:
        rows.append([r["t"], r["analytic_norm_mean"]] + [r["gaps"][n]["mean"] for n in ests]
                    + [pub_num.get(r["t"], "—"), str(pub_int.get(r["t"], "—"))])
    where = "x_t on the flow-matching path" if config.points == "path" else "x ~ N(0, I)"
    summary = "\n".join([
        "Mean Frobenius gap ‖J_est - ∇v‖_F between each estimate and the analytic Jacobian (Eq. 4), "
        f"{config.n_points} points per t ({where}).",
        "",
        C.markdown_table(header, rows),
        "",
        "Reading: forward-mode autodiff and float64 central differences agree with the analytic Jacobian to "
        "rounding error; the float32 forward differences with eps = 1e-6 (the paper's method) are off by "
        "about as much as the paper's 'numerical vs analytical' column, which therefore measured float32 "
        "rounding, not a modelling gap. The intervention Jacobian A_K(t) differs from the full Jacobian "
        "by the responsibility-gradient term of Eq. 4; it vanishes at t = 0 (all S_k equal) and where "
        "one component dominates.",
        "",
        "Estimators: " + "; ".join(f"`{n}`: {_DESCRIPTIONS.get(n, 'user-supplied')}" for n in ests) + ".",
        "",
        f"Mixture: {results['mixture']['source']}.",
    ])
    return C.write_report(out, experiment="mixture-closed-form", paper="Table 4, Figure 2", config=config,
                          quick=config.size == "quick", results=results, published=PUBLISHED, timer=timer,
                          figures=figures, summary=summary)

