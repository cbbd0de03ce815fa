"""``causal-delta reproduce``: re-run the paper's experiments and write their reports.

Each experiment writes ``report.json``, PNG figures and ``summary.md`` into ``--out``
(``all`` writes one sub-folder per experiment plus an index ``report.json`` /
``summary.md``). ``--quick`` runs the CI-sized configuration (``all --quick`` takes about seven
minutes on a 2-core CPU); without it the paper's sizes are used, which for ``pixels`` means
hours of training on a CPU. ``--set key=value`` overrides any field of the experiment's
config dataclass (e.g. ``--set train_steps=3000``), parsed by the field's annotation
(:func:`causal_delta.config.apply_overrides`); ``all --set`` applies a key to the experiments
that have it and refuses a key that none of them knows.

Under ``torchrun --nproc-per-node N -m causal_delta.cli reproduce ...`` every rank runs the
experiment: flows train with DDP, the per-sample loops (JVPs, hold-fixed probes, sampling) split
over the ranks and are gathered in sample order, steps that must run once (a classifier with its
checkpoints, data files) run on rank 0 and share their result, and rank 0 writes; the report is
the single-process one up to DDP's float rounding (tests/test_reproduce_distributed.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import (
    add_dataclass_arguments,
    apply_overrides,
    config_keys,
    config_to_dict,
    from_namespace,
    option,
    split_overrides,
)

HELP = "reproduce an experiment (gaussian-1d, gaussian-2d, mixture, pixels, attributes, known-graphs, memorisation, flux, all)"

DESCRIPTION = (
    "Re-run one of the paper's experiments (or all of them) and write report.json, PNG figures "
    "and summary.md. --quick gives a CI-sized run; without it the paper's sizes are used."
)

EXPERIMENT_NAMES = ("gaussian-1d", "gaussian-2d", "mixture", "pixels", "attributes", "known-graphs", "memorisation",
                    "flux")
# 'all' reproduces the Causality-Δ paper; the benchmarks beyond it run on their own.
ALL_EXPERIMENTS = ("gaussian-1d", "gaussian-2d", "mixture", "pixels", "attributes")

DISTRIBUTED = True
"""Runs under ``torchrun``: flows train with DDP, per-sample loops split over the ranks, rank 0 writes."""

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "ReproduceConfig", "add_arguments", "outputs", "run", "build_config",
           "known_keys"]


@dataclass
class ReproduceConfig:
    """The options of ``causal-delta reproduce``; ``overrides`` (``--set``) reach the experiment's config."""

    experiment: Literal[EXPERIMENT_NAMES + ("all",)] = option(  # type: ignore[valid-type]
        positional=True, help="which experiment to run ('all' runs every one of the Causality-Delta paper that can "
                              "run; the benchmarks beyond it run on their own)")
    quick: bool = option(False, help="CI-sized run (minutes on a CPU)")
    out: str | None = option(None, help="output folder (default runs/reproduce/<experiment>, or runs/reproduce for all)")
    seed: int = option(0, help="random seed")
    dataset: Literal["digits", "mnist", "fashion-mnist", "folder"] | None = option(
        None, help="pixels: image source (default digits with --quick, else fashion-mnist)")
    data_root: str | None = option(None, help="pixels: folder of the MNIST/Fashion-MNIST IDX files or of images "
                                              "(Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist)")
    classes: str | None = option(None, help="pixels: comma-separated classes to keep (indices or names; default 5)")
    celeba_root: str | None = option(None, help="attributes: CelebA folder")
    overrides: tuple[str, ...] = option((), flag="--set", repeat=True, metavar="KEY=VALUE",
                                        help="override a field of the experiment's config, e.g. --set "
                                             "train_steps=2000 (repeatable; values parsed by the field's type)")
    threads: int | None = option(None, help="torch CPU threads (default: torch's choice; 1 is fastest for the small "
                                            "models when the CPU is shared)")
    progress: bool = option(True, help="show progress bars")


CONFIG = ReproduceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def _shorthands(name: str, c: ReproduceConfig) -> list[str]:
    """The dedicated options as ``key=value`` items for experiment ``name`` (parsed like ``--set``)."""
    items = [f"seed={c.seed}"]
    if name == "pixels":
        items += [f"{k}={v}" for k, v in (("dataset", c.dataset), ("data_root", c.data_root),
                                          ("classes", c.classes)) if v is not None]
    if name == "attributes" and c.celeba_root is not None:
        items.append(f"celeba_root={c.celeba_root}")
    return items


