r"""Flux Matching against denoising score matching on 2-D data (arXiv 2605.07319).

Two data sets: a ring (radius ``ring_radius``, radial noise ``ring_width``) and the
three-component 2-D mixture :data:`causal_delta.datasets.synthetic.DEFAULT_MIXTURE`. On each, a
time-free MLP field (preset ``mlp-small`` held at ``t = 0``) is trained with the Flux Matching
surrogate and, from the same initialisation, with DSM at the same ``σ``. Both target the data
smoothed by ``N(0, σ² I)`` as the stationary law of ``dx = f dt + √2 dW``. Reported per field:

- samples from ``langevin_steps`` Langevin steps (step ``η``) started from ``N(0, 3² I)``:
  radius mean and std (ring) against the smoothed target's (Monte Carlo, ``n_samples``),
  MMD² (Gaussian kernels, bandwidths 0.2–2) to the smoothed data, and for reference the MMD²
  of a second draw of the smoothed data itself (the noise floor);
- mean ``|curl f|`` on an 80 × 80 grid over ``[-4.5, 4.5]²`` (authors' notebook: flux 0.41,
  DSM 0.12, flux with a spiral penalty 1.64 — their ring, their network, not ours);
- quiver plots of both fields over their samples.

The score is curl-free, so DSM's curl only measures its fitting error, while Flux Matching
leaves the divergence-free part ``∇·(p b) = 0`` untouched by the loss: its curl is whatever the
network and optimiser make of that freedom.

Under ``torchrun`` each field trains on rank 0 (its trainer is not DDP-aware; the weights are
broadcast), each rank runs its block of the Langevin chains (and of the flow-map Jacobians of the
directed part), the measures run on the gathered samples on every rank, and rank 0 writes.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import _common as C

__all__ = ["FluxConfig", "run_flux", "PUBLISHED", "ring_data", "mixture_data"]

PUBLISHED = {
    "source": "authors' notebook examples/flux_vs_dsm_comparison.ipynb (ring), arXiv 2605.07319",
    "mean_abs_curl": {"flux": 0.41, "dsm": 0.12, "flux_spiral_penalty": 1.64},
    "curl_grid": "80 x 80 over [-4.5, 4.5]^2",
}


@dataclass
class FluxConfig(C.SizedConfig):
    """Settings of the Flux Matching vs DSM comparison (defaults: the full size).

    Attributes:
        datasets: which of ``("ring", "mixture")`` to run.
        ring_radius, ring_width: the ring's radius and radial standard deviation.
        n_data: training points per data set.
        sigma: KDE bandwidth / DSM noise (the stationary law is the data smoothed by σ).
        hidden, depth: MLP width and number of hidden layers.
        train_steps, batch_size, lr: AdamW training (gradient norm clipped at 1).
        method, simulation, pairing, horizon, time_sampling: Flux Matching options
            (:func:`causal_delta.flux.flux_matching_loss`).
        lr_schedule: ``"constant"`` or ``"cosine"`` (both objectives).
        spiral_penalty: ``λ > 0`` adds a third field on the ring, Flux Matching plus
            ``-λ · mean curl f`` at the batch (the authors' "spiral" variant; its exact form in
            their notebook was not checked); 0 skips it.
        n_samples, langevin_steps, eta: Langevin sampling.
        curl_grid, curl_lim: the curl grid (``curl_grid²`` points on ``[-lim, lim]²``).
        directed, directed_hidden, directed_sigma, directed_lr: also run the masked (directed)
            field on a linear SCM (:mod:`.flux_directed`) with this width, bandwidth and rate;
            directed_oscillator: also on a 4-step damped-oscillator trajectory (d = 8).
        seed: random seed; size: ``"full"`` or ``"quick"``.
    """

    datasets: tuple[str, ...] = ("ring", "mixture")
    ring_radius: float = 3.0
    ring_width: float = 0.1
    n_data: int = 8000
    sigma: float = 0.3
    hidden: int = 128
    depth: int = 3
    train_steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    method: str = "forward"
    simulation: str = "label"
    pairing: str = "own"
    horizon: float = 4.0
    time_sampling: str = "exponential"
    lr_schedule: str = "cosine"
    n_samples: int = 2000
    langevin_steps: int = 2000
    eta: float = 0.01
    curl_grid: int = 80
    curl_lim: float = 4.5
    spiral_penalty: float = 0.1
    directed: bool = True
    directed_oscillator: bool = True
    directed_hidden: int = 64
    directed_sigma: float = 1.0
    directed_lr: float = 3e-3
    seed: int = 0
    size: str = "full"

    QUICK: ClassVar[dict[str, Any]] = dict(train_steps=400, batch_size=256, hidden=64, lr=3e-3, n_data=4000,
                                           n_samples=1000, langevin_steps=800, eta=0.02, spiral_penalty=0.0,
                                           size="quick")


def ring_data(n: int, radius: float, width: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` points ``(ρ cos θ, ρ sin θ)``, ``θ ~ U(0, 2π)``, ``ρ ~ N(radius, width²)``: (n, 2)."""
    theta = 2 * torch.pi * torch.rand(n, generator=generator)
    rho = radius + width * torch.randn(n, generator=generator)
    return torch.stack([rho * theta.cos(), rho * theta.sin()], dim=-1)


