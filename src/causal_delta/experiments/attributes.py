r"""Section 6.4 / Table 6: attribute-level dependence on CelebA through classifier∘flow JVPs.

Pipeline (``causal-delta reproduce attributes --celeba-root DIR [--quick]``):

1. **Flow**: a UNet trained by flow matching on CelebA's training split, centre crop 178 and
   resize to ``image_size`` (:mod:`causal_delta.datasets.celeba`), with
   :func:`causal_delta.training.train` (paper: 64 x 64, 400,001 steps; preset ``unet-64``).
   ``flow_checkpoint`` reuses a trained one.
2. **Classifier** ``C``: attribute logits trained with
   :func:`causal_delta.classifier_training.train_classifier` (paper: ResNet-50 with 40
   logits); ``classifier_checkpoint`` reuses one. Its outputs must include the three
   attributes (otherwise a ``ValueError`` names them).
3. **JVPs**: for ``n_samples`` source points ``x0 ~ N(0, I)`` and one unit-norm Gaussian probe
   ``z`` each (the paper's setting), forward mode through the solver gives
   ``Δy = J_{C∘f}(x0) z`` for the triple (common cause ``k``, pair ``i, j``)
   (:func:`causal_delta.jvp.attribute_jvp`).
4. **Estimates of the pair's dependence** (each with a 95 % bootstrap interval):

   - *empirical*: Pearson correlation of the 0/1 labels on the training split (the paper's
     0.40), and inside each stratum of the common cause's label;
   - *JVP*: the paper's uncentred ``Corr = D^{-1/2} S D^{-1/2}``, ``S = E[Δy Δyᵀ]``
     (:func:`causal_delta.dependence.bootstrap`); the centred variant beside it (the original
     code's ``np.corrcoef``);
   - *conditioned*: the rows with ``|Δy_k|`` below its ``condition_quantile`` quantile
     (:func:`causal_delta.dependence.condition`; the paper kept ~1,700 of 10,000), and the
     threshold sweep (:func:`causal_delta.dependence.threshold_sweep`);
   - *hold-fixed*: probes projected orthogonal to ``∇_{x0}(C_k∘f)``, so ``Δy_k = 0`` to first
     order (:func:`causal_delta.dependence.hold_fixed_responses`), on ``hold_fixed_samples``;
   - *robust variants* of the JVP correlation: rows normalised to unit norm, and the top 1 % of
     rows by ``‖Δy‖`` trimmed.

5. **Diagnostics**: generator fidelity (the classifier's positive rates, mean logits and the
   pair's correlation on generated vs real held-out images, and the label rates), and the
   share of the second moment ``Σ Δy²`` carried by the top 1 % of samples (heavy tails).

The hypothesis graphs (PC on the labels, JVP-PC on the generator) come from
``causal_delta.graphs``; see :func:`_hypothesis_graphs`.

Figures: ``sweep.png`` (conditioned correlation vs kept fraction, with the other estimates)
and ``samples.png`` (real and generated images).

Under ``torchrun``: the flow trains with DDP, the classifier (not DDP-aware, it writes
checkpoints) is trained by rank 0 alone and then loaded by every rank, each rank integrates its
block of the JVP and hold-fixed samples, and rank 0 writes the report from the gathered responses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from . import _common as C
from ._checks import choose_solver

__all__ = ["AttributesConfig", "run_attributes", "PUBLISHED", "top_share"]

PUBLISHED = {
    "attribute_pair": ["Pointy_Nose (28)", "Rosy_Cheeks (30)"],
    "empirical": 0.40,
    "jvp": 0.16,
    "jvp_conditioned_small_J19": 0.04,
    "kept_of_10000": 1700,
}


@dataclass
class AttributesConfig(C.SizedConfig):
    """Settings of the CelebA attribute experiment (defaults: the paper's sizes).

    Attributes:
        celeba_root: folder with ``img_align_celeba/`` and ``list_attr_celeba.txt``.
        common_cause: the conditioning attribute ``k`` (paper: Heavy_Makeup, index 18).
        pair: the two attributes whose dependence is estimated (paper: Pointy_Nose, Rosy_Cheeks).
        classifier_attributes: the outputs of the classifier trained here (``None``: all 40; must
            include the triple; ignored with ``classifier_checkpoint``).
        image_size: side of the images (centre crop 178, then resize).
        limit, eval_limit: at most this many training / held-out images (``None``: all).
        flow_checkpoint: reuse a trained flow (run folder or checkpoint) instead of training.
        preset, overrides, lr, train_steps, batch_size, ema_decay: flow training.
        classifier_checkpoint: reuse a classifier trained by ``causal-delta classifier train``.
        classifier_arch, classifier_weights, classifier_steps, classifier_batch_size,
        classifier_lr: classifier training (weights: a local ImageNet file for the ResNet).
        method, solver_steps: ODE solver of the generator (its JVPs, hold-fixed probes and samples).
            ``"auto"`` (default) chooses solver and steps with
            :func:`causal_delta.discretisation.choose_steps` on the experiment's own statistic — the
            correlation of the classifier's responses ``Δy`` on the run's ``(x0, z)`` — doubling the
            steps from ``solver_steps`` until the half-steps check passes; a solver name uses
            ``solver_steps`` as given. Either way the check is reported (``results["solver"]``, one
            line in summary.md). The hold-fixed memory grows with the steps chosen.
        max_solver_steps: the most steps ``"auto"`` may choose (the doubling stops there; when no solver
            passes by then the closest check is used and the summary says so); it bounds the
            hold-fixed memory, which grows with the velocity evaluations.
        check_samples: paired samples recomputed at half the steps by the check.
        n_samples: ``(x0, z)`` pairs; jvp_batch_size: samples per JVP call.
        condition_quantile: kept fraction when conditioning on small ``|Δy_k|``.
        sweep_quantiles: kept fractions of the threshold sweep.
        hold_fixed_samples, hold_fixed_chunk: samples (and per-call batch) of the hold-fixed
            estimate: one reverse-mode gradient through the whole solver per sample, whose memory
            grows with the solver steps (``unet-64`` at 64 x 64 saves ~260 MB per image and
            velocity evaluation, so 100 evaluations at batch 2 need ~52 GB; ``unet-small``
            base 16 at 32 x 32, ~3.5 MB).
        fidelity_images: real held-out images the classifier is run on for the fidelity check.
        n_boot: bootstrap replicates; device: ``"auto"``, ``"cpu"`` or ``"cuda"``; seed; size.
    """

    celeba_root: str | None = None
    common_cause: str = "Heavy_Makeup"
    pair: tuple[str, str] = ("Pointy_Nose", "Rosy_Cheeks")
    classifier_attributes: tuple[str, ...] | None = None
    image_size: int = 64
    limit: int | None = None
    eval_limit: int | None = None
    flow_checkpoint: str | None = None
    preset: str = "unet-64"
    overrides: tuple[tuple[str, Any], ...] = ()
    lr: float = 2e-4
    train_steps: int = 400_001
    batch_size: int = 128
    ema_decay: float | None = 0.9999
    classifier_checkpoint: str | None = None
    classifier_arch: str = "resnet50"
    classifier_weights: str | None = None
    classifier_steps: int = 10_000
    classifier_batch_size: int = 128
    classifier_lr: float = 1e-3
    method: str = "auto"
    solver_steps: int = 50
    check_samples: int = 256
    max_solver_steps: int = 100
    n_samples: int = 10_000
    jvp_batch_size: int = 100
    condition_quantile: float = 0.17
    sweep_quantiles: tuple[float, ...] = (1.0, 0.5, 0.3, 0.17, 0.1, 0.05)
    hold_fixed_samples: int = 1_000
    hold_fixed_chunk: int = 2
    fidelity_images: int = 2_000
    n_boot: int = 1000
    device: str = "auto"
    seed: int = 0
    size: str = "full"

    # CPU size: 32 x 32 images (5,000), a small UNet (base 8: ~0.3 s per step of 32 images on one
    # shared core) and the small CNN; about 10 minutes on a 2-core CPU. The tests shrink it further.
    QUICK: ClassVar[dict[str, Any]] = dict(
        classifier_attributes=("Heavy_Makeup", "Pointy_Nose", "Rosy_Cheeks"), image_size=32, limit=5000,
        eval_limit=1000, preset="unet-small", overrides=(("base_channels", 8),), lr=2e-3, train_steps=1000,
        batch_size=32, ema_decay=None, classifier_arch="small-cnn", classifier_steps=300, classifier_batch_size=64,
        classifier_lr=3e-3, solver_steps=10, max_solver_steps=40, n_samples=500, jvp_batch_size=250,
        hold_fixed_samples=200, hold_fixed_chunk=25, fidelity_images=500, n_boot=200, device="cpu", size="quick")


def top_share(values: Any, fraction: float = 0.01) -> float:
    """Share of ``Σ v²`` carried by the largest ``ceil(fraction · n)`` values of ``v²`` (heavy tails)."""
    v2 = np.sort(np.asarray(values, dtype=np.float64).ravel() ** 2)[::-1]
    total = v2.sum()
    if v2.size == 0 or total <= 0:
        return float("nan")
    return float(v2[: max(1, math.ceil(fraction * v2.size))].sum() / total)


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def _check_config(config: AttributesConfig) -> tuple[str, str, str]:
    from ..datasets.celeba import celeba_attribute_indices

    if not config.celeba_root:
        raise ValueError("attributes needs --celeba-root: the CelebA folder (img_align_celeba/ and "
                         "list_attr_celeba.txt)")
    if len(tuple(config.pair)) != 2:
        raise ValueError(f"pair must name two attributes, got {config.pair!r}")
    triple = (config.common_cause, *config.pair)
    celeba_attribute_indices(list(triple))  # unknown names (close matches) or repeats
    if config.classifier_attributes is not None and not config.classifier_checkpoint:
        celeba_attribute_indices(list(config.classifier_attributes))
        missing = [a for a in triple if a not in config.classifier_attributes]
        if missing:
            raise ValueError(f"classifier_attributes {list(config.classifier_attributes)} must include {missing}")
    return triple  # type: ignore[return-value]


def _boot_pair(dy: torch.Tensor, config: AttributesConfig, statistic: str = "corr") -> dict[str, float]:
    from ..dependence import bootstrap

    if dy.shape[0] < 2:
        return {"estimate": float("nan"), "lower": float("nan"), "upper": float("nan"), "se": float("nan")}
    return bootstrap(dy, statistic=statistic, n_boot=config.n_boot, seed=config.seed).entry(1, 2)


def _label_stats(labels: torch.Tensor, config: AttributesConfig) -> dict[str, Any]:
    """Pearson correlation of the pair's 0/1 labels, overall and per stratum of the common cause."""
    y = labels.numpy().astype(np.float64)

    def corr_ci(rows: np.ndarray) -> dict[str, Any]:
        sub = y[rows]
        est = C.pearson(sub[:, 1], sub[:, 2])
        lo, hi = C.bootstrap_ci(lambda idx: C.pearson(sub[idx, 1], sub[idx, 2]), len(sub),
                                n_boot=min(config.n_boot, 200), seed=config.seed)
        return {"estimate": est, "ci95": [float(lo), float(hi)], "n": int(len(sub))}

    out = {"pair": corr_ci(np.arange(len(y))), "positive_rate": y.mean(0).tolist()}
    for v in (0, 1):
        rows = np.flatnonzero(y[:, 0] == v)
        out[f"pair_given_common_cause_{v}"] = corr_ci(rows) if len(rows) >= 3 else None
    return out


def _classifier_stats(logits: torch.Tensor) -> dict[str, Any]:
    """The classifier's view of a set of images: positive rates, mean logits, pair correlations."""
    s = logits.double().numpy()
    pred = (s > 0).astype(np.float64)
    return {"n": int(s.shape[0]), "predicted_positive_rate": pred.mean(0).tolist(),
            "mean_logit": s.mean(0).tolist(), "pair_corr_predicted_labels": C.pearson(pred[:, 1], pred[:, 2]),
            "pair_corr_logits": C.pearson(s[:, 1], s[:, 2])}


def _hypothesis_graphs(labels: torch.Tensor, dy: torch.Tensor, names: tuple[str, ...], config: AttributesConfig,
                       out: Path) -> dict[str, Any]:
    """Hypothesis graphs (Figure 4): PC on the 0/1 labels (chi-square) and JVP-PC on the responses.

    The JVP graph's CI test is the conditioned-JVP estimator (:func:`causal_delta.graphs.jvp_pc`,
    ``estimator="condition"``, the experiment's conditioning quantile, bootstrap p-values); both
    searches use ``alpha = 0.05`` and the triple's order. Writes ``graphs.png`` and ``graphs.dot``.
    """
    from ..graphs import jvp_pc, pc_labels, plot_graphs
    from ..graphs.result import edge_differences
    from ..report import write_text

    g_labels = pc_labels(labels.numpy().astype(np.int64), names, test="chisq", alpha=0.05)
    g_jvp = jvp_pc(dy, names, estimator="condition", alpha=0.05, quantile=config.condition_quantile,
                   n_boot=min(config.n_boot, 200), seed=config.seed)
    plot_graphs([("labels (PC, chi-square)", g_labels), ("generator (JVP-PC, conditioned)", g_jvp)],
                out / "graphs.png")
    write_text(out / "graphs.dot", g_labels.to_dot("labels") + "\n" + g_jvp.to_dot("generator"))
    return {"labels": g_labels.to_dict(), "generator": g_jvp.to_dict(),
            "differences": edge_differences(g_labels, g_jvp)}


def run_attributes(config: AttributesConfig, out_dir: str | os.PathLike | Path, *,
                   progress: bool = True) -> dict[str, Any]:
    """Train (or load) the flow and the classifier, estimate the triple's dependence, write the report."""
    from ..checkpoint import load_flow
    from ..classifier_training import ClassifierTrainConfig, load_classifier, train_classifier
    from ..datasets.celeba import load_celeba, load_celeba_labels
    from ..dependence import condition, hold_fixed_responses, threshold_sweep
    from ..jvp import attribute_jvp, make_probes
    from ..training import resolve_device

    triple = _check_config(config)
    out = C.prepare_output(out_dir)
    timer = C.Timer()
    device = resolve_device(config.device)
    S = config.image_size
    event = (3, S, S)

    with timer("labels"):
        labels, _ = load_celeba_labels(config.celeba_root, split="train", attributes=list(triple))

    with timer("train_flow"):
        if config.flow_checkpoint:
            flow, info = load_flow(config.flow_checkpoint, device=device)
            if tuple(info["event_shape"]) != event:
                raise ValueError(f"flow_checkpoint {config.flow_checkpoint} generates {tuple(info['event_shape'])} "
                                 f"images, image_size {S} needs {event}")
            losses = []
        else:
            flow, losses, _ = C.train_model(
                out, data="celeba", data_args={"root": str(config.celeba_root), "size": S, "limit": config.limit},
                preset=config.preset, model_args=dict(config.overrides), steps=config.train_steps, lr=config.lr,
                batch_size=config.batch_size, seed=config.seed, progress=progress, ema_decay=config.ema_decay,
                device=str(device))
        flow = flow.to(device).eval()

    with timer("train_classifier"):
        if config.classifier_checkpoint:
            clf_path = config.classifier_checkpoint
            clf_report = None
        else:
            clf_cfg = ClassifierTrainConfig(
                data="celeba", celeba_root=str(config.celeba_root),
                attributes=list(config.classifier_attributes) if config.classifier_attributes else None,
                image_size=S, limit=config.limit, eval_limit=config.eval_limit, arch=config.classifier_arch,
                weights_path=config.classifier_weights, steps=config.classifier_steps,
                batch_size=config.classifier_batch_size, lr=config.classifier_lr, seed=config.seed,
                out_dir=str(out / "classifier"), device=str(device))
            # not DDP: rank 0 trains (and writes the checkpoints) alone, then every rank loads it
            clf_report = C.on_main(lambda: train_classifier(clf_cfg, progress=progress).report)
            clf_path = out / "classifier"
        clf = load_classifier(clf_path, attributes=list(triple), device=device)
        try:
            with torch.no_grad():
                clf(torch.zeros(1, *event, device=device))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"classifier {clf_path} does not take {event} images: {exc}") from exc

    with C.seeded(config.seed + 1) as gen:
        x0 = torch.randn(config.n_samples, *event, generator=gen)
        z = make_probes(config.n_samples, event, probes=1, normalize=True, generator=gen)[:, 0]
    with timer("steps"):  # checked on the reported statistic: the correlation of the classifier's responses
        solver = choose_solver(flow, x0.to(device), z.to(device), method=config.method, steps=config.solver_steps,
                                 max_steps=config.max_solver_steps,
                                 subsample=config.check_samples, n_boot=config.n_boot, seed=config.seed,
                                 progress=progress, classifier=clf, batch_size=config.jvp_batch_size)
    method, steps = solver["method"], solver["steps"]
    with timer("jvp"):
        def jvp_block(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
            dys, gens, outs = [], [], []
            chunks = range(0, a.shape[0], config.jvp_batch_size)
            for s in C.progress(chunks, desc="attributes: JVP of classifier∘flow", enabled=progress):
                e = s + config.jvp_batch_size
                res = attribute_jvp(flow, a[s:e].to(device), b[s:e].to(device),
                                    classifier=clf, method=method, steps=steps,
                                    batch_size=config.jvp_batch_size)
                dys.append(res.responses.cpu())
                gens.append(res.samples.cpu())
                outs.append(res.outputs.cpu())
            return torch.cat(dys), torch.cat(gens), torch.cat(outs)

        dy, generated, gen_logits = C.split_rows(jvp_block, x0, z)  # under torchrun: this rank's pairs
        dy = dy.double()

    with timer("hold_fixed"):
        n_hf = min(config.hold_fixed_samples, config.n_samples)

        def hold_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            hfs = []
            for s in C.progress(range(0, a.shape[0], config.hold_fixed_chunk), desc="attributes: hold-fixed probes",
                                enabled=progress):
                e = s + config.hold_fixed_chunk
                res = hold_fixed_responses(flow, a[s:e].to(device), b[s:e].to(device), 0, classifier=clf,
                                           method=method, steps=steps,
                                           batch_size=config.hold_fixed_chunk)
                hfs.append(res.responses.cpu())
            return torch.cat(hfs)

        dy_hf = C.split_rows(hold_block, x0[:n_hf], z[:n_hf]).double()

    with timer("fidelity"):
        real = load_celeba(config.celeba_root, split="valid", attributes=list(triple), size=S,
                           limit=config.fidelity_images)
        with torch.no_grad():
            real_logits = torch.cat([clf(real.images[s: s + 256].to(device)).cpu()
                                     for s in range(0, len(real), 256)])

    with timer("statistics"):
        cond = condition(dy, 0, quantile=config.condition_quantile, n_boot=config.n_boot, seed=config.seed)
        cond_ci = cond.ci.entry(1, 2) if cond.ci is not None else {"estimate": float(cond.corr[1, 2])}
        sweep = threshold_sweep(dy, 0, (1, 2), quantiles=config.sweep_quantiles, n_boot=config.n_boot,
                                seed=config.seed)
        norms = dy.norm(dim=1, keepdim=True)
        keep = norms[:, 0] <= torch.quantile(norms[:, 0], 0.99)
        results: dict[str, Any] = {
            "attributes": {"common_cause": triple[0], "pair": list(triple[1:])},
            "empirical_labels": _label_stats(labels, config),
            "jvp": _boot_pair(dy, config),
            "jvp_centered": _boot_pair(dy, config, "centered_corr"),
            "conditioned": {**cond_ci, "quantile": config.condition_quantile, "threshold": cond.threshold,
                            "kept": cond.kept, "n": int(dy.shape[0])},
            "hold_fixed": {**_boot_pair(dy_hf, config), "n": int(dy_hf.shape[0]),
                           "residual_rms_ratio_common_cause": _rms(dy_hf[:, 0]) / max(_rms(dy[:n_hf, 0]), 1e-300)},
            "robust": {"row_normalised": _boot_pair(dy / norms.clamp_min(torch.finfo(norms.dtype).tiny), config),
                       "trimmed_top_1pct": _boot_pair(dy[keep], config)},
            "top_1pct_share_of_second_moment": {
                **{name: top_share(dy[:, c]) for c, name in enumerate(triple)},
                "pair_product": top_share((dy[:, 1] * dy[:, 2]).abs().sqrt())},
            "sweep": {k: getattr(sweep, k).tolist() for k in ("quantiles", "thresholds", "kept", "estimate",
                                                              "lower", "upper")},
            "fidelity": {"generated": _classifier_stats(gen_logits), "real_held_out": _classifier_stats(real_logits),
                         "label_positive_rate_train": labels.mean(0).tolist()},
            "classifier": {"path": str(clf_path), "held_out": (clf_report or {}).get("held_out")},
            "solver": solver,
            "flow": {"checkpoint": config.flow_checkpoint, "train_steps": len(losses),
                     "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else None},
        }
        results["graphs"] = _hypothesis_graphs(labels, dy, triple, config, out)
        results["headline"] = {"empirical": results["empirical_labels"]["pair"]["estimate"],
                               "jvp": results["jvp"]["estimate"], "conditioned": results["conditioned"]["estimate"],
                               "hold_fixed": results["hold_fixed"]["estimate"]}

    from ._attributes_report import figures as make_figures
    from ._attributes_report import summary

    figures = make_figures(out, results, real.images, generated, triple)
    return C.write_report(out, experiment="attributes", paper="Section 6.4, Table 6", config=config,
                          quick=config.size == "quick", results=results, published=PUBLISHED, timer=timer,
                          figures=figures, summary=summary(results, config))
