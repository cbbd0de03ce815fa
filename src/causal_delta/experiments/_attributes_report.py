"""The figures and ``summary.md`` of ``reproduce attributes`` (:mod:`.attributes`), from its results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import _common as C
from .attributes import PUBLISHED

if TYPE_CHECKING:
    from .attributes import AttributesConfig

__all__ = ["figures", "summary"]


def figures(out: Path, results: dict[str, Any], real: torch.Tensor, generated: torch.Tensor,
             triple: tuple[str, ...]) -> list[str]:
    from ..datasets.images import to_unit_range
    from ..report import new_figure, save_figure

    sw = results["sweep"]
    fig, ax = new_figure(figsize=(6, 4))
    kept = np.asarray(sw["kept"], dtype=float) / results["conditioned"]["n"]
    ax.plot(kept, sw["estimate"], "o-", label=f"conditioned on small |Δy| of {triple[0]}")
    ax.fill_between(kept, np.asarray(sw["lower"], float), np.asarray(sw["upper"], float), alpha=0.25)
    for key, style, label in (("hold_fixed", "--", "hold-fixed probes"), ("jvp", ":", "JVP (all samples)")):
        ax.axhline(results[key]["estimate"], ls=style, color="k" if key == "jvp" else "C2", label=label)
    ax.axhline(results["empirical_labels"]["pair"]["estimate"], ls="-.", color="C3", label="labels (empirical)")
    ax.set_xscale("log")
    ax.set_xlabel("kept fraction")
    ax.set_ylabel(f"Corr({triple[1]}, {triple[2]})")
    ax.legend(fontsize=7)
    save_figure(fig, out / "sweep.png")
    n_show = min(8, real.shape[0], generated.shape[0])
    fig, axes = new_figure(2, n_show, figsize=(1.3 * n_show, 2.8), squeeze=False)
    for j in range(n_show):
        for row, imgs in enumerate((real, generated)):
            axes[row][j].imshow(to_unit_range(imgs[j]).permute(1, 2, 0).numpy())
            axes[row][j].set_xticks([])
            axes[row][j].set_yticks([])
    axes[0][0].set_ylabel("real")
    axes[1][0].set_ylabel("generated")
    save_figure(fig, out / "samples.png")
    return ["sweep.png", "samples.png", "graphs.png"]


def summary(results: dict[str, Any], config: AttributesConfig) -> str:
    k, (i, j) = results["attributes"]["common_cause"], results["attributes"]["pair"]
    emp = results["empirical_labels"]

    def ci(d: dict[str, Any]) -> str:
        return C.fmt([d.get("lower"), d.get("upper")]) if "lower" in d else C.fmt(d.get("ci95"))

    rows = [
        [f"empirical: labels, Corr({i}, {j})", emp["pair"]["estimate"], ci(emp["pair"]), PUBLISHED["empirical"]],
        [f"empirical given {k} = 0 / 1",
         f"{C.fmt((emp['pair_given_common_cause_0'] or {}).get('estimate'))} / "
         f"{C.fmt((emp['pair_given_common_cause_1'] or {}).get('estimate'))}", "", ""],
        ["JVP (uncentred, all samples)", results["jvp"]["estimate"], ci(results["jvp"]), PUBLISHED["jvp"]],
        ["JVP centred (the original code's np.corrcoef)", results["jvp_centered"]["estimate"],
         ci(results["jvp_centered"]), ""],
        [f"conditioned on small |Δy_{k}| (kept {results['conditioned']['kept']} of {results['conditioned']['n']})",
         results["conditioned"]["estimate"], ci(results["conditioned"]), PUBLISHED["jvp_conditioned_small_J19"]],
        [f"hold-fixed probes ({results['hold_fixed']['n']} samples)", results["hold_fixed"]["estimate"],
         ci(results["hold_fixed"]), ""],
        ["robust: rows normalised", results["robust"]["row_normalised"]["estimate"],
         ci(results["robust"]["row_normalised"]), ""],
        ["robust: top 1 % of rows trimmed", results["robust"]["trimmed_top_1pct"]["estimate"],
         ci(results["robust"]["trimmed_top_1pct"]), ""],
    ]
    table = C.markdown_table(["estimate", "value", "95% CI", "paper"], rows)
    fid = results["fidelity"]
    fid_rows = [[name, fid["label_positive_rate_train"][c], fid["real_held_out"]["predicted_positive_rate"][c],
                 fid["generated"]["predicted_positive_rate"][c]] for c, name in enumerate((k, i, j))]
    fid_rows.append([f"Corr({i}, {j}) of predicted labels", emp["pair"]["estimate"],
                     fid["real_held_out"]["pair_corr_predicted_labels"],
                     fid["generated"]["pair_corr_predicted_labels"]])
    fid_table = C.markdown_table(
        ["generator fidelity", "labels (train)", "classifier on real", "classifier on generated"], fid_rows)
    tails = ", ".join(f"{name} {C.fmt(v, 3)}" for name, v in results["top_1pct_share_of_second_moment"].items())
    clf = results["classifier"]["held_out"]
    clf_line = (f"Classifier held-out mean accuracy {C.fmt(clf['mean']['accuracy'])}, ROC-AUC "
                f"{C.fmt(clf['mean']['roc_auc'])} ({clf['n']} images)." if clf else
                f"Classifier loaded from {results['classifier']['path']}.")
    return "\n".join([
        f"Triple: common cause {k}, pair {i} & {j}; {config.n_samples} samples, {config.image_size}x"
        f"{config.image_size} images, one unit-norm Gaussian probe per sample.", "", table, "", fid_table, "",
        f"Share of the second moment carried by the top 1 % of samples: {tails}.", "", clf_line,
        _graph_line(results["graphs"]), "", results["solver"]["line"], ""])


def _graph_line(graphs: dict[str, Any]) -> str:
    def edges(g: dict[str, Any]) -> str:
        marks = [f"{a}->{b}" for a, b in g["directed"]] + [f"{a}--{b}" for a, b in g["undirected"]]
        return ", ".join(marks) or "no edges"

    diff = "; ".join(f"{d['pair'][0]}/{d['pair'][1]}: labels '{d['a']}' vs generator '{d['b']}'"
                     for d in graphs["differences"]) or "none"
    return (f"Hypothesis graphs (graphs.png): labels (PC, chi-square) {edges(graphs['labels'])}; generator "
            f"(JVP-PC, conditioned) {edges(graphs['generator'])}. Differences: {diff}.")
