"""``causal-delta train``: train a flow-matching model and write checkpoints."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ..config import add_dataclass_arguments, from_namespace, option
from ..train_config import TrainConfig

__all__ = ["HELP", "CONFIG", "TrainCommandConfig", "add_arguments", "outputs", "run"]

HELP = "train a flow-matching model (checkpoints with exact resume)"


@dataclass
class TrainCommandConfig(TrainConfig):
    """The options of ``causal-delta train``: a :class:`~causal_delta.train_config.TrainConfig` plus
    how to run it (resume, progress) and the ``--pairs`` shorthand."""

    pairs: str | None = option(None, metavar="FILE",
                               help="train on the fixed pairs in FILE (.npz with arrays x0 and x1, or .npy of shape "
                                    "(N, 2, *event)); short for --data FILE --coupling fixed")
    resume: bool | str = option(False, metavar="PATH",
                                help="resume from the latest checkpoint in --out, or from PATH (bit-exact "
                                     "continuation on the CPU; --steps may grow, never below the checkpoint)")
    extend: bool = option(False, help="with --resume and --lr-schedule cosine: accept a new --steps total and "
                                      "recompute the schedule for it from the checkpoint on (not bit-exact)")
    progress: bool = option(True, help="show the progress bar")

    def train_config(self) -> TrainConfig:
        """The library's :class:`TrainConfig` of this run (``--pairs`` expanded, ``--grad-clip 0`` as off)."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainConfig)}
        if self.pairs is not None:
            if self.source is not None:
                raise ValueError("--pairs holds both halves; give --source only with --coupling fixed and --data")
            if self.data != TrainConfig.data:
                raise ValueError("--pairs replaces --data (the pairs file holds the targets); give one of them")
            values.update(data=self.pairs, coupling="fixed")
        if values["grad_clip"] == 0:
            values["grad_clip"] = None
        return TrainConfig(**values)


CONFIG = TrainCommandConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def outputs(args: argparse.Namespace):
    """The run folder ``--out``, locked for the whole run (``--resume`` included)."""
    from ._common import Output

    return [Output(args.out_dir)]


def _resume_line(args: argparse.Namespace) -> str:
    """The command line that resumes this run: the same arguments plus ``--resume``."""
    import shlex

    argv = list(getattr(args, "_argv", None) or [])
    if not argv:
        return "causal-delta train ... --resume"
    if "--resume" not in argv and not any(a.startswith("--resume=") for a in argv):
        argv.append("--resume")
    return "causal-delta " + shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    options = from_namespace(CONFIG, args)
    if options.extend and not options.resume:
        raise ValueError("--extend applies to --resume only")
    from ..training import TrainingDiverged, TrainingInterrupted, train

    config = options.train_config()
    try:
        result = train(config, resume=options.resume, extend=options.extend, progress=options.progress)
    except TrainingInterrupted as exc:
        if exc.checkpoint is None:
            raise KeyboardInterrupt(f"interrupted at step {exc.step}; no checkpoint was written, so there "
                                    f"is nothing to resume (--checkpoint-every N writes them)") from exc
        raise KeyboardInterrupt(f"interrupted at step {exc.step}; the checkpoint at step {exc.checkpoint_step} "
                                f"is intact ({exc.checkpoint}); resume with: {_resume_line(args)}") from exc
    except TrainingDiverged as exc:
        kept = (f"the checkpoint at step {exc.checkpoint_step} is kept ({exc.checkpoint})"
                if exc.checkpoint is not None else "no checkpoint had been written")
        clip = f"now {config.grad_clip:g}" if config.grad_clip is not None else "now off"
        raise FloatingPointError(f"training diverged: loss {exc.loss} at step {exc.step}; {kept}; try a "
                                 f"lower --lr (now {config.lr:g}) or --grad-clip ({clip})") from exc
    tail = result.losses[-min(50, len(result.losses)):]
    new = result.step - result.resumed_from
    if result.resumed_from and new == 0:
        print(f"nothing to train: the checkpoint is already at step {result.step} (--steps {config.steps})")
    elif result.resumed_from:
        print(f"resumed at step {result.resumed_from} and trained {new} more steps to step {result.step} "
              f"on {result.device} in {result.seconds:.1f} s; mean loss of the last {len(tail)} steps "
              f"{sum(tail) / max(len(tail), 1):.5f}")
    else:
        print(f"trained {result.step} steps on {result.device} in {result.seconds:.1f} s; "
              f"mean loss of the last {len(tail)} steps {sum(tail) / max(len(tail), 1):.5f}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
