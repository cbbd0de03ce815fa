r"""Benchmarks whose causal graph is known: does the JVP estimator tell a fork, a chain and a
collider apart? (Issue 9, item 5; the paper's Section 6.4 could not.)

**Tabular twin.** Data from :class:`causal_delta.datasets.scm.SCM` (non-linear mechanisms,
non-Gaussian noise) over the graphs ``fork`` (A→B, A→C), ``chain`` (A→B→C), ``collider``
(A→C←B), ``independent`` and ``five`` (A→B, A→C, B→D←C, D→E). A flow is trained on the rows;
the read-out is the identity, so the responses ``Δy = J_f(x0) z`` are the attributes' own.

**Images.** Scenes (:mod:`causal_delta.datasets.scenes`: a soft disc whose size, hue and
brightness follow the SCM, background an independent nuisance) at ``image_size``². For each
seed a regression read-out ``C`` (small CNN) is trained ONCE on scenes whose attributes are
*independent* and uniform, so it cannot learn the SCM's correlations, and reused for every
graph. For each graph and seed a flow (MLP, x1-prediction) is trained on the SCM's scenes;
responses are ``Δy = J_{C∘f}(x0) z``. Seed ``s`` (an entry of ``image_seeds``) puts attribute
``s mod 3`` in the middle node, so across seeds 0, 1, 2 every attribute takes a turn as the
fork's root, the chain's middle and the collider's common effect (and the seeds can run as
separate processes: ``--set image_seeds=[1]``).

For every motif: data correlation and partial correlation given the middle node, JVP
correlation, conditioned (small ``|Δy_k|``, ``quantile``) and hold-fixed correlations with
bootstrap 95 % intervals, the verdict (conditioning must lower ``|Corr|`` for fork and chain and
raise it for the collider), whether the intervals separate, the same on per-sample normalised
responses, and the share of the second moment carried by the top 1 % of samples
(:mod:`._graph_verdicts`). Images add generator fidelity — the read-out's attribute means, stds
and correlations on generated vs training images — and the read-out's own error (R² on
held-out SCM scenes). Graphs: PC on the labels (Fisher-z) and JVP-PC (the conditioned JVP
correlation as CI test) against the true graph (SHD). Every flow also gets the memorisation
diagnostic (own-pair / nearest-copy ratio / Jacobian rank, :data:`MEMORISATION_ROWS`), one line
in ``summary.md``; every flow's solver and steps come from its own discretisation check (one line
in ``summary.md``, ``solver`` in its entry).

Under ``torchrun``: the flows train with DDP; each seed's read-out (not DDP-aware, it writes
checkpoints) is trained by rank 0 alone and broadcast; each rank integrates its block of the
samples for the responses (plain and held fixed, JVP-PC's included), the generated samples and
the memorisation diagnostic; every rank then runs the estimators and searches on the gathered
responses, and rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from . import _common as C
from . import _known_graphs_responses as R
from ._checks import choose_solver, memorisation_check

__all__ = ["KnownGraphsConfig", "run_known_graphs", "role_assignment", "MEMORISATION_ROWS"]

MEMORISATION_ROWS = 2000
"""Rows of the reference draw that the memorisation diagnostic compares generated samples with.

