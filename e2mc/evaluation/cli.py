"""The ``evaluate``, ``sweep`` and ``diagnose`` subcommands of ``python -m e2mc``.

    python -m e2mc evaluate --checkpoint runs/x/checkpoint.pt --results-dir results/x
    python -m e2mc evaluate --checkpoint resnet50_fullckpt.pth --method vicreg --data-root /data/imagenet \\
        --results-dir results/imagenet --label-fractions 0.01 0.1
    python -m e2mc sweep --run runs/x
    python -m e2mc diagnose --checkpoint runs/x/checkpoint.pt --results-dir results/x
"""
from __future__ import annotations

import argparse
import sys

from e2mc.checkpoints import CheckpointError
from e2mc.evaluation.runner import PROTOCOLS, EvaluationPlan
from e2mc.evaluation.transfer import TRANSFER_DATASETS

METHOD_CHOICES = ("vicreg", "swav", "simsiam")
DATASET_CHOICES = ("fashion_mnist", "imagenet")


def _transfer_pair(text: str) -> tuple[str, str]:
    name, sep, root = text.partition("=")
    if not sep or not root:
        raise argparse.ArgumentTypeError(f"--transfer takes NAME=ROOT, e.g. cifar10=/data/cifar, got {text!r}")
    if name not in TRANSFER_DATASETS:
        raise argparse.ArgumentTypeError(f"unknown transfer dataset {name!r}; choose one of "
                                         f"{', '.join(TRANSFER_DATASETS)}")
    return name, root


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASET_CHOICES,
                   help="evaluation dataset (default: the checkpoint's training dataset; imagenet for releases)")
    p.add_argument("--data-root", help="dataset folder (Fashion-MNIST files; ImageNet: the folder holding train/ "
                                       "and val/); default: the checkpoint's data.root")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers (ImageNet, transfer datasets)")


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=["linear_probe"],
                   help="linear_probe (frozen features), finetune (whole network, SwAV protocol), transfer")
    p.add_argument("--label-fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0], metavar="F")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S")
    p.add_argument("--subset-dir", help="ImageNet: folder with SimCLR's 1percent.txt / 10percent.txt "
                                        "(default: --data-root; fetched if absent)")
    p.add_argument("--transfer", action="append", type=_transfer_pair, default=[], metavar="NAME=ROOT",
                   help=f"transfer dataset and its local folder; NAME in {', '.join(TRANSFER_DATASETS)} (repeatable)")
    p.add_argument("--probe-on", choices=("features", "images"), default="features",
                   help="features: fast probe on cached standardised features; images: the paper's protocol "
                        "(augmented images through the frozen backbone every epoch)")
    p.add_argument("--probe-epochs", type=int)
    p.add_argument("--probe-lr", type=float)
    p.add_argument("--probe-weight-decay", type=float)
    p.add_argument("--probe-weight-decays", nargs="+", type=float, metavar="WD",
                   help="choose the probe's weight decay from this grid on a held-out part of the labelled set")
    p.add_argument("--probe-batch-size", type=int)
    p.add_argument("--finetune-epochs", type=int)
    p.add_argument("--finetune-backbone-lr", type=float)
    p.add_argument("--finetune-head-lr", type=float)
    p.add_argument("--finetune-schedule", choices=("step", "cosine"))
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass when encoding")


def plan_from_args(args: argparse.Namespace) -> EvaluationPlan:
    probe = {key: value for key, value in (
        ("epochs", args.probe_epochs), ("lr", args.probe_lr), ("weight_decay", args.probe_weight_decay),
        ("weight_decays", tuple(args.probe_weight_decays or ())), ("batch_size", args.probe_batch_size))
        if value not in (None, ())}
    tune = {key: value for key, value in (
        ("epochs", args.finetune_epochs), ("backbone_lr", args.finetune_backbone_lr),
        ("head_lr", args.finetune_head_lr), ("schedule", args.finetune_schedule)) if value is not None}
    return EvaluationPlan(tuple(args.protocols), tuple(args.label_fractions), tuple(args.seeds),
                          probe_on=args.probe_on, probe_overrides=probe, finetune_overrides=tune,
                          transfer=tuple(args.transfer), extraction_batch_size=args.batch_size)


