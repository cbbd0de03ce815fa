"""``causal-delta train``: train a flow-matching model and write checkpoints."""

from __future__ import annotations

import argparse
import json

__all__ = ["HELP", "DISTRIBUTED", "add_arguments", "outputs", "run"]

HELP = "train a flow-matching model (checkpoints with exact resume)"
DISTRIBUTED = True
"""Runs under ``torchrun`` (ranks share the work; rank 0 writes and prints)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="gaussian",
                        help="gaussian, gaussian-1d, mixture, or a .npy/.csv/.pt file or image folder")
    parser.add_argument("--data-args", default="{}", help="JSON keyword arguments of the data source, "
                        'e.g. \'{"rho": 0.55}\'')
    parser.add_argument("--source", default=None, help="data source for x0 (default N(0, I))")
    parser.add_argument("--coupling", choices=("independent", "fixed"), default="independent",
                        help="fixed: train on given pairs, row i of --source with row i of --data "
                             "(two files of the same length); see also --pairs")
    parser.add_argument("--pairs", default=None, metavar="FILE",
                        help="train on the fixed pairs in FILE (.npz with arrays x0 and x1, or .npy of "
                             "shape (N, 2, *event)); short for --data FILE --coupling fixed")
    parser.add_argument("--preset", default="mlp-small", help="model preset")
    parser.add_argument("--model-args", default="{}", help="JSON overrides of the preset")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128,
                        help="global batch; under torchrun each of W processes takes batch/W rows of it")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--ema", type=float, default=None, metavar="DECAY", help="EMA decay (off if omitted)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    parser.add_argument("--sigma", type=float, default=0.0, help="noise of the stochastic interpolant")
    parser.add_argument("--parametrization", choices=("velocity", "x1"), default="velocity")
    parser.add_argument("--t-sampling", choices=("uniform", "logit-normal"), default="uniform")
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                        help="bf16: forward pass and loss under bfloat16 autocast (CUDA only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="0 keeps all")
    parser.add_argument("--out", default="runs/train", help="run directory")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                        help="resume from the latest checkpoint in --out, or from PATH (bit-exact "
                             "continuation on the CPU; --steps may grow, never below the checkpoint)")
    parser.add_argument("--extend", action="store_true",
                        help="with --resume and --lr-schedule cosine: accept a new --steps total and "
                             "recompute the schedule for it from the checkpoint on (not bit-exact)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def outputs(args: argparse.Namespace):
    """The run folder ``--out``, locked for the whole run (``--resume`` included)."""
    from ._common import Output

    return [Output(args.out)]


def _json_arg(name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be a JSON object, got {text!r}: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {text!r}")
    return value


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
    if args.extend and not args.resume:
        raise ValueError("--extend applies to --resume only")
    from ..training import TrainConfig, TrainingDiverged, TrainingInterrupted, train

    data, coupling = args.data, args.coupling
    if args.pairs is not None:
        if args.source is not None:
            raise ValueError("--pairs holds both halves; give --source only with --coupling fixed and --data")
        if args.data != "gaussian":
            raise ValueError("--pairs replaces --data (the pairs file holds the targets); give one of them")
        data, coupling = args.pairs, "fixed"
    config = TrainConfig(
        data=data, data_args=_json_arg("--data-args", args.data_args), source=args.source, coupling=coupling,
        preset=args.preset, model_args=_json_arg("--model-args", args.model_args), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, ema_decay=args.ema,
        grad_clip=args.grad_clip if args.grad_clip and args.grad_clip > 0 else None, sigma=args.sigma,
        parametrization=args.parametrization, t_sampling=args.t_sampling, precision=args.precision, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        out_dir=args.out, device=args.device,
    )
    try:
        result = train(config, resume=args.resume, extend=args.extend, progress=not args.no_progress)
    except TrainingInterrupted as exc:
        if exc.checkpoint is None:
            raise KeyboardInterrupt(f"interrupted at step {exc.step}; no checkpoint was written, so there "
                                    f"is nothing to resume (--checkpoint-every N writes them)") from exc
        raise KeyboardInterrupt(f"interrupted at step {exc.step}; the checkpoint at step {exc.checkpoint_step} "
                                f"is intact ({exc.checkpoint}); resume with: {_resume_line(args)}") from exc
    except TrainingDiverged as exc:
        kept = (f"the checkpoint at step {exc.checkpoint_step} is kept ({exc.checkpoint})"
                if exc.checkpoint is not None else "no checkpoint had been written")
        clip = f"now {args.grad_clip:g}" if args.grad_clip and args.grad_clip > 0 else "now off"
        raise FloatingPointError(f"training diverged: loss {exc.loss} at step {exc.step}; {kept}; try a "
                                 f"lower --lr (now {args.lr:g}) or --grad-clip ({clip})") from exc
    from .. import distributed

    if not distributed.is_main():  # under torchrun rank 0 reports for all
        return 0
    tail = result.losses[-min(50, len(result.losses)):]
    new = result.step - result.resumed_from
    if result.resumed_from and new == 0:
        print(f"nothing to train: the checkpoint is already at step {result.step} (--steps {args.steps})")
    elif result.resumed_from:
        print(f"resumed at step {result.resumed_from} and trained {new} more steps to step {result.step} "
              f"on {result.device} in {result.seconds:.1f} s; mean loss of the last {len(tail)} steps "
              f"{sum(tail) / max(len(tail), 1):.5f}")
    else:
        where = result.device if result.world_size == 1 else f"{result.world_size} processes ({result.device} on rank 0)"
        print(f"trained {result.step} steps on {where} in {result.seconds:.1f} s; "
              f"mean loss of the last {len(tail)} steps {sum(tail) / max(len(tail), 1):.5f}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
