"""Held-out metrics of read-outs: accuracy and ROC-AUC (binary), R² and RMSE (regression)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .models.readout import HEADS

__all__ = ["roc_auc", "evaluate_classifier"]


def roc_auc(scores: Any, labels: Any) -> float:
    r"""Area under the ROC curve, ``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`` (Mann–Whitney U with mid-ranks).

    Args:
        scores: ``(n,)`` real scores (higher means class 1).
        labels: ``(n,)`` in {0, 1}.

    Returns:
        The AUC in [0, 1], or NaN when only one class is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mid-ranks of tie groups, 1-based
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def evaluate_classifier(classifier: nn.Module, images: Tensor, targets: Tensor, *, head: str = "binary",
                        attributes: Sequence[str] | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Held-out metrics of ``classifier`` (eval mode, no gradients) on ``images`` / ``targets`` (N, m).

    Returns:
        ``{"n", "head", "per_attribute": {name: {...}}, "mean": {...}}``: accuracy, ROC-AUC and
        positive rate (binary) or R² and RMSE (regression) per attribute, and their means.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    was_training = classifier.training
    classifier.eval()
    device = next((p.device for p in classifier.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = torch.cat([classifier(images[s: s + batch_size].to(device)).float().cpu()
                         for s in range(0, images.shape[0], batch_size)])
    classifier.train(was_training)
    y = targets.float()
    if out.shape != y.shape:
        raise ValueError(f"classifier outputs {tuple(out.shape[1:])} per image, the targets have {tuple(y.shape[1:])}")
    names = list(attributes) if attributes is not None else [f"attr_{k}" for k in range(y.shape[1])]
    per: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        o, t = out[:, k].double(), y[:, k].double()
        if head == "binary":
            per[name] = {"accuracy": float(((o > 0).double() == t).double().mean()),
                         "roc_auc": roc_auc(o.numpy(), t.numpy()), "positive_rate": float(t.mean())}
        else:
            ss_tot = float(((t - t.mean()) ** 2).sum())
            ss_res = float(((t - o) ** 2).sum())
            per[name] = {"r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
                         "rmse": math.sqrt(ss_res / t.numel())}
    keys = ("accuracy", "roc_auc") if head == "binary" else ("r2", "rmse")
    mean = {k: float(np.nanmean([v[k] for v in per.values()])) if any(math.isfinite(v[k]) for v in per.values())
            else float("nan") for k in keys}
    return {"n": int(y.shape[0]), "head": head, "per_attribute": per, "mean": mean}


def _summary(report: dict[str, Any]) -> str:
    from .experiments._common import markdown_table

    ev = report["held_out"]
    cols = ["accuracy", "roc_auc"] if ev["head"] == "binary" else ["r2", "rmse"]
    rows = [[name, *[v[c] for c in cols]] for name, v in ev["per_attribute"].items()]
    rows.append(["**mean**", *[ev["mean"][c] for c in cols]])
    return "\n".join([
        f"# classifier ({report['arch']}, {ev['head']} head)", "",
        f"{report['step']} steps on {report['n_train']} training examples from {report['source']}; "
        f"held-out set of {ev['n']}; {report['seconds']:.1f} s on {report['device']}.", "",
        markdown_table(["attribute", *cols], rows), "",
    ])