def mixture_data(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points of :data:`~causal_delta.datasets.synthetic.DEFAULT_MIXTURE`, float32 (n, 2)."""
    from ..closed_form import GaussianMixture
    from ..datasets.synthetic import DEFAULT_MIXTURE

    mix = GaussianMixture(DEFAULT_MIXTURE["weights"], DEFAULT_MIXTURE["means"], DEFAULT_MIXTURE["covs"])
    return mix.sample(n, generator=generator).float()


def _validate(config: FluxConfig) -> None:
    unknown = [d for d in config.datasets if d not in ("ring", "mixture")]
    if not config.datasets or unknown:
        raise ValueError(f"datasets must be a non-empty subset of ('ring', 'mixture'), got {config.datasets!r}")
    for name in ("n_data", "hidden", "depth", "directed_hidden", "train_steps", "batch_size", "n_samples",
                 "langevin_steps", "curl_grid"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if config.n_samples < 2 or config.n_data < 2 * config.n_samples:
        raise ValueError(f"n_samples must be >= 2 and n_data >= 2 * n_samples (a second draw gives the MMD noise "
                         f"floor), got n_samples={config.n_samples}, n_data={config.n_data}")
    if not float(config.spiral_penalty) >= 0:
        raise ValueError(f"spiral_penalty must be a number >= 0, got {config.spiral_penalty!r}")
    for name in ("sigma", "directed_sigma", "directed_lr", "lr", "eta", "curl_lim", "ring_radius", "horizon"):
        if not float(getattr(config, name)) > 0:
            raise ValueError(f"{name} must be a number > 0, got {getattr(config, name)!r}")


def _fit(field, data: torch.Tensor, **kwargs: Any):
    """:func:`~causal_delta.flux.fit_field` of ``field`` in place, on rank 0 alone under torchrun.

    The stationary-field trainer is not DDP-aware; rank 0 trains (``on_main``) and every rank
    loads its weights, so all ranks sample the very same field. Returns the ``FitResult``.
    """
    from ..flux import fit_field

    def train():
        fit = fit_field(field, data, **kwargs)
        return fit, {k: v.detach().cpu() for k, v in field.state_dict().items()}

    fit, state = C.on_main(train)
    field.load_state_dict(state)
    field.eval()
    return fit


def _langevin(field, start: torch.Tensor, **kwargs: Any):
    """:func:`~causal_delta.flux.langevin` from ``start`` (n, d), its chains split over the ranks.

    Each rank runs its block of rows (drawing the noise of all rows, so the chains do not depend
    on the split) and the blocks are gathered on every rank. Returns the ``SampleResult``.
    """
    from .. import distributed as dist
    from ..flux import langevin
    from ..flux.samplers import SampleResult

    x = dist.map_rows(lambda rows: langevin(field, start, rows=rows, **kwargs).x, start.shape[0])
    return SampleResult(x, kwargs["steps"])


def _quiver(ax, field, samples, lim: float, title: str) -> None:
    g = torch.linspace(-lim, lim, 21)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    with torch.no_grad():
        v = field(pts)
    s = samples[:1000].numpy()
    ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.3, color="C1")
    ax.quiver(pts[:, 0].numpy(), pts[:, 1].numpy(), v[:, 0].numpy(), v[:, 1].numpy(), color="C0",
              angles="xy", scale_units="xy", scale=float(v.norm(dim=-1).quantile(0.9)) * 2.5 + 1e-9)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)


def _matrix_md(m) -> str:
    m = torch.as_tensor(m)
    return C.markdown_table([""] + [f"x{j + 1}" for j in range(m.shape[1])],
                            [[f"f{i + 1}"] + [float(v) for v in row] for i, row in enumerate(m)])


def run_flux(config: FluxConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Train Flux Matching and DSM fields, sample, measure; write ``report.json``, figures, ``summary.md``."""
    from ..flux import TimeFree, curl_2d, mean_abs_curl, mmd2, radius_stats
    from ..models import build_model
    from ..report import new_figure, save_figure

    _validate(config)
    out = C.prepare_output(out_dir)
    timer = C.Timer()
    sigma = float(config.sigma)
    results: dict[str, Any] = {}
    fields: dict[tuple[str, str], Any] = {}
    samples: dict[tuple[str, str], torch.Tensor] = {}
    flux_kwargs = dict(method=config.method, simulation=config.simulation, pairing=config.pairing,
                       horizon=config.horizon, time_sampling=config.time_sampling)
    for k, name in enumerate(config.datasets):
        with C.seeded(config.seed + k) as gen:
            data = (ring_data(config.n_data, config.ring_radius, config.ring_width, gen) if name == "ring"
                    else mixture_data(config.n_data, gen))
            smoothed = data + sigma * torch.randn(data.shape, generator=gen)
            idx = torch.randperm(config.n_data, generator=gen)[: 2 * config.n_samples]
            ref_a, ref_b = smoothed[idx[: config.n_samples]], smoothed[idx[config.n_samples:]]
            start = 3.0 * torch.randn(config.n_samples, 2, generator=gen)
            init = TimeFree(build_model("mlp-small", event_shape=(2,), hidden=config.hidden, depth=config.depth))
        entry: dict[str, Any] = {"mmd2_noise_floor": mmd2(ref_a, ref_b)}
        if name == "ring":
            m, s = radius_stats(smoothed)
            entry["target_radius"] = {"mean": m, "std": s}
        variants = ["flux", "dsm"] + (["flux+spiral"] if config.spiral_penalty > 0 and name == "ring" else [])
        for objective in variants:
            field = copy.deepcopy(init)  # same initialisation for both objectives, no global RNG draw
            penalty = None
            if objective == "flux+spiral":  # reward counter-clockwise rotation at the data
                def penalty(f, batch, lam=float(config.spiral_penalty)):
                    return -lam * curl_2d(f, batch).mean()
            with timer(f"train_{name}_{objective}"):
                fit = _fit(field, data, objective=objective.split("+")[0], sigma=sigma,
                           steps=config.train_steps, batch_size=config.batch_size, lr=config.lr,
                           lr_schedule=config.lr_schedule, seed=config.seed + k, progress=progress,
                           penalty=penalty, **(flux_kwargs if objective != "dsm" else {}))
            with timer(f"sample_{name}_{objective}"):
                gen = torch.Generator().manual_seed(config.seed + 100 + k)
                sample = _langevin(field, start, steps=config.langevin_steps, eta=config.eta, generator=gen,
                                   progress=progress)
                x = sample.x
            with timer(f"measure_{name}_{objective}"):
                res = {"mmd2": mmd2(x, ref_a), "mean_abs_curl": mean_abs_curl(field, lim=config.curl_lim,
                                                                               n=config.curl_grid),
                       "nfe": sample.nfe, "train_seconds": round(fit.seconds, 2),
                       "final_loss": sum(fit.losses[-50:]) / len(fit.losses[-50:]),
                       "finite_fraction": float(torch.isfinite(x).all(-1).float().mean())}
                if name == "ring":
                    m, s = radius_stats(x)
                    res["radius"] = {"mean": m, "std": s,
                                     "mean_gap": m - entry["target_radius"]["mean"],
                                     "std_gap": s - entry["target_radius"]["std"]}
            entry[objective] = res
            fields[(name, objective)] = field
            samples[(name, objective)] = x
        entry["curl_ratio_flux_over_dsm"] = entry["flux"]["mean_abs_curl"] / max(entry["dsm"]["mean_abs_curl"], 1e-12)
        results[name] = entry

    headline: dict[str, Any] = {}
    if "ring" in results:
        ring = results["ring"]
        headline.update({
            "ring_flux_radius_mean_gap": ring["flux"]["radius"]["mean_gap"],
            "ring_flux_radius_std_gap": ring["flux"]["radius"]["std_gap"],
            "ring_curl_flux": ring["flux"]["mean_abs_curl"], "ring_curl_dsm": ring["dsm"]["mean_abs_curl"],
        })
        if "flux+spiral" in ring:
            headline["ring_curl_flux_spiral"] = ring["flux+spiral"]["mean_abs_curl"]
        headline["ring_targets_met"] = bool(abs(ring["flux"]["radius"]["mean_gap"]) <= 0.05
                                            and abs(ring["flux"]["radius"]["std_gap"]) <= 0.05
                                            and ring["curl_ratio_flux_over_dsm"] >= 2.0)
    directed_arrays = None
    if config.directed:
        from .flux_directed import run_directed

        results["directed"], directed_arrays = run_directed(config, timer, progress=progress)
        dr = results["directed"]
        headline["directed_flux_max_abs_error"] = dr["flux"]["max_abs_error_vs_true"]
        headline["directed_mmd2_flux"] = dr["flux"]["mmd2"]
        headline["directed_mmd2_dsm"] = dr["dsm"]["mmd2"]
        headline["directed_cov_rel_error_flux"] = dr["flux"]["cov_rel_error"]
        headline["directed_cov_rel_error_dsm"] = dr["dsm"]["cov_rel_error"]
        if config.directed_oscillator:
            results["directed_oscillator"], _ = run_directed(config, timer, system="oscillator", progress=progress)
            do = results["directed_oscillator"]
            headline["oscillator_flux_max_abs_error"] = do["flux"]["max_abs_error_vs_true"]
            headline["oscillator_dsm_max_abs_error"] = do["dsm"]["max_abs_error_vs_true"]
    results["headline"] = headline

    figures = []
    with timer("figures"):
        names = list(config.datasets)
        fig, axes = new_figure(len(names), 2, figsize=(10, 5 * len(names)), squeeze=False)
        for i, name in enumerate(names):
            for j, objective in enumerate(("flux", "dsm")):
                r = results[name][objective]
                _quiver(axes[i][j], fields[(name, objective)], samples[(name, objective)], config.curl_lim,
                        f"{name}: {objective} (mean |curl| {r['mean_abs_curl']:.3f}, MMD² {r['mmd2']:.4f})")
        save_figure(fig, out / "fields.png")
        figures.append("fields.png")
        if directed_arrays is not None:
            fig, axes = new_figure(1, 3, figsize=(13, 4))
            vmax = float(directed_arrays["true"].abs().max())
            for ax, key, title in zip(axes, ("true", "flux", "dsm"), ("exact triangular field -A", "flux (masked)",
                                                                       "DSM (masked)")):
                mat = directed_arrays[key].numpy()
                im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
                n = mat.shape[0]
                ax.set_xticks(range(n), [f"x{j + 1}" for j in range(n)])
                ax.set_yticks(range(n), [f"f{i + 1}" for i in range(n)])
                ax.set(title=f"E[∂f_i/∂x_j]: {title}")
            fig.colorbar(im, ax=list(axes))
            save_figure(fig, out / "directed.png")
            figures.append("directed.png")

    rows = []
    for name in config.datasets:
        e = results[name]
        for objective in [v for v in ("flux", "dsm", "flux+spiral") if v in e]:
            r = e[objective]
            rad = r.get("radius")
            rows.append([name, objective, rad["mean"] if rad else "", rad["std"] if rad else "", r["mmd2"],
                         r["mean_abs_curl"], r["train_seconds"]])
        if name == "ring":
            rows.append([name, "smoothed target", e["target_radius"]["mean"], e["target_radius"]["std"],
                         e["mmd2_noise_floor"], "", ""])
        else:
            rows.append([name, "smoothed data (2nd draw)", "", "", e["mmd2_noise_floor"], "", ""])
    summary = C.markdown_table(["data", "field", "radius mean", "radius std", "MMD² to smoothed data",
                                "mean abs curl", "train s"], rows)
    summary += ("\n\nAuthors' notebook (their ring and network): mean |curl| flux 0.41, DSM 0.12, "
                "flux + spiral penalty 1.64.\n")
    if config.directed:
        dr = results["directed"]
        summary += "\n## Directed field on a linear SCM (mask: lower-triangular)\n\n"
        summary += C.markdown_table(
            ["field", "max abs(E[J] + A)", "masked entries != 0 (field / flow map)", "MMD² to smoothed data",
             "covariance rel. error"],
            [[k, dr[k]["max_abs_error_vs_true"],
              f"{dr[k]['masked_field_entries_nonzero']} / {dr[k]['masked_flow_map_entries_nonzero']}", dr[k]["mmd2"],
              dr[k]["cov_rel_error"]]
             for k in ("flux", "dsm")] + [["smoothed data (2nd draw)", "", "", dr["mmd2_noise_floor"], ""]])
        if config.directed_oscillator:
            do = results["directed_oscillator"]
            summary += "\n\nDamped 2-D oscillator, 4 time steps (d = 8), mask causal in time:\n\n"
            summary += C.markdown_table(
                ["field", "max abs(E[J] + A)", "masked entries != 0 (field / flow map)", "MMD² to smoothed data",
                 "covariance rel. error"],
                [[k, do[k]["max_abs_error_vs_true"],
                  f"{do[k]['masked_field_entries_nonzero']} / {do[k]['masked_flow_map_entries_nonzero']}",
                  do[k]["mmd2"], do[k]["cov_rel_error"]] for k in ("flux", "dsm")]
                + [["smoothed data (2nd draw)", "", "", do["mmd2_noise_floor"], ""]])
        for k, label in (("true_jacobian", "exact -A (SCM)"),):
            summary += f"\n\n{label}:\n\n" + _matrix_md(dr[k])
        summary += "\n\nflux estimate E[∂f_i/∂x_j]:\n\n" + _matrix_md(dr["flux"]["estimated_jacobian"])
        summary += "\n\nDSM estimate E[∂f_i/∂x_j]:\n\n" + _matrix_md(dr["dsm"]["estimated_jacobian"]) + "\n"
    if "ring" in results:
        summary += ("\nTargets (radius mean and std within 0.05, flux curl >= 2x DSM) met: "
                    f"{headline['ring_targets_met']}\n")
    return C.write_report(out, experiment="flux", paper="arXiv 2605.07319 (Flux Matching)", config=config,
                          quick=config.size == "quick", results=results, published=PUBLISHED, timer=timer,
                          figures=figures, summary=summary)