def known_keys(names) -> list[str]:
    """The ``--set`` keys that at least one of the experiments ``names`` knows, sorted."""
    from ..experiments import get_experiment

    return sorted({k for name in names for k in config_keys(get_experiment(name)[0])})


def build_config(name: str, c: ReproduceConfig):
    """The config dataclass of experiment ``name`` for the options ``c``.

    The size (``quick()`` / ``full()``) comes first, then the dedicated options (``--seed``,
    ``--dataset``, ...), then ``--set`` items in order. With ``experiment == "all"`` a key the
    experiment lacks is skipped (:func:`run` has refused keys that no experiment knows).
    """
    from ..experiments import get_experiment

    config_cls: Any = get_experiment(name)[0]  # a SizedConfig dataclass
    config = config_cls.quick() if c.quick else config_cls.full()
    config = apply_overrides(config, _shorthands(name, c))
    return apply_overrides(config, c.overrides, only_known=c.experiment == "all")


def _root(args) -> Path:
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

    from .. import distributed as dist
    from ..experiments import get_experiment
    from ..report import write_json, write_text

    c = from_namespace(CONFIG, args)
    main = dist.is_main()  # under torchrun every rank runs the experiment; rank 0 prints and writes
    say = print if main else (lambda *a, **k: None)
    if c.threads is not None:
        if c.threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {c.threads}")
        torch.set_num_threads(c.threads)

    names = list(ALL_EXPERIMENTS) if c.experiment == "all" else [c.experiment]
    root = _root(c)
    if c.experiment == "all":  # refuse a key that no experiment knows before any of them runs
        valid = known_keys(names)
        for key, _ in split_overrides(c.overrides):
            if key not in valid:
                raise ValueError(f"--set {key}: no experiment of 'all' has this setting; valid keys: {', '.join(valid)}")
    skip_attributes = c.experiment == "all" and c.celeba_root is None
    # every --set value is parsed and checked before the first experiment starts
    configs = {name: build_config(name, c) for name in names if not (skip_attributes and name == "attributes")}
    index: dict[str, dict] = {}
    t_start = time.perf_counter()
    for name in names:
        if name not in configs:
            note = "skipped: needs --celeba-root (a local CelebA folder)"
            say(f"[attributes] {note}", file=sys.stderr)
            index[name] = {"status": "skipped", "note": note}
            continue
        config = configs[name]
        _, fn = get_experiment(name)
        out = root / name if c.experiment == "all" else root
        procs = f" on {dist.world_size()} processes" if dist.world_size() > 1 else ""
        say(f"[{name}] {'quick' if c.quick else 'full'} run{procs} -> {out}", file=sys.stderr)
        report = fn(config, out, progress=c.progress and main)
        seconds = report.get("timings_s", {}).get("total")
        line = _headline(report)
        say(f"[{name}] done in {seconds:.1f} s: {line}")
        index[name] = {"status": "done", "out": str(out), "seconds": seconds,
                       "headline": report.get("results", {}).get("headline", {})}
    if c.experiment == "all":
        total = time.perf_counter() - t_start
        write_json(root / "report.json", {"experiments": index, "quick": bool(c.quick), "seed": c.seed,
                                          "config": config_to_dict(c), "total_seconds": round(total, 3)})
        lines = [f"# causal-delta reproduce all ({'quick' if c.quick else 'full'})", "",
                 f"Total {total:.1f} s, seed {c.seed}.", "", "| experiment | status | seconds | key numbers |",
                 "| --- | --- | --- | --- |"]
        for name, entry in index.items():
            if entry["status"] == "done":
                lines.append(f"| [{name}]({name}/summary.md) | done | {entry['seconds']:.1f} | "
                             f"{_headline({'results': {'headline': entry['headline']}})} |")
            else:
                lines.append(f"| {name} | skipped | | {entry['note']} |")
        write_text(root / "summary.md", "\n".join(lines) + "\n")
        say(f"all done in {total:.1f} s -> {root}")
    return 0
