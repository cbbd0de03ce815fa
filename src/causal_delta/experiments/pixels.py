r"""Section 6.3 / Table 5: JVP pixel correlations of an image flow against empirical ones.

A UNet is trained by flow matching on one class of real images (paper: MNIST fives, UNet base
64, mult (1, 2, 4, 8, 16), AdamW 2e-4, batch 64, 10,001 steps). Then ``n_samples`` source
points ``x0 ~ N(0, I)`` and Gaussian probes ``z ~ N(0, I)`` give, by forward mode through the
solver, the responses ``Δ = J_f(x0) z`` and the generated images ``f(x0)`` (solver and steps
chosen by the discretisation check of the region's JVP correlation, see :class:`PixelsConfig`).
For pixels ``i, j``:

- **JVP correlation** (the paper's estimator): ``S_ij / sqrt(S_ii S_jj)`` with the uncentred
  second moment ``S = E[Δ Δᵀ]`` (:func:`causal_delta.dependence.correlation`);
- **empirical correlation**: the ordinary (centred, Pearson) correlation of the pixel values
  across the generated images ``f(x0)``; the same across the real training images is reported
  too (``real``).

Pixel pair: the paper's pixels ``(14, 8)`` and ``(15, 8)`` (row, column) of 28x28 MNIST, where
it reports JVP 0.8674 vs empirical 0.8813. For an ``H x W`` image the first pixel is mapped to
``(floor(14 H / 28), floor(8 W / 28))`` and the second keeps the paper's offset ``(+1, 0)``
from it (so for 8x8 digits the pair is ``(4, 2)``, ``(5, 2)``: vertical neighbours, as in the
paper); on 28x28 images the pair is the paper's.

Region: every pixel pair inside a ``region x region`` square (clipped to the image) centred on
the pixel pair; for 8x8 digits with ``region = 8`` that is the whole image (2,016 pairs). The
report gives the Pearson correlation between the JVP and empirical correlation entries (upper
triangle) and their mean absolute gap, each with a BCa bootstrap CI that resamples the
``(x0, z)`` pairs. Entries that are undefined (a pixel constant across samples) are dropped
and counted.

All correlations are :func:`causal_delta.dependence.correlation` (uncentred for the JVP,
``centered=True`` for pixel values and for the Pearson between matrices); the intervals are
:func:`causal_delta.dependence.bootstrap_statistic` (BCa, seeded ``torch.Generator``).

Memorisation: the trained flow also gets the diagnostic of
:func:`causal_delta.diagnostics.diagnose_memorisation` (``memorisation/``; one line in
``summary.md``: own-pair — for this independent coupling, the share of fresh samples that copy
one training image, ``d_1/d_2 < 1/3`` — / median nearest-copy ratio / Jacobian rank), each
beside the same statistic for the training images themselves (leave-one-out), and the verdict
"memorised" or "not memorised" of :func:`._checks.memorisation_verdict`.

Figures: ``derivative.png`` (the "derivative image" ``J z`` of Figure 3, with ``x0``, ``z``
and ``f(x0)``), ``scatter.png`` (JVP vs empirical entries), ``corr_maps.png`` (correlation of
the first pixel of the pair with every pixel: JVP, generated, real) and ``samples.png``.

Under ``torchrun``: rank 0 writes the training images' file, the UNet trains with DDP, each rank
integrates its block of the ``(x0, z)`` pairs (and of the diagnostic's fresh sources), and the
statistics (on the gathered responses, identical on every rank) are written by rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from . import _common as C
from ._checks import choose_solver, memorisation_check

__all__ = ["PixelsConfig", "run_pixels", "map_pixel_pair", "region_box", "region_features", "PUBLISHED",
           "PAPER_PAIR"]

PAPER_PAIR = ((14, 8), (15, 8))
"""The paper's pixel pair (row, column) on 28x28 MNIST fives."""