The flows here see fresh SCM draws at every step (no finite training set), so the diagnostic
(:func:`._checks.memorisation_check`) compares them with a reference draw instead: copies of it
would mean a collapse onto few modes, and its leave-one-out ratio is the real-data baseline."""


@dataclass
class KnownGraphsConfig(C.SizedConfig):
    """Settings of ``reproduce known-graphs`` (defaults: the full size, ≤ 30 min on 2 CPU cores).

    Attributes:
        tabular_graphs, tabular_seeds: graphs (names or specs) and seeds of the tabular twin.
        mechanism, noise, strength: the SCM (:class:`causal_delta.datasets.scm.SCM`).
        n_rows: rows of data for the data correlations and PC on labels.
        tabular_preset, tabular_steps, tabular_lr, tabular_batch: the tabular flow (AdamW).
        tabular_probes: ``(x0, z)`` pairs for the tabular responses.
        image_graphs, image_seeds: 3-node graphs and seeds of the image benchmark.
        attributes: the three scene attributes (read-out columns); nuisance: independent ones.
        image_size: scene side in pixels.
        image_preset, image_overrides, parametrization, image_steps, image_lr, image_batch,
            ema_decay: the image flow.
        readout_train, readout_steps, readout_width, readout_batch, readout_lr: the read-out (small CNN,
            regression head, :func:`causal_delta.classifier_training.train_classifier`) and its
            number of independent training scenes (10 % held out for its R²).
        image_rows: SCM scenes rendered for the data correlations and the fidelity statistics.
        image_probes: ``(x0, z)`` pairs for the image responses; hold_fixed_samples: of them,
            how many get hold-fixed probes (one reverse pass through the solver each).
        method, solver_steps: the ODE solver of each flow (its responses, hold-fixed probes, samples and
            memorisation diagnostic). ``"auto"`` (default) chooses solver and steps per flow with
            :func:`causal_delta.discretisation.choose_steps` on that flow's own statistic — the
            correlation of its responses (identity read-out for the tabular twin, the scene read-out
            for images) on its ``(x0, z)`` — doubling the steps from ``solver_steps`` until the
            half-steps check passes; a solver name uses ``solver_steps`` as given. Either way each
            flow's check is reported (``solver`` in its entry, one line in summary.md).
        max_solver_steps: the most steps ``"auto"`` may choose (the doubling stops there; when no solver
            passes by then the closest check is used and the summary says so). The quick image flow
            (x1-prediction, 60 training steps) does not pass below 512 RK4 steps: its velocity
            ``(x̂1 - x) / max(1 - t, 1e-3)`` is stiff near ``t = 1``.
        check_samples: paired samples recomputed at half the steps by each check.
        quantile: kept fraction when conditioning on small ``|Δy_k|``.
        n_boot: bootstrap replicates; alpha: PC significance level.
        memorisation: run the memorisation diagnostic on every flow (the summary's one line);
            about a fifth of the quick run's time.
        seed: offset added to every seed; size: ``"full"`` or ``"quick"``.
    """

    tabular_graphs: tuple = ("fork", "chain", "collider", "independent", "five")
    tabular_seeds: tuple = (0, 1, 2)
    mechanism: str = "mixed"
    noise: str = "mixed"
    strength: float = 1.0
    n_rows: int = 20_000
    tabular_preset: str = "mlp-small"
    tabular_steps: int = 1000
    tabular_lr: float = 1e-3
    tabular_batch: int = 256
    tabular_probes: int = 2000
    image_graphs: tuple = ("fork", "chain", "collider")
    image_seeds: tuple = (0, 1, 2)
    attributes: tuple = ("size", "hue", "brightness")
    nuisance: tuple = ("background",)
    image_size: int = 32
    image_preset: str = "mlp-small"
    image_overrides: tuple = (("hidden", 256), ("depth", 3), ("time_embed", 32))
    parametrization: str = "x1"
    image_steps: int = 1000
    image_lr: float = 1e-3
    image_batch: int = 64
    ema_decay: float | None = 0.999
    readout_train: int = 6000
    readout_steps: int = 400
    readout_width: int = 8
    readout_batch: int = 64
    readout_lr: float = 2e-3
    image_rows: int = 3000
    image_probes: int = 1000
    hold_fixed_samples: int = 400
    method: str = "auto"
    solver_steps: int = 12
    check_samples: int = 256
    max_solver_steps: int = 96
    quantile: float = 0.05
    n_boot: int = 1000
    alpha: float = 0.01
    memorisation: bool = True
    seed: int = 0
    size: str = "full"

    # CI size (< 60 s on a CPU): one tabular seed, one image graph at 16x16, a few steps.
    QUICK: ClassVar[dict[str, Any]] = dict(
        tabular_graphs=("fork", "five"), tabular_seeds=(0,), n_rows=5000, tabular_steps=300, tabular_probes=1000,
        image_graphs=("fork",), image_seeds=(0,), image_size=16, image_steps=60,
        image_overrides=(("hidden", 64), ("depth", 2), ("time_embed", 16)), readout_steps=60, readout_width=8,
        readout_train=600, image_rows=1000, image_probes=128, hold_fixed_samples=32, solver_steps=8, n_boot=100,
        max_solver_steps=32, size="quick")


def role_assignment(dag, attributes, seed: int) -> tuple[tuple[str, ...], str]:
    """Scene attributes in the DAG's node order, the middle node getting ``attributes[seed % 3]``.

    Returns ``(assignment, middle_attribute)``.
    """
    from ._graph_verdicts import middle_node

    _, i, j, k = middle_node(dag)
    m = len(attributes)
    if m != 3:
        raise ValueError(f"attributes must name three scene attributes, got {list(attributes)}")
    role = {k: attributes[seed % 3], i: attributes[(seed + 1) % 3], j: attributes[(seed + 2) % 3]}
    return tuple(role[v] for v in dag.nodes), role[k]


def _train_flow(out: Path, *, data: str, data_args: dict, preset: str, overrides, steps: int, lr: float,
                batch: int, seed: int, parametrization: str = "velocity", ema_decay=None, progress: bool):
    from ..training import TrainConfig, train

    cfg = TrainConfig(data=data, data_args=data_args, preset=preset, model_args=dict(overrides), steps=steps,
                      batch_size=batch, lr=lr, lr_schedule="cosine", ema_decay=ema_decay,
                      parametrization=parametrization, seed=seed, out_dir=str(out / "train"), device="cpu",
                      keep_checkpoints=1)
    res = train(cfg, progress=progress)
    return res.flow.eval(), res.losses


def _graph_entry(dag, names, dy, data, config, hold=None, seed=0, oracle=None) -> dict[str, Any]:
    """Verdicts (3-node motifs), independence summary, PC on labels and JVP-PC for one graph.

    JVP-PC runs with ``estimator="condition"`` on ``dy`` and, when a ``ResponseOracle`` is given,
    with ``estimator="hold_fixed"`` too.
    """
    from ..graphs import shd, skeleton_shd
    from ..graphs.jvp_pc import jvp_pc
    from ..graphs.pc import pc_labels
    from . import _graph_verdicts as V

    entry: dict[str, Any] = {"graph": dag.spec(), "nodes": list(names)}
    if len(dag.nodes) == 3 and len(dag.edges) == 2:
        kind, i, j, k = V.middle_node(dag)
        entry["motif"] = V.triple_verdict(kind, names, (i, j, k), dy, hold, data=data, quantile=config.quantile,
                                          n_boot=config.n_boot, seed=seed)
    elif not dag.edges:
        entry["independence"] = V.independence_summary(names, dy, data=data, n_boot=config.n_boot, seed=seed)

    def graph(g) -> dict[str, Any]:
        return {"shd": shd(g, dag), "skeleton_shd": skeleton_shd(g, dag), "graph": g.pdag().to_dict()}

    if data is not None:
        entry["pc_labels"] = graph(pc_labels(np.asarray(data, dtype=np.float64), list(names), test="fisherz",
                                             alpha=config.alpha))
    kw = dict(alpha=config.alpha, n_boot=min(config.n_boot, 500), seed=seed)
    entry["jvp_pc"] = graph(jvp_pc(dy, list(names), estimator="condition", quantile=config.quantile, **kw))
    if oracle is not None:
        entry["jvp_pc_hold_fixed"] = graph(jvp_pc(oracle, list(names), estimator="hold_fixed", **kw))
    return entry


def _run_tabular(config: KnownGraphsConfig, out: Path, progress: bool, timer) -> list[dict[str, Any]]:
    from ..datasets.scm import SCM, resolve_graph
    from ..graphs import KNOWN_GRAPHS
    from ._graph_verdicts import middle_node

    rows = []
    for gi, graph in enumerate(config.tabular_graphs):
        dag = resolve_graph(graph)
        for s in config.tabular_seeds:
            seed = config.seed + s
            args = {"graph": graph, "seed": seed, "mechanism": config.mechanism, "noise": config.noise,
                    "strength": config.strength}
            scm = SCM(**args)
            name = f"{graph if graph in KNOWN_GRAPHS else f'graph{gi}'}_s{seed}"
            with timer("tabular_train"):
                flow, losses = _train_flow(out / "tabular" / name, data="scm", data_args=args,
                                           preset=config.tabular_preset, overrides=(), steps=config.tabular_steps,
                                           lr=config.tabular_lr, batch=config.tabular_batch, seed=seed,
                                           progress=progress)
            data = scm.sample(config.n_rows, torch.Generator().manual_seed(10_000 + seed))
            with C.seeded(seed + 1) as gen:
                x0 = torch.randn(config.tabular_probes, scm.dim, generator=gen)
                z = torch.randn(config.tabular_probes, 1, scm.dim, generator=gen)
            with timer("tabular_solver"):  # identity read-out: the statistic is the responses' correlation
                solver = _choose_solver(flow, x0, z, config, seed, progress, batch_size=1024)
            method, steps = solver["method"], solver["steps"]
            with timer("tabular_estimators"):
                # identity read-out; hold-fixed gradients by forward mode (d is small)
                oracle = R.split_oracle(flow, x0, z, features=list(range(scm.dim)), method=method,
                                         steps=steps, gradient_mode="forward", batch_size=1024)
                dy = oracle.responses()
                hold = None
                if len(dag.nodes) == 3 and len(dag.edges) == 2:
                    hold = oracle.responses((scm.index(middle_node(dag)[3]),))
                entry = _graph_entry(dag, scm.names, dy, data, config, hold=hold, seed=seed, oracle=oracle)
            samples = R.generate(flow, x0, method, steps)
            memorisation = None
            if config.memorisation:
                with timer("tabular_memorisation"):
                    memorisation = memorisation_check(
                        flow, data[:MEMORISATION_ROWS].float(), out / "tabular" / name / "memorisation",
                        method=method, steps=steps, seed=seed, n_fresh=1000)
            entry.update(level="tabular", name=graph, seed=seed, final_loss=float(np.mean(losses[-100:])),
                         generated_corr=_corr(samples), data_corr_matrix=_corr(data), memorisation=memorisation,
                         solver=solver)
            rows.append(entry)
    return rows


def _choose_solver(flow, x0, z, config: KnownGraphsConfig, seed: int, progress: bool, **readout) -> dict[str, Any]:
    """One flow's solver and steps (:func:`._checks.choose_solver`) on its own ``(x0, z)`` and read-out."""
    return choose_solver(flow, x0, z, method=config.method, steps=config.solver_steps,
                           max_steps=config.max_solver_steps,
                           subsample=config.check_samples, n_boot=config.n_boot, seed=seed,
                           progress=progress, **readout)


def _corr(x) -> list:
    """Pearson correlation matrix of the columns (:func:`causal_delta.dependence.correlation`)."""
    from ..dependence import correlation

    return correlation(torch.as_tensor(np.asarray(x, dtype=np.float64)), centered=True).tolist()


def _stats(y) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.float64)
    return {"mean": y.mean(0).tolist(), "std": y.std(0).tolist(), "corr": _corr(y)}


