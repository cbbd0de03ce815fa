"""``causal-delta classifier``: attribute read-outs (classifiers / regressors) for attribute JVPs."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "outputs", "run"]

HELP = "train attribute classifiers / regressors (CelebA or an .npz of images and targets)"
DESCRIPTION = ("attribute read-outs C for attribute-level JVPs; actions 'train' and 'evaluate' (see "
               "`causal-delta classifier train --help`)")
_TRAIN_DESCRIPTION = """Attribute read-outs C for attribute-level JVPs (Delta y = J_{C o f} z).

  causal-delta classifier train --data celeba --celeba-root DIR --attributes Heavy_Makeup Pointy_Nose
  causal-delta classifier train --data scenes.npz --head regression --arch small-cnn

The run folder (--out) gets checkpoints/ (exact resume with --resume), report.json and
summary.md: held-out accuracy and ROC-AUC per attribute (binary head) or R^2 (regression head).
Use the trained classifier with causal_delta.classifier_training.load_classifier(OUT)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("train", help="train a read-out and write its held-out report",
                       description=_TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="celeba|FILE.npz",
                   help="'celeba' (with --celeba-root) or a .npz holding 'images' (N, C, H, W) in [-1, 1] or "
                        "uint8, 'targets' (N, m) and optionally 'attributes' (m names)")
    p.add_argument("--celeba-root", default=None, metavar="DIR",
                   help="folder with img_align_celeba/ and list_attr_celeba.txt (list_eval_partition.txt optional)")
    p.add_argument("--attributes", nargs="+", default=None, metavar="NAME",
                   help="attribute names (CelebA: default all 40; .npz: names of the target columns)")
    p.add_argument("--image-size", type=int, default=64, help="CelebA: centre crop 178, then resize to this")
    p.add_argument("--limit", type=int, default=None, help="CelebA: at most this many training images")
    p.add_argument("--eval-limit", type=int, default=None, help="CelebA: at most this many held-out images")
    p.add_argument("--holdout", type=float, default=0.1, help=".npz: share of rows held out for the report")
    p.add_argument("--arch", choices=("small-cnn", "resnet18", "resnet34", "resnet50", "mlp"), default="small-cnn",
                   help="network (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="ResNet backbone weights from a local file (e.g. torchvision's ImageNet .pth); "
                        "never downloaded")
    p.add_argument("--head", choices=("binary", "regression"), default="binary",
                   help="binary: BCE with logits on 0/1 labels; regression: MSE, outputs are attribute values")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--out", default="runs/classifier", help="run folder")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="resume from the latest checkpoint in --out, or from PATH")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e = sub.add_parser("evaluate", help="held-out report of a trained read-out on CelebA or an .npz",
                       description="Accuracy and ROC-AUC (binary) or R^2 (regression) per attribute of a "
                                   "classifier trained with `classifier train`, written to --out/report.json "
                                   "and summary.md.")
    e.add_argument("--classifier", required=True, metavar="RUN", help="run folder or checkpoint of the classifier")
    e.add_argument("--data", required=True, metavar="celeba|FILE.npz", help="as for train (all rows of an .npz)")
    e.add_argument("--celeba-root", default=None, metavar="DIR", help="CelebA folder (--data celeba)")
    e.add_argument("--split", choices=("train", "valid", "test", "all"), default="test", help="CelebA split")
    e.add_argument("--attributes", nargs="+", default=None, metavar="NAME",
                   help="evaluate these outputs only (default: all the classifier's outputs)")
    e.add_argument("--limit", type=int, default=None, help="at most this many images")
    e.add_argument("--out", default="runs/classifier-eval", help="report folder")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.set_defaults(_parser=parser)


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..classifier_training import evaluate_classifier, load_classifier, read_npz
    from ..report import write_json, write_text
    from ..training import resolve_device

    device = resolve_device(args.device)
    clf = load_classifier(args.classifier, attributes=args.attributes, device=device)
    names = list(clf.attributes)
    if args.data == "celeba":
        from ..datasets.celeba import load_celeba

        if not args.celeba_root:
            raise ValueError("--data celeba needs --celeba-root DIR")
        size = tuple(clf.net.config.event_shape[1:])
        data = load_celeba(args.celeba_root, split=args.split, attributes=names, size=size, limit=args.limit)
        images, targets, source = data.images, data.labels, f"celeba:{data.source}:{args.split}"
    else:
        path = Path(args.data).expanduser()
        images, targets, stored = read_npz(path)
        images, targets = images[: args.limit], targets[: args.limit]
        if stored is not None:
            missing = [a for a in names if a not in stored]
            if missing:
                raise ValueError(f"classifier outputs {names} are not all columns of {path}: missing {missing}; "
                                 f"its columns are {stored}")
            targets = targets[:, [stored.index(a) for a in names]]
        source = str(path)
    report = evaluate_classifier(clf, images, targets, head=clf.head, attributes=names)
    report = {"classifier": str(args.classifier), "source": source, **report}
    out = Path(args.out)
    write_json(out / "report.json", report)
    from ..experiments._common import markdown_table

    cols = ["accuracy", "roc_auc"] if clf.head == "binary" else ["r2", "rmse"]
    rows = [[n, *[v[c] for c in cols]] for n, v in report["per_attribute"].items()]
    rows.append(["**mean**", *[report["mean"][c] for c in cols]])
    write_text(out / "summary.md", f"# classifier evaluation ({clf.head} head)\n\n{report['n']} images from "
                                   f"{source}.\n\n" + markdown_table(["attribute", *cols], rows) + "\n")
    print(f"evaluated on {report['n']} images: mean " + ", ".join(f"{k} {v:.4f}" for k, v in report["mean"].items()))
    print(f"report: {out / 'report.json'}")
    return 0


def outputs(args: argparse.Namespace):
    """The run folder ``--out`` (train or evaluate), locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)] if getattr(args, "out", None) else []


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action == "evaluate":
        return _evaluate(args)
    if action != "train":
        args._parser.print_help()
        return 0
    from ..classifier_training import ClassifierTrainConfig, train_classifier

    if args.data != "celeba" and args.celeba_root is not None:
        raise ValueError("--celeba-root is only used with --data celeba")
    config = ClassifierTrainConfig(
        data=args.data, celeba_root=args.celeba_root, attributes=args.attributes, image_size=args.image_size,
        limit=args.limit, eval_limit=args.eval_limit, holdout_fraction=args.holdout, arch=args.arch,
        weights_path=args.weights, head=args.head, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, weight_decay=args.weight_decay, seed=args.seed,
        checkpoint_every=args.checkpoint_every, out_dir=args.out, device=args.device,
    )
    result = train_classifier(config, resume=args.resume, progress=not args.no_progress)
    mean = result.report["held_out"]["mean"]
    scores = ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
    print(f"trained {result.step} steps on {result.device} in {result.seconds:.1f} s; held-out mean {scores}")
    print(f"report: {result.out_dir / 'report.json'}; checkpoint: {result.checkpoint}")
    return 0