PUBLISHED = {"dataset": "MNIST fives (28x28)", "pixel_pair": PAPER_PAIR, "jvp": 0.8674, "empirical": 0.8813,
             "model": "UNet base 64, mult (1,2,4,8,16)", "lr": 2e-4, "batch_size": 64, "train_steps": 10001}


@dataclass
class PixelsConfig(C.SizedConfig):
    """Settings of the pixel-correlation experiment (defaults: the paper's sizes, Fashion-MNIST).

    Attributes:
        dataset: ``"digits"`` (scikit-learn 8x8), ``"mnist"`` (needs ``data_root``),
            ``"fashion-mnist"`` (default root ``/usr/share/datasets/fashion-mnist``) or
            ``"folder"`` (needs ``data_root``); see :mod:`causal_delta.datasets.images`.
        data_root: folder of the data files.
        classes: classes to keep (indices or names); the paper uses the fives (class 5, which is
            "Sandal" in Fashion-MNIST).
        image_size: resize to this side (``None`` keeps the native size).
        limit: keep at most this many training images.
        preset, overrides: model preset and ``((name, value), ...)`` overrides.
        lr, train_steps, batch_size, ema_decay, device: training (AdamW).
        method, solver_steps: ODE solver of the generator (its JVPs, samples and memorisation
            diagnostic). ``"auto"`` (default) chooses solver and steps with
            :func:`causal_delta.discretisation.choose_steps` on the experiment's own statistic — the
            JVP correlation of the region's pixels on the run's ``(x0, z)`` — doubling the steps from
            ``solver_steps`` until the half-steps check passes; a solver name uses ``solver_steps``
            as given. Either way the check is reported (``results["solver"]``, one line in summary.md).
        max_solver_steps: the most steps ``"auto"`` may choose (the doubling stops there; when no solver
            passes by then the closest check is used and the summary says so).
        check_samples: paired samples recomputed at half the steps by the check.
        n_samples: number of ``(x0, z)`` pairs.
        jvp_batch_size: samples per JVP integration call.
        pixel_pair: the pair in 28x28 coordinates (mapped to the image size, see module doc).
        region: side of the square of pixels whose every pair is compared.
        n_boot: bootstrap replicates.
        seed: random seed.
        size: ``"full"`` or ``"quick"``.
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    classes: tuple = (5,)
    image_size: int | None = None
    limit: int | None = None
    preset: str = "unet-28"
    overrides: tuple = ()
    lr: float = 2e-4
    train_steps: int = 10_001
    batch_size: int = 64
    ema_decay: float | None = None
    device: str = "auto"
    method: str = "auto"
    solver_steps: int = 50
    check_samples: int = 256
    max_solver_steps: int = 1024
    n_samples: int = 1000
    jvp_batch_size: int = 250
    pixel_pair: tuple = PAPER_PAIR
    region: int = 8
    n_boot: int = 200
    seed: int = 0
    size: str = "full"

    # CI size: 8x8 digit fives, a small UNet, 2,000 steps (about two minutes on a CPU).
    # Full size: the paper's model and training sizes, on Fashion-MNIST (MNIST with dataset="mnist").
    QUICK: ClassVar[dict[str, Any]] = dict(dataset="digits", preset="unet-small", overrides=(("base_channels", 16),),
                                              lr=2e-3, train_steps=2000, batch_size=64, device="cpu", solver_steps=20,
                                              n_samples=1000, jvp_batch_size=500, n_boot=200, size="quick")


def map_pixel_pair(pair, height: int, width: int, ref: int = 28) -> tuple[tuple[int, int], tuple[int, int]]:
    """Map a pixel pair given on a ``ref x ref`` image to an ``height x width`` image.

    The first pixel goes to ``(floor(r H / ref), floor(c W / ref))``; the second keeps the
    pair's offset from the first (clipped to the image), so neighbours stay neighbours.
    """
    (r1, c1), (r2, c2) = pair
    a = (min(height - 1, (r1 * height) // ref), min(width - 1, (c1 * width) // ref))
    b = (min(height - 1, max(0, a[0] + r2 - r1)), min(width - 1, max(0, a[1] + c2 - c1)))
    if a == b:
        raise ValueError(f"pixel_pair {pair} maps onto one pixel {a} of a {height}x{width} image")
    return a, b


def region_box(pair, side: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` (end exclusive) of a ``side``-square centred on the pair."""
    side_h, side_w = min(side, height), min(side, width)
    mr = (pair[0][0] + pair[1][0]) / 2.0
    mc = (pair[0][1] + pair[1][1]) / 2.0
    r0 = int(min(max(round(mr - (side_h - 1) / 2.0), 0), height - side_h))
    c0 = int(min(max(round(mc - (side_w - 1) / 2.0), 0), width - side_w))
    return r0, r0 + side_h, c0, c0 + side_w


