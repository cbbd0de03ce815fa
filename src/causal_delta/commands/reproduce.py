"""``causal-delta reproduce``: re-run the paper's experiments and write their reports.

Each experiment writes ``report.json``, PNG figures and ``summary.md`` into ``--out``
(``all`` writes one sub-folder per experiment plus an index ``report.json`` /
``summary.md``). ``--quick`` runs the CI-sized configuration (``all --quick`` takes a few
minutes on a 2-core CPU); without it the paper's sizes are used, which for ``pixels`` means
hours of training on a CPU. ``--set key=value`` overrides any field of the experiment's
config dataclass (e.g. ``--set train_steps=3000``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "reproduce an experiment (gaussian-1d, gaussian-2d, mixture, pixels, attributes, known-graphs, memorisation, flux, all)"

DESCRIPTION = (
    "Re-run one of the paper's experiments (or all of them) and write report.json, PNG figures "
    "and summary.md. --quick gives a CI-sized run; without it the paper's sizes are used."
)

EXPERIMENT_NAMES = ("gaussian-1d", "gaussian-2d", "mixture", "pixels", "attributes", "known-graphs", "memorisation",
                    "flux")
# 'all' reproduces the Causality-Δ paper; the benchmarks beyond it run on their own.
ALL_EXPERIMENTS = ("gaussian-1d", "gaussian-2d", "mixture", "pixels", "attributes")

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "outputs", "run", "build_config"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", choices=(*EXPERIMENT_NAMES, "all"),
                        help="which experiment to run ('all' runs every one of the Causality-Delta paper "
                             "that can run; memorisation is separate)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (minutes on a CPU)")
    parser.add_argument("--out", default=None,
                        help="output folder (default runs/reproduce/<experiment>, or runs/reproduce for all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--dataset", default=None, choices=("digits", "mnist", "fashion-mnist", "folder"),
                        help="pixels: image source (default digits with --quick, else fashion-mnist)")
    parser.add_argument("--data-root", default=None,
                        help="pixels: folder of the MNIST/Fashion-MNIST IDX files or of images "
                             "(Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--classes", default=None,
                        help="pixels: comma-separated classes to keep (indices or names; default 5)")
    parser.add_argument("--celeba-root", default=None, help="attributes: CelebA folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train_steps=2000 (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest for the small "
                             "models when the CPU is shared)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parse_value(key: str, text: str, current):
    """Parse ``text`` to the type of the field's current value."""
    import json

    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected true/false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected a number, got {text!r}") from None
    if isinstance(current, (tuple, list)) or current is None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text if current is None else tuple(p.strip() for p in text.split(",") if p.strip())
        return _tuplify(value) if isinstance(value, list) else value
    return text


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def build_config(name: str, args: argparse.Namespace):
    """The config dataclass of experiment ``name`` for the parsed ``args``."""
    import dataclasses

    from ..experiments import get_experiment

    config_cls, _ = get_experiment(name)
    known = {f.name for f in dataclasses.fields(config_cls)}
    base = {"seed": args.seed}
    if name == "pixels":
        if args.dataset is not None:
            base["dataset"] = args.dataset
        if args.data_root is not None:
            base["data_root"] = args.data_root
        if args.classes is not None:
            base["classes"] = tuple(int(c) if c.strip().isdigit() else c.strip()
                                    for c in args.classes.split(",") if c.strip())
    if name == "attributes" and args.celeba_root is not None:
        base["celeba_root"] = args.celeba_root
    config = config_cls.quick(**base) if args.quick else config_cls.full(**base)
    changes = {}
    for item in args.overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in known:
            if args.experiment == "all":
                continue  # a field of another experiment
            raise ValueError(f"--set {key}: {name} has no such setting; known: {sorted(known)}")
        changes[key] = _parse_value(key, text, getattr(config, key))
    return dataclasses.replace(config, **changes) if changes else config


def _root(args: argparse.Namespace) -> Path:
    if args.experiment == "all":
        return Path(args.out or "runs/reproduce")
    return Path(args.out or f"runs/reproduce/{args.experiment}")


def outputs(args: argparse.Namespace):
    """The output folder (``--out`` or its default), locked while the run lasts."""
    from ._common import Output

    return [Output(_root(args))]


def _headline(report: dict) -> str:
    head = report.get("results", {}).get("headline", {})
    parts = []
    for k, v in head.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import torch

    from ..experiments import get_experiment
    from ..report import write_json, write_text

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    names = list(ALL_EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    root = _root(args)
    if args.experiment == "all":
        unknown = [o for o in args.overrides if "=" not in o]
        if unknown:
            raise ValueError(f"--set expects KEY=VALUE, got {unknown[0]!r}")
    index: dict[str, dict] = {}
    t_start = time.perf_counter()
    for name in names:
        if args.experiment == "all" and name == "attributes" and args.celeba_root is None:
            note = "skipped: needs --celeba-root (a local CelebA folder)"
            print(f"[attributes] {note}", file=sys.stderr)
            index[name] = {"status": "skipped", "note": note}
            continue
        config = build_config(name, args)
        _, fn = get_experiment(name)
        out = root / name if args.experiment == "all" else root
        print(f"[{name}] {'quick' if args.quick else 'full'} run -> {out}", file=sys.stderr)
        report = fn(config, out, progress=not args.no_progress)
        seconds = report.get("timings_s", {}).get("total")
        line = _headline(report)
        print(f"[{name}] done in {seconds:.1f} s: {line}")
        index[name] = {"status": "done", "out": str(out), "seconds": seconds,
                       "headline": report.get("results", {}).get("headline", {})}
    if args.experiment == "all":
        total = time.perf_counter() - t_start
        write_json(root / "report.json", {"experiments": index, "quick": bool(args.quick),
                                          "seed": args.seed, "total_seconds": round(total, 3)})
        lines = [f"# causal-delta reproduce all ({'quick' if args.quick else 'full'})", "",
                 f"Total {total:.1f} s, seed {args.seed}.", "", "| experiment | status | seconds | key numbers |",
                 "| --- | --- | --- | --- |"]
        for name, entry in index.items():
            if entry["status"] == "done":
                lines.append(f"| [{name}]({name}/summary.md) | done | {entry['seconds']:.1f} | "
                             f"{_headline({'results': {'headline': entry['headline']}})} |")
            else:
                lines.append(f"| {name} | skipped | | {entry['note']} |")
        write_text(root / "summary.md", "\n".join(lines) + "\n")
        print(f"all done in {total:.1f} s -> {root}")
    return 0