def _run_images(config: KnownGraphsConfig, out: Path, progress: bool, timer) -> tuple[list[dict], dict]:
    from ..datasets.scenes import SceneSource
    from ..datasets.scm import resolve_graph
    from ..graphs import DAG
    from ._known_graphs_readout import fit_readout

    attrs = tuple(config.attributes)
    rows, samples = [], {}
    for s in config.image_seeds:
        seed = config.seed + s
        indep = SceneSource("independent", attrs, independent=True, nuisance=config.nuisance,
                            image_size=config.image_size, seed=seed)
        with timer("images_readout"):  # not DDP (it writes checkpoints): rank 0 trains, every rank gets it
            readout, readout_info = C.on_main(
                partial(fit_readout, indep, config, seed, out / "images" / f"readout_s{seed}", progress))
        for graph in config.image_graphs:
            dag = resolve_graph(graph)
            assign, middle = role_assignment(dag, attrs, s)
            args = {"graph": graph, "attributes": list(assign), "seed": seed, "mechanism": config.mechanism,
                    "noise": config.noise, "strength": config.strength, "nuisance": list(config.nuisance),
                    "image_size": config.image_size}
            src = SceneSource(**args)
            name = f"{graph}_s{seed}"
            with timer("images_train"):
                flow, losses = _train_flow(out / "images" / name, data="scenes", data_args=args,
                                           preset=config.image_preset, overrides=config.image_overrides,
                                           steps=config.image_steps, lr=config.image_lr, batch=config.image_batch,
                                           seed=seed, parametrization=config.parametrization,
                                           ema_decay=config.ema_decay, progress=progress)
            real, u = src.sample_labelled(config.image_rows, torch.Generator().manual_seed(10_000 + seed))
            u = u[:, [assign.index(a) for a in attrs]].double()  # label columns in read-out order
            with torch.no_grad():
                pred = torch.cat([readout(real[b: b + 500]) for b in range(0, len(real), 500)]).double()
            with C.seeded(seed + 1) as gen:
                x0 = torch.randn(config.image_probes, *src.event_shape, generator=gen)
                z = torch.randn(config.image_probes, *src.event_shape, generator=gen)
            k = attrs.index(middle)
            nh = min(config.hold_fixed_samples, config.image_probes)
            with timer("images_solver"):  # the statistic: the correlation of the read-out's responses
                solver = _choose_solver(flow, x0, z, config, seed, progress, classifier=readout)
            method, steps = solver["method"], solver["steps"]
            with timer("images_jvp"):  # under torchrun: this rank's (x0, z) pairs, then gathered
                dy, outputs, generated = C.split_rows(partial(R.image_responses, flow, readout, method, steps), x0, z)
            with timer("images_hold_fixed"):
                hold = C.split_rows(partial(R.image_responses, flow, readout, method, steps, hold=k), x0[:nh], z[:nh])
            rename = dict(zip(dag.nodes, assign))
            true = DAG(attrs, [(rename[a], rename[b]) for a, b in dag.edges])  # over the read-out's columns
            with timer("images_estimators"):
                entry = _graph_entry(true, attrs, dy, u, config, hold=hold, seed=seed)
            memorisation = None
            if config.memorisation:
                with timer("images_memorisation"):
                    memorisation = memorisation_check(
                        flow, real[:MEMORISATION_ROWS], out / "images" / name / "memorisation",
                        method=method, steps=steps, seed=seed, n_fresh=500)
            gen_out = outputs.double()
            r2 = 1 - ((pred - u) ** 2).mean(0) / u.var(0)
            gap = np.abs(np.array(_corr(gen_out)) - np.array(_corr(pred)))
            entry.update(level="images", name=graph, seed=seed, assignment=rename,
                         final_loss=float(np.mean(losses[-100:])), readout=readout_info, readout_r2_scm=r2.tolist(),
                         memorisation=memorisation, solver=solver,
                         fidelity={"labels": _stats(u), "readout_on_training_images": _stats(pred),
                                   "readout_on_generated": _stats(gen_out), "corr_gap_max": float(gap.max()),
                                   "std_ratio_generated_vs_training": (gen_out.std(0) / pred.std(0)).tolist()})
            rows.append(entry)
            samples[name] = (real[:8], generated[:8])
    return rows, samples