def region_features(box: tuple[int, int, int, int], width: int) -> list[int]:
    """Flattened indices (channel 0, row-major inside the box) of the pixels of ``box`` =
    ``(row0, row1, col0, col1)`` in a ``(C, H, width)`` image: the columns of the region statistics."""
    r0, r1, c0, c1 = box
    return [r * width + c for r in range(r0, r1) for c in range(c0, c1)]


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, int]:
    """Pearson correlation (:func:`causal_delta.dependence.correlation`, centred) and mean |gap| of
    two correlation matrices' upper triangles; undefined (NaN) entries are dropped and counted."""
    from ..dependence import correlation

    iu = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    x, y = a[iu[0], iu[1]], b[iu[0], iu[1]]
    ok = torch.isfinite(x) & torch.isfinite(y)
    n = int(ok.sum())
    if n < 2:
        return float("nan"), float("nan"), n
    pearson = correlation(torch.stack([x[ok], y[ok]], 1), centered=True)[0, 1]
    return float(pearson), float((x[ok] - y[ok]).abs().mean()), n


def run_pixels(config: PixelsConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Train the image flow, estimate pixel correlations, write the report and figures."""
    from ..datasets.images import load_images, to_unit_range
    from ..jvp import jvp_forward

    out = C.prepare_output(out_dir)
    timer = C.Timer()
    with timer("data"):
        data = load_images(config.dataset, root=config.data_root, classes=config.classes,
                           size=config.image_size, limit=config.limit)
        if len(data) < 2:
            raise ValueError(f"classes {config.classes!r} of {config.dataset} leave {len(data)} image(s); "
                             f"need at least 2")
        C_, H, W = data.event_shape
        pa, pb = map_pixel_pair(config.pixel_pair, H, W)
        r0, r1, c0, c1 = region_box((pa, pb), config.region, H, W)
        data_path = out / "train" / "data.pt"
        # rank 0 writes the file every rank's training loop reads; on_main waits for it
        C.on_main(lambda: _save_tensor(data.images, data_path))

    with timer("train"):
        flow, losses, checkpoint = C.train_model(
            out, data=str(data_path), preset=config.preset, model_args=dict(config.overrides),
            steps=config.train_steps, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
            progress=progress, ema_decay=config.ema_decay, device=config.device)
    device = next(flow.parameters()).device

    with C.seeded(config.seed + 1) as gen:
        x0 = torch.randn(config.n_samples, C_, H, W, generator=gen)
        z = torch.randn(config.n_samples, C_, H, W, generator=gen)
    with timer("steps"):  # checked on the reported statistic: the JVP correlation of the region's pixels
        solver = choose_solver(flow, x0.to(device), z.to(device), method=config.method, steps=config.solver_steps,
                                 max_steps=config.max_solver_steps,
                                 subsample=config.check_samples, n_boot=config.n_boot, seed=config.seed,
                                 progress=progress, features=region_features((r0, r1, c0, c1), W),
                                 batch_size=config.jvp_batch_size)
    method, steps = solver["method"], solver["steps"]
    with timer("jvp"):
        def block(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            xs, dxs = [], []
            chunks = range(0, a.shape[0], config.jvp_batch_size)
            for s in C.progress(chunks, desc="pixels: JVP through the solver", enabled=progress):
                res = jvp_forward(flow, a[s: s + config.jvp_batch_size].to(device),
                                  b[s: s + config.jvp_batch_size].to(device),
                                  method=method, steps=steps)
                xs.append(res.x.cpu())
                dxs.append(res.jvp.cpu())
            return torch.cat(xs), torch.cat(dxs)

        gen_images, delta = C.split_rows(block, x0, z)  # under torchrun: this rank's (x0, z) pairs
    with timer("fd_check"):
        fd_check = _fd_vs_forward(flow, x0[:4].to(device), z[:4].to(device), method, steps)
    with timer("memorisation"):
        memorisation = memorisation_check(flow, data.images.to(device), out / "memorisation", method=method,
                                            steps=steps, seed=config.seed, progress=progress)

    with timer("statistics"):
        from ..dependence import correlation

        # Region pixels (channel 0), flattened row-major inside the box. Correlations are the
        # library's estimators: the paper's uncentred JVP correlation and the centred (Pearson)
        # one of pixel values (causal_delta.dependence.correlation).
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        rows, cols = torch.from_numpy(rr.ravel()), torch.from_numpy(cc.ravel())
        D = delta[:, 0].double()[:, rows, cols]           # (n, m)
        G = gen_images[:, 0].double()[:, rows, cols]      # (n, m)
        R = data.images[:, 0].double()[:, rows, cols]     # (N, m)
        ia = int(torch.nonzero((rows == pa[0]) & (cols == pa[1]))[0])
        ib = int(torch.nonzero((rows == pb[0]) & (cols == pb[1]))[0])
        corr_jvp, corr_gen, corr_real = correlation(D), correlation(G, centered=True), correlation(R, centered=True)
        pear_gen, gap_gen, n_pairs = _compare(corr_jvp, corr_gen)
        pear_real, gap_real, n_pairs_real = _compare(corr_jvp, corr_real)

        def stats(idx: np.ndarray) -> np.ndarray:
            rows_ = torch.from_numpy(idx)
            cj, cg = correlation(D[rows_]), correlation(G[rows_], centered=True)
            p, g, _ = _compare(cj, cg)
            return np.array([float(cj[ia, ib]), float(cg[ia, ib]), p, g])

        # BCa over resampled (x0, z) rows, seeded torch.Generator (dependence.bootstrap_statistic)
        lo, hi = C.bootstrap_ci(stats, len(D), n_boot=config.n_boot, seed=config.seed)
        # Full-image maps of the first pixel's correlation with every pixel (same estimators).
        fa = pa[0] * W + pa[1]
        map_jvp = correlation(delta[:, 0].double().flatten(1))[fa].numpy()
        map_gen = correlation(gen_images[:, 0].double().flatten(1), centered=True)[fa].numpy()
        map_real = correlation(data.images[:, 0].double().flatten(1), centered=True)[fa].numpy()
        corr_jvp, corr_gen, corr_real = corr_jvp.numpy(), corr_gen.numpy(), corr_real.numpy()

    def num(x):
        return float(x) if np.isfinite(x) else None

    results = {
        "dataset": {"source": data.source, "classes": [data.classes[i] for i in sorted(set(data.labels.tolist()))],
                    "n_train": len(data), "image_shape": [C_, H, W]},
        "pixel_pair": {"paper": PAPER_PAIR, "mapped": [pa, pb],
                       "jvp": num(corr_jvp[ia, ib]), "jvp_ci95": [num(lo[0]), num(hi[0])],
                       "empirical_generated": num(corr_gen[ia, ib]), "empirical_generated_ci95": [num(lo[1]), num(hi[1])],
                       "empirical_real": num(corr_real[ia, ib])},
        "region": {
            "box_rows": [r0, r1], "box_cols": [c0, c1], "n_pixels": int(len(rows)),
            "n_pairs_compared": n_pairs,
            "pearson_jvp_vs_generated": num(pear_gen), "pearson_ci95": [num(lo[2]), num(hi[2])],
            "mean_abs_gap_jvp_vs_generated": num(gap_gen), "mean_abs_gap_ci95": [num(lo[3]), num(hi[3])],
            "pearson_jvp_vs_real": num(pear_real), "mean_abs_gap_jvp_vs_real": num(gap_real),
            "n_pairs_compared_real": n_pairs_real,
        },
        "fd_vs_forward": fd_check,
        "memorisation": memorisation,
        "n_samples": config.n_samples,
        "solver": solver,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "checkpoint": str(checkpoint),
        "headline": {
            "pair_jvp": num(corr_jvp[ia, ib]), "pair_empirical": num(corr_gen[ia, ib]),
            "region_pearson": num(pear_gen), "region_mean_abs_gap": num(gap_gen),
        },
        "interval": "bca (bias-corrected and accelerated bootstrap, rows resampled)",
    }

    figures = []
    with timer("figures"):
        from ..report import new_figure, save_figure

        # Derivative image (Figure 3): x0, z, f(x0), J z for a few samples.
        k = min(3, config.n_samples)
        fig, axes = new_figure(k, 4, figsize=(8, 2.1 * k), squeeze=False)
        for i in range(k):
            jz = delta[i, 0].numpy()
            lim = float(np.abs(jz).max()) or 1.0
            panels = [(x0[i, 0].numpy(), "x0", "gray", None), (z[i, 0].numpy(), "z", "gray", None),
                      (to_unit_range(gen_images[i, 0]).numpy(), "f(x0)", "gray", (0, 1)),
                      (jz, "J z (derivative image)", "RdBu_r", (-lim, lim))]
            for ax, (img, title, cmap, vr) in zip(axes[i], panels):
                ax.imshow(img, cmap=cmap, vmin=None if vr is None else vr[0], vmax=None if vr is None else vr[1])
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(title, fontsize=9)
            for p, mk in ((pa, "o"), (pb, "s")):
                axes[i][3].plot(p[1], p[0], mk, mfc="none", mec="k", ms=5)
        save_figure(fig, out / "derivative.png")
        figures.append("derivative.png")

        iu = np.triu_indices(len(rows), k=1)
        fig, ax = new_figure(figsize=(5, 5))
        ax.scatter(corr_gen[iu], corr_jvp[iu], s=4, alpha=0.4, label="pixel pairs in region")
        ax.scatter([corr_gen[ia, ib]], [corr_jvp[ia, ib]], s=50, color="C3", marker="*",
                   label=f"pair {pa}, {pb}")
        ax.plot([-1, 1], [-1, 1], color="gray", lw=0.8)
        ax.set(xlabel="empirical correlation (generated samples)", ylabel="JVP correlation",
               title=f"Pearson {pear_gen:.3f}, mean |gap| {gap_gen:.3f}", xlim=(-1, 1), ylim=(-1, 1))
        ax.legend(fontsize=8)
        save_figure(fig, out / "scatter.png")
        figures.append("scatter.png")

        fig, axes = new_figure(1, 3, figsize=(10, 3.4))
        for ax, m, title in zip(axes, (map_jvp, map_gen, map_real), ("JVP", "generated (empirical)", "real (empirical)")):
            im = ax.imshow(m.reshape(H, W), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.plot(pa[1], pa[0], "k+", ms=8)
            ax.add_patch(_rect(r0, r1, c0, c1))
            ax.set(title=title, xticks=[], yticks=[])
        fig.suptitle(f"correlation of pixel {pa} with every pixel (dashed: compared region)", fontsize=10)
        fig.colorbar(im, ax=list(axes), shrink=0.8)
        save_figure(fig, out / "corr_maps.png")
        figures.append("corr_maps.png")

        n_show = min(8, len(data), config.n_samples)
        fig, axes = new_figure(2, n_show, figsize=(1.3 * n_show, 2.8), squeeze=False)
        for j in range(n_show):
            for row, imgs in enumerate((data.images, gen_images)):
                axes[row][j].imshow(to_unit_range(imgs[j, 0]).numpy(), cmap="gray", vmin=0, vmax=1)
                axes[row][j].set_xticks([])
                axes[row][j].set_yticks([])
        axes[0][0].set_ylabel("real")
        axes[1][0].set_ylabel("generated")
        save_figure(fig, out / "samples.png")
        figures.append("samples.png")

    pp, rg = results["pixel_pair"], results["region"]
    summary = C.markdown_table(
        ["quantity", "value", "95% CI", "paper (MNIST fives)"],
        [
            [f"pixel pair {pa}, {pb}: JVP correlation", pp["jvp"], C.fmt(pp["jvp_ci95"]), 0.8674],
            [f"pixel pair {pa}, {pb}: empirical (generated)", pp["empirical_generated"],
             C.fmt(pp["empirical_generated_ci95"]), 0.8813],
            [f"pixel pair {pa}, {pb}: empirical (real images)", pp["empirical_real"], "", ""],
            [f"region {r1 - r0}x{c1 - c0} ({n_pairs} pairs): Pearson(JVP, empirical)", rg["pearson_jvp_vs_generated"],
             C.fmt(rg["pearson_ci95"]), ""],
            ["region: mean abs(JVP - empirical)", rg["mean_abs_gap_jvp_vs_generated"], C.fmt(rg["mean_abs_gap_ci95"]), ""],
            ["central FD vs forward mode on the trained UNet, relative error (float32 / float64)",
             f"{fd_check['relative_error_float32']:.2g} / {fd_check['relative_error_float64']:.2g}", "", ""],
        ],
    )
    summary = (f"Data: {data.source}, classes {results['dataset']['classes']}, {len(data)} images "
               f"{H}x{W}; pixel pair mapped from the paper's {PAPER_PAIR} to {pa}, {pb}.\n\n" + summary
               + f"\n\nMemorisation diagnostic ({memorisation['verdict']}): {memorisation['line']} "
               f"(`memorisation/summary.md`).\n\n" + solver["line"])
    return C.write_report(out, experiment="pixels", paper="Section 6.3, Table 5", config=config,
                          quick=config.size == "quick", results=results, published=PUBLISHED,
                          timer=timer, figures=figures, summary=summary + "\n")


def _save_tensor(tensor: torch.Tensor, path) -> None:
    """``torch.save`` through the atomic writer (:func:`causal_delta.report.atomic_write_bytes`)."""
    import io

    from ..report import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(tensor, buf)
    atomic_write_bytes(path, buf.getvalue())


def _fd_vs_forward(flow, x0, z, method: str, steps: int) -> dict[str, float]:
    """Relative error ||J z (central FD) - J z (forward mode)|| / ||J z (forward mode)|| on the
    trained UNet, same solver and grid, in float32 and in a float64 copy of the model."""
    import copy

    from ..jvp import jvp_fd, jvp_forward

    out = {}
    for name, model, dtype in (("float32", flow, torch.float32),
                               ("float64", copy.deepcopy(flow).double(), torch.float64)):
        xa, za = x0.to(dtype), z.to(dtype)
        fwd = jvp_forward(model, xa, za, method=method, steps=steps).jvp
        fd = jvp_fd(model, xa, za, mode="central", method=method, steps=steps).jvp
        out[f"relative_error_{name}"] = float((fd - fwd).norm() / fwd.norm())
    out["n_samples"] = int(x0.shape[0])
    return out


def _rect(r0: int, r1: int, c0: int, c1: int):
    from matplotlib.patches import Rectangle

    return Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="k", lw=0.8, ls="--")
