"""``causal-delta classifier``: attribute read-outs (classifiers / regressors) for attribute JVPs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, cast

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option
from ..train_config import ClassifierTrainConfig

if TYPE_CHECKING:
    from ..models.classifier import ImageClassifier, MLPClassifier, ResNetClassifier

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "ClassifierCommandConfig", "ClassifierEvaluateConfig", "add_arguments",
           "outputs", "run"]

HELP = "train attribute classifiers / regressors (CelebA or an .npz of images and targets)"
DESCRIPTION = ("attribute read-outs C for attribute-level JVPs; actions 'train' and 'evaluate' (see "
               "`causal-delta classifier train --help`)")
_TRAIN_DESCRIPTION = """Attribute read-outs C for attribute-level JVPs (Delta y = J_{C o f} z).

  causal-delta classifier train --data celeba --celeba-root DIR --attributes Heavy_Makeup Pointy_Nose
  causal-delta classifier train --data scenes.npz --head regression --arch small-cnn

The run folder (--out) gets checkpoints/ (exact resume with --resume), report.json and
summary.md: held-out accuracy and ROC-AUC per attribute (binary head) or R^2 (regression head).
Use the trained classifier with causal_delta.classifier_training.load_classifier(OUT)."""


@dataclass
class ClassifierCommandConfig(ClassifierTrainConfig):
    """The options of ``causal-delta classifier train``: a
    :class:`~causal_delta.train_config.ClassifierTrainConfig` (``--data`` required) plus how to run it."""

    resume: bool | str = option(False, metavar="PATH", help="resume from the latest checkpoint in --out, or from PATH")
    progress: bool = option(True, help="show the progress bar")

    def train_config(self) -> ClassifierTrainConfig:
        """The library's :class:`ClassifierTrainConfig` of this run."""
        return ClassifierTrainConfig(**{f.name: getattr(self, f.name) for f in fields(ClassifierTrainConfig)})


@dataclass
class ClassifierEvaluateConfig:
    """The options of ``causal-delta classifier evaluate``."""

    classifier: str = option(metavar="RUN", help="run folder or checkpoint of the classifier")
    data: str = option(metavar="celeba|FILE.npz", help="as for train (all rows of an .npz)")
    celeba_root: str | None = option(None, metavar="DIR", help="CelebA folder (--data celeba)")
    split: Literal["train", "valid", "test", "all"] = option("test", help="CelebA split")
    attributes: list[str] | None = option(None, nargs="+", metavar="NAME",
                                          help="evaluate these outputs only (default: all the classifier's outputs)")
    limit: int | None = option(None, help="at most this many images")
    out: str = option("runs/classifier-eval", help="report folder")
    device: str = option("auto", help="auto, cpu or cuda")


CONFIG = {"train": ClassifierCommandConfig, "evaluate": ClassifierEvaluateConfig}
"""Action -> config dataclass (``classifier`` has two actions, each with its options)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("train", help="train a read-out and write its held-out report",
                       description=_TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(p, ClassifierCommandConfig)
    data = next(a for a in p._actions if a.dest == "data")
    data.required, data.default = True, argparse.SUPPRESS  # the library's default "tensors" is no CLI input
    e = sub.add_parser("evaluate", help="held-out report of a trained read-out on CelebA or an .npz",
                       description="Accuracy and ROC-AUC (binary) or R^2 (regression) per attribute of a "
                                   "classifier trained with `classifier train`, written to --out/report.json "
                                   "and summary.md.")
    add_dataclass_arguments(e, ClassifierEvaluateConfig)
    parser.set_defaults(_parser=parser)


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..classifier_training import evaluate_classifier, load_classifier, read_npz
    from ..report import write_json, write_text
    from ..training import resolve_device

    args = from_namespace(ClassifierEvaluateConfig, args)
    device = resolve_device(args.device)
    clf = load_classifier(args.classifier, attributes=args.attributes, device=device)
    names = list(clf.attributes)
    if args.data == "celeba":
        from ..datasets.celeba import load_celeba

        if not args.celeba_root:
            raise ValueError("--data celeba needs --celeba-root DIR")
        net = cast("ImageClassifier | MLPClassifier | ResNetClassifier", clf.net)  # build_classifier's archs
        size = tuple(net.config.event_shape[1:])
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
    report = {"classifier": str(args.classifier), "source": source, "config": config_to_dict(args), **report}
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

    out = getattr(args, "out_dir", None) if getattr(args, "action", None) == "train" else getattr(args, "out", None)
    return [Output(out)] if out else []


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action == "evaluate":
        return _evaluate(args)
    if action != "train":
        args._parser.print_help()
        return 0
    from ..classifier_training import train_classifier

    options = from_namespace(ClassifierCommandConfig, args)
    if options.data != "celeba" and options.celeba_root is not None:
        raise ValueError("--celeba-root is only used with --data celeba")
    result = train_classifier(options.train_config(), resume=options.resume, progress=options.progress)
    mean = result.report["held_out"]["mean"]
    scores = ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
    print(f"trained {result.step} steps on {result.device} in {result.seconds:.1f} s; held-out mean {scores}")
    print(f"report: {result.out_dir / 'report.json'}; checkpoint: {result.checkpoint}")
    return 0