def _validate(config: KnownGraphsConfig) -> None:
    """Fail fast (before any training) on graphs, attributes and sizes that cannot run."""
    from ..datasets.scenes import ATTRIBUTES
    from ..datasets.scm import MECHANISMS, NOISES, resolve_graph
    from ._graph_verdicts import middle_node

    for g in config.tabular_graphs:
        resolve_graph(g)
    for g in config.image_graphs:
        try:
            middle_node(resolve_graph(g))
        except ValueError as exc:
            raise ValueError(f"image_graphs: {exc}") from None
    if len(config.attributes) != 3 or len(set(config.attributes)) != 3 or not set(config.attributes) <= set(ATTRIBUTES):
        raise ValueError(f"attributes must be three distinct names among {list(ATTRIBUTES)}, "
                         f"got {list(config.attributes)}")
    bad = [a for a in config.nuisance if a not in ATTRIBUTES or a in config.attributes]
    if bad:
        raise ValueError(f"nuisance must name other scene attributes among {list(ATTRIBUTES)}, got {bad}")
    if config.mechanism not in MECHANISMS or config.noise not in NOISES:
        raise ValueError(f"mechanism must be one of {MECHANISMS} and noise one of {NOISES}, "
                         f"got {config.mechanism!r}, {config.noise!r}")
    if not 0.0 < config.quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {config.quantile!r}")


def run_known_graphs(config: KnownGraphsConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Run the tabular twin and the image benchmark; write ``report.json``, ``summary.md`` and PNGs."""
    from ._known_graphs_report import figures, headline, summary_markdown

    _validate(config)
    out = C.prepare_output(out_dir)
    timer = C.Timer()
    tabular = _run_tabular(config, out, progress, timer)
    images, samples = [], {}
    if config.image_graphs and config.image_seeds:
        images, samples = _run_images(config, out, progress, timer)
    with timer("figures"):
        figs = figures(out, tabular, images, samples)
    results = {"tabular": tabular, "images": images, "headline": headline(tabular, images)}
    return C.write_report(out, experiment="known-graphs", paper="issue 9 (known-graph benchmarks)", config=config,
                          quick=config.size == "quick", results=results, published=None, timer=timer, figures=figs,
                          summary=summary_markdown(tabular, images))