def _run(command):
    def run(args: argparse.Namespace) -> int:
        try:
            command(args)
        except (FileNotFoundError, ValueError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    return run


def _evaluate(args: argparse.Namespace) -> None:
    from e2mc.evaluation.runner import evaluate_checkpoint

    paths = evaluate_checkpoint(args.checkpoint, args.results_dir, plan_from_args(args), method=args.method,
                                arm=args.arm, epoch=args.epoch, dataset=args.dataset, data_root=args.data_root,
                                subset_dir=args.subset_dir, device=args.device, workers=args.workers)
    print(f"[e2mc] {len(paths)} result file(s) in {args.results_dir}")


def _sweep(args: argparse.Namespace) -> None:
    from e2mc.evaluation.runner import sweep

    paths = sweep(args.run, args.results_dir, plan_from_args(args), dataset=args.dataset, data_root=args.data_root,
                  subset_dir=args.subset_dir, device=args.device, workers=args.workers,
                  skip_existing=not args.overwrite)
    print(f"[e2mc] {len(paths)} result file(s) for {args.run}")


def _diagnose(args: argparse.Namespace) -> None:
    from e2mc.evaluation.runner import diagnose_checkpoint

    diagnose_checkpoint(args.checkpoint, args.results_dir, method=args.method, arm=args.arm, epoch=args.epoch,
                        dataset=args.dataset, data_root=args.data_root, n_images=args.n_images,
                        n_pairs=args.n_pairs, seed=args.seed, device=args.device, workers=args.workers)


def _add_identity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="one of our checkpoint.pt files, or an official release")
    p.add_argument("--method", choices=METHOD_CHOICES, help="required for official releases (read on a ResNet-50)")
    p.add_argument("--arm", help="experiment arm recorded in the results (default: inferred from the configuration)")
    p.add_argument("--epoch", type=int, help="epochs of continued pre-training recorded (default: from the file)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate``, ``sweep`` and ``diagnose`` on the subparsers of ``python -m e2mc``."""
    text = "linear probe / fine-tuning / transfer evaluation of a checkpoint; one result JSON per evaluation"
    p = sub.add_parser("evaluate", help=text, description=text)
    _add_identity_arguments(p)
    _add_data_arguments(p)
    _add_plan_arguments(p)
    p.add_argument("--results-dir", required=True, help="where the result JSON files go")
    p.set_defaults(run=_run(_evaluate))

    text = "evaluate every checkpoint-epochNNN.pt of a training run (accuracy after each epoch, Fig. 6)"
    p = sub.add_parser("sweep", help=text, description=text)
    p.add_argument("--run", required=True, help="the run's output_dir (trained with train.keep_epoch_checkpoints=true)")
    _add_data_arguments(p)
    _add_plan_arguments(p)
    p.set_defaults(label_fractions=[0.01], seeds=[0])
    p.add_argument("--results-dir", help="default: the run's eval.results_dir, else <run>/eval")
    p.add_argument("--overwrite", action="store_true", help="re-run evaluations whose result file exists")
    p.set_defaults(run=_run(_sweep))

    text = ("embedding diagnostics of a checkpoint: marginal entropy after each transform, covariance penalty, "
            "RankMe, and 2-D samples of fixed images and dimension pairs (Fig. 2c/d)")
    p = sub.add_parser("diagnose", help=text, description=text)
    _add_identity_arguments(p)
    _add_data_arguments(p)
    p.add_argument("--results-dir", required=True)
    p.add_argument("--n-images", type=int, default=2048, help="test images measured (a fixed seeded choice)")
    p.add_argument("--n-pairs", type=int, default=8, help="dimension pairs whose 2-D samples are stored")
    p.add_argument("--seed", type=int, default=0, help="chooses the images and the dimension pairs")
    p.set_defaults(run=_run(_diagnose))
