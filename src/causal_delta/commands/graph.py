"""``causal-delta graph``: the generator's graph (PC whose CI test is the JVP estimator) beside the labels' graph.

Writes under ``--out``: ``report.json`` (both graphs, every CI test with its statistic and p-value,
the settings), ``graphs.dot`` (two digraphs), ``graphs.png`` (side by side, differing edges in red)
and ``summary.md`` (the edges where the graphs differ).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "GraphConfig", "add_arguments", "outputs", "run"]

HELP = "causal graph of a trained flow (PC with the JVP CI test) beside PC on labels"
DESCRIPTION = (
    "Run PC (causal-learn; pip install causal-delta[graph]) with the JVP estimator as its "
    "conditional-independence test: X ⟂ Y | Z is the uncentred correlation of Δy_X and Δy_Y on "
    "the samples with small Δy_Z (--estimator condition) or with probes held orthogonal to "
    "∇(C_Z∘f) (--estimator hold_fixed), with a bootstrap p-value. Without --classifier the "
    "read-out is the identity (tabular data: attributes are the data coordinates, named from the "
    "training CSV's header, else x0, x1, ...). The labels' graph comes from --labels (.npy, .csv "
    "with header, or a CelebA folder / list_attr_celeba.txt) or, for tabular flows, from the "
    "training data file."
)


@dataclass(kw_only=True)
class GraphConfig(FlowSource):
    """The options of ``causal-delta graph``."""

    classifier: str | None = option(None, help="attribute classifier checkpoint (read-out C)")
    attributes: tuple[str, ...] | None = option(None, nargs="+", metavar="NAME",
                                                 help="attribute names or indices, space- or comma-separated "
                                                      "(default: all read-out outputs)")
    labels: str | None = option(None, help=".npy / .csv (header row = names) labels, or a CelebA folder or "
                                           "list_attr_celeba.txt (default for tabular flows: the training data file)")
    test: Literal["auto", "chisq", "gsq", "fisherz"] = option(
        "auto", help="CI test of the labels' PC (auto: chisq for integer labels, else fisherz)")
    estimator: Literal["condition", "hold_fixed"] = option("condition", help="the JVP conditional-independence test")
    alpha: float = option(0.05, help="significance level of both PCs")
    depth: int = option(-1, help="largest conditioning set (-1: unbounded)")
    quantile: float = option(0.05, help="kept fraction when conditioning on small responses")
    n_boot: int = option(200, help="bootstrap replicates per CI test")
    n_samples: int = option(2000, short="-n", help="source samples x0")
    probes: int = option(1, help="probe directions per sample")
    solver: Literal["euler", "midpoint", "rk4"] = option("rk4", help="ODE solver")
    steps: int = option(50, help="solver steps")
    dtype: Literal["float32", "float64"] = option("float32", help="precision of the flow and the JVP")
    batch_size: int = option(256, help="samples per batch")
    seed: int = option(0, help="seed of x0, probes and the bootstrap")
    ema: bool = option(True, help="use the EMA weights (--no-ema: the raw weights)")
    out: str = option("runs/graph", help="output directory")


CONFIG = GraphConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def _csv_header(path) -> list[str] | None:
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return None
    with open(path) as fh:
        first = fh.readline().strip()
    cells = [c.strip() for c in first.split(",")]
    try:
        [float(c) for c in cells]
        return None
    except ValueError:
        return cells


def _resolve_attributes(spec: tuple[str, ...] | None, known: list[str]) -> list[int]:
    if spec is None:
        idx = list(range(len(known)))
    else:
        idx = []
        for tok in spec:
            if tok in known:
                idx.append(known.index(tok))
            elif tok.lstrip("-").isdigit():
                k = int(tok)
                if not 0 <= k < len(known):
                    raise ValueError(f"--attributes index {k} must lie in [0, {len(known)})")
                idx.append(k)
            else:
                raise ValueError(f"--attributes: unknown attribute {tok!r}; known attributes are {known}")
    if len(idx) < 2 or len(set(idx)) != len(idx):
        raise ValueError(f"--attributes must name at least 2 distinct attributes, got {','.join(spec or ())!r}")
    return idx


def _load_readout(path: str, use_ema: bool):
    """``(module, all attribute names or None, info)`` of a classifier checkpoint."""
    # classifier_training.load_classifier: H1's loader for its classifier checkpoints;
    # TODO(lead): keep only one loader once merged
    from ..checkpoint import load_checkpoint
    from ..classifier_training import load_classifier

    if "classifier_config" in load_checkpoint(path).meta:
        clf = load_classifier(path)
        return clf, list(clf.attributes), {"path": str(path), "loader": "classifier_training.load_classifier"}
    from .jvp import _load_classifier

    clf, info, names = _load_classifier(path, use_ema)
    return clf, (list(names) if names else None), info


def _select(module, idx: list[int]):
    """The read-out restricted to outputs ``idx`` (keeps a hand-written ``forward_jvp``)."""
    import torch

    class Select(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module
            self.register_buffer("idx", torch.tensor(idx), persistent=False)

        def forward(self, x):
            return self.inner(x)[:, self.idx]

    class SelectJVP(Select):  # a subclass, so that hasattr(sel, "forward_jvp") mirrors the module
        def forward_jvp(self, x, dx):
            y, dy = self.inner.forward_jvp(x, dx)
            return y[:, self.idx], dy[:, self.idx]

    sel = SelectJVP() if hasattr(module, "forward_jvp") else Select()
    return sel.eval()


def _load_labels(path: str, all_names: list[str], idx: list[int]):
    """Labels ``(N, len(idx))`` of the selected attributes and a description of the source."""
    from pathlib import Path

    import numpy as np

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"--labels not found: {p}")
    names = [all_names[i] for i in idx]
    if p.is_dir() or p.name == "list_attr_celeba.txt":
        try:
            from ..datasets.celeba import load_celeba_labels
        except ImportError:  # TODO(lead): H1's CelebA loader; until it is merged only .npy / .csv work
            raise ValueError("--labels: CelebA folders need causal_delta.datasets.celeba, which this build "
                             "lacks; pass the labels as .npy or .csv") from None
        labels, _ = load_celeba_labels(p if p.is_dir() else p.parent, attributes=names)
        return labels.numpy(), f"CelebA attributes in {p}"
    header = _csv_header(p)
    if header is not None:
        missing = [n for n in names if n not in header]
        if missing:
            raise ValueError(f"--labels: columns {missing} are not in the header of {p} ({header})")
        arr = np.genfromtxt(p, delimiter=",", skip_header=1, dtype=np.float64).reshape(-1, len(header))
        return arr[:, [header.index(n) for n in names]], str(p)
    from ..datasets.tabular import load_array

    arr = load_array(p).double().numpy()
    if arr.ndim != 2:
        raise ValueError(f"--labels must be a 2-D table (rows x attributes), got shape {arr.shape} from {p}")
    if arr.shape[1] == len(all_names):
        return arr[:, idx], str(p)
    if arr.shape[1] == len(idx):
        return arr, str(p)
    raise ValueError(f"--labels {p} has {arr.shape[1]} columns; expected {len(all_names)} (every attribute) "
                     f"or {len(idx)} (the selected ones)")


def _summary(rep: dict) -> str:
    j, lab = rep["jvp_graph"], rep["labels_graph"]

    def edges(g: dict) -> str:
        out = [f"{a} -> {b}" for a, b in g["directed"]] + [f"{a} -- {b}" for a, b in g["undirected"]]
        out += [f"{a} <-> {b}" for a, b in g["bidirected"]]
        return ", ".join(out) or "(none)"

    lines = ["# causal-delta graph", "",
             f"Attributes: {', '.join(rep['attributes'])}; {rep['n_responses']} responses; "
             f"estimator {j['settings']['estimator']}"
             + (f" (kept fraction {j['settings']['quantile']})" if j["settings"]["estimator"] == "condition" else "")
             + f", alpha {j['alpha']}, "
             f"depth {j['depth']}.", "",
             f"- generator (JVP-PC): {edges(j)}"]
    if lab is None:
        lines += ["- labels: none given (--labels)", ""]
        return "\n".join(lines) + "\n"
    lines += [f"- labels (PC, {lab['test']}, {rep['labels_source']}): {edges(lab)}", "",
              f"SHD between them {rep['shd']} (skeleton {rep['skeleton_shd']}).", ""]
    if rep["differences"]:
        lines += ["| pair | generator | labels |", "| --- | --- | --- |"]
        lines += [f"| {', '.join(d['pair'])} | {d['a'] or 'none'} | {d['b'] or 'none'} |" for d in rep["differences"]]
    else:
        lines.append("The two graphs agree.")
    return "\n".join(lines) + "\n"


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def run(args: argparse.Namespace) -> int:
    import math
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .. import report
    from .._validation import check_positive_int
    from ..dependence import correlation
    from ..graphs import ResponseOracle, jvp_pc, pc_labels, plot_graphs, shd, skeleton_shd
    from ..graphs.result import edge_differences
    from ..jvp import make_probes
    from ._model import load_velocity

    c = from_namespace(CONFIG, args)
    for name in ("n_samples", "probes", "steps", "batch_size", "n_boot"):
        check_positive_int("--" + name.replace("_", "-"), getattr(c, name))
    if not 0 < c.alpha < 1:
        raise ValueError(f"--alpha must lie in (0, 1), got {c.alpha}")
    if not 0 < c.quantile <= 1:
        raise ValueError(f"--quantile must lie in (0, 1], got {c.quantile}")
    start = time.perf_counter()
    dtype = getattr(torch, c.dtype)
    velocity, info = load_velocity(c, use_ema=c.ema)
    velocity = velocity.to(dtype)
    event = tuple(info["event_shape"])
    d = math.prod(event)
    gen = torch.Generator().manual_seed(c.seed)
    x0 = torch.randn(c.n_samples, *event, generator=gen, dtype=dtype)
    data_path = (info.get("train_config") or {}).get("data")
    clf_info, classifier, features = None, None, None
    if c.classifier:
        module, all_names, clf_info = _load_readout(c.classifier, c.ema)
        with torch.no_grad():
            m_out = module.to(dtype)(x0[:2]).reshape(2, -1).shape[1]
        if all_names is None:
            all_names = [f"logit{k}" for k in range(m_out)]
        if len(all_names) != m_out:
            raise ValueError(f"classifier {c.classifier} outputs {m_out} values but names {len(all_names)} "
                             f"attributes ({all_names}); its outputs do not match its attribute list")
        idx = _resolve_attributes(c.attributes, all_names)
        classifier = _select(module, idx)
    else:
        if len(event) != 1:
            raise ValueError(f"without --classifier the read-out is the identity, which needs tabular data; "
                             f"the flow's samples have shape {event}")
        all_names = _csv_header(data_path) if data_path else None
        if all_names is None or len(all_names) != d:
            all_names = [f"x{k}" for k in range(d)]
        idx = _resolve_attributes(c.attributes, all_names)
        features = idx
    names = [all_names[i] for i in idx]
    z = make_probes(c.n_samples, event, probes=c.probes, generator=gen, dtype=dtype)
    oracle = ResponseOracle(velocity, x0, z, classifier=classifier, features=features, method=c.solver,
                            steps=c.steps, gradient_mode="forward" if d <= 64 else "reverse",
                            batch_size=c.batch_size, progress=True)
    jvp_graph = jvp_pc(oracle, names, estimator=c.estimator, alpha=c.alpha, depth=c.depth,
                       quantile=c.quantile, n_boot=c.n_boot, seed=c.seed)
    labels_graph, labels_source = None, None
    labels_path = c.labels
    if labels_path is None and classifier is None and data_path and Path(str(data_path)).suffix.lower() in (".npy", ".csv"):
        labels_path = data_path  # tabular flow: its training data are the labels
    if labels_path is not None:
        labels, labels_source = _load_labels(str(labels_path), all_names, idx)
        test = c.test
        if test == "auto":
            test = "chisq" if np.array_equal(labels, np.round(labels)) else "fisherz"
        labels_graph = pc_labels(labels, names, test=test, alpha=c.alpha, depth=c.depth)
    dy = oracle.responses()
    rep = {
        "command": "graph",
        "config": config_to_dict(c),
        "flow": {k: info[k] for k in ("path", "step", "event_shape", "parametrization", "preset", "used_ema")},
        "classifier": clf_info,
        "attributes": names,
        "attribute_indices": idx,
        "n_responses": int(dy.shape[0]),
        "corr_uncentred": correlation(dy.double()),
        "jvp_graph": jvp_graph.to_dict(),
        "labels_graph": labels_graph.to_dict() if labels_graph is not None else None,
        "labels_source": labels_source,
        "differences": edge_differences(jvp_graph, labels_graph) if labels_graph is not None else None,
        "shd": shd(jvp_graph, labels_graph.pdag()) if labels_graph is not None else None,
        "skeleton_shd": skeleton_shd(jvp_graph, labels_graph) if labels_graph is not None else None,
        "seconds": time.perf_counter() - start,
    }
    out = Path(c.out)
    report.write_json(out / "report.json", rep)
    dot = jvp_graph.to_dot("generator") + (labels_graph.to_dot("labels") if labels_graph is not None else "")
    report.write_text(out / "graphs.dot", dot)
    panels = [(f"generator (JVP-PC, {c.estimator})", jvp_graph)]
    if labels_graph is not None:
        panels.append((f"labels (PC, {labels_graph.test})", labels_graph))
    plot_graphs(panels, out / "graphs.png")
    report.write_text(out / "summary.md", _summary(rep))
    print(f"wrote {out / 'report.json'}, graphs.dot, graphs.png and summary.md ({rep['seconds']:.1f} s)")
    return 0
