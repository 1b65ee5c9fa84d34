"""The ``evaluate``, ``sweep`` and ``diagnose`` subcommands of ``python -m e2mc``.

    python -m e2mc evaluate --checkpoint runs/x/checkpoint.pt --results-dir results/x
    python -m e2mc evaluate --checkpoint resnet50_fullckpt.pth --method vicreg --data-root /data/imagenet \\
        --results-dir results/imagenet --label-fractions 0.01 0.1
    python -m e2mc sweep --run runs/x
    python -m e2mc diagnose --checkpoint runs/x/checkpoint.pt --results-dir results/x
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from e2mc.config import LABEL_FRACTIONS, PROTOCOLS, ConfigError, read_yaml
from e2mc.data.registry import dataset_names
from e2mc.evaluation.runner import EvaluationPlan
from e2mc.methods import method_names
from e2mc.provenance import require_clean_tree
from e2mc.evaluation.transfer import TRANSFER_DATASETS

DATASET_CHOICES = dataset_names()


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
    p.add_argument("--workers", type=non_negative_int, default=8,
                   help="DataLoader workers (ImageNet, transfer datasets)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _add_plan_arguments(p: argparse.ArgumentParser, seeds: list[int]) -> None:
    p.add_argument("overrides", nargs="*", metavar="eval.key=value",
                   help="evaluation settings of the configuration's eval section, e.g. eval.probe.on=images "
                        "eval.probe.epochs=5 eval.finetune.head_lr=0.2 (the options below are shortcuts for these)")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS,
                   help="linear_probe (frozen backbone), finetune (whole network, SwAV protocol), transfer")
    p.add_argument("--label-fractions", nargs="+", type=float, metavar="F",
                   help=f"default {' '.join(f'{f:g}' for f in LABEL_FRACTIONS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=seeds, metavar="S")
    p.add_argument("--subset-dir", help="ImageNet: folder with SimCLR's 1percent.txt / 10percent.txt "
                                        "(default: --data-root; fetched if absent)")
    p.add_argument("--transfer", action="append", type=_transfer_pair, default=[], metavar="NAME=ROOT",
                   help=f"transfer dataset and its local folder; NAME in {', '.join(TRANSFER_DATASETS)} (repeatable)")
    p.add_argument("--transfer-protocol", choices=("reglog", "pooled"),
                   help="reglog: the authors' iNat18 head on the last feature map (84 epochs, steps 24/48/72; the "
                        "default on images); pooled: the linear probe on pooled features")
    p.add_argument("--probe-on", choices=("features", "images"),
                   help="features: fast probe on cached standardised features (the mini default); images: the "
                        "authors' protocol, augmented images through the frozen backbone (the ImageNet default)")
    p.add_argument("--probe-epochs", type=positive_int)
    p.add_argument("--probe-lr", type=float)
    p.add_argument("--probe-weight-decay", type=float)
    p.add_argument("--probe-weight-decays", nargs="+", type=float, metavar="WD",
                   help="choose the probe's weight decay from this grid on a held-out part of the labelled set")
    p.add_argument("--probe-batch-size", type=positive_int)
    p.add_argument("--probe-val-fraction", type=float,
                   help="hold out this fraction of the labelled set to choose the probe's epoch (top1_val_selected)")
    p.add_argument("--finetune-epochs", type=positive_int)
    p.add_argument("--finetune-backbone-lr", type=float)
    p.add_argument("--finetune-head-lr", type=float)
    p.add_argument("--finetune-schedule", choices=("step", "cosine"))
    p.add_argument("--batch-size", type=positive_int, default=512, help="images per forward pass when encoding")


def plan_from_args(args: argparse.Namespace) -> EvaluationPlan:
    """The plan of the command line: its shortcut options become ``eval.*`` overrides, then the
    explicit overrides apply, and the eval section of that configuration is the plan."""
    from e2mc.config import load_config
    from e2mc.evaluation.runner import plan_from_config

    def listing(values) -> str:
        return "[" + ", ".join(str(v) for v in values) + "]"

    shortcuts = {
        "eval.protocols": args.protocols and listing(args.protocols),
        "eval.label_fractions": args.label_fractions and listing(args.label_fractions),
        "eval.seeds": listing(args.seeds),
        "eval.transfer.protocol": args.transfer_protocol,
        "eval.probe.on": args.probe_on, "eval.probe.epochs": args.probe_epochs, "eval.probe.lr": args.probe_lr,
        "eval.probe.weight_decay": args.probe_weight_decay,
        "eval.probe.weight_decays": args.probe_weight_decays and listing(args.probe_weight_decays),
        "eval.probe.batch_size": args.probe_batch_size, "eval.probe.val_fraction": args.probe_val_fraction,
        "eval.finetune.epochs": args.finetune_epochs, "eval.finetune.backbone_lr": args.finetune_backbone_lr,
        "eval.finetune.head_lr": args.finetune_head_lr, "eval.finetune.schedule": args.finetune_schedule,
    }
    overrides = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    overrides += [f"eval.transfer.datasets.{name}={root}" for name, root in args.transfer]
    for item in args.overrides:
        if not item.startswith("eval."):
            raise ConfigError(f"{item!r}: evaluation takes only eval.* settings (e.g. eval.probe.epochs=5); the "
                              "model's own configuration comes from its checkpoint")
    cfg = load_config(None, overrides + list(args.overrides))
    return dataclasses.replace(plan_from_config(cfg.eval, None), extraction_batch_size=args.batch_size)


def _run(command):
    def run(args: argparse.Namespace) -> int:
        command(args)  # bad input raises a UserError, which `python -m e2mc` prints as one line
        return 0
    return run


def _evaluate(args: argparse.Namespace) -> None:
    from e2mc.evaluation.runner import evaluate_checkpoint

    require_clean_tree(args.results_dir)
    paths = evaluate_checkpoint(args.checkpoint, args.results_dir, plan_from_args(args), method=args.method,
                                arm=args.arm, epoch=args.epoch, dataset=args.dataset, data_root=args.data_root,
                                subset_dir=args.subset_dir, device=args.device, workers=args.workers)
    print(f"[e2mc] {len(paths)} result file(s) in {args.results_dir}")


def _sweep(args: argparse.Namespace) -> None:
    from e2mc.evaluation.runner import default_results_dir, sweep

    saved = Path(args.run_dir) / "config.yaml"  # the run's configuration names its default results folder
    config = read_yaml(saved.read_text(), str(saved)) if saved.is_file() else None
    require_clean_tree(args.results_dir or default_results_dir(config, args.run_dir))
    paths = sweep(args.run_dir, args.results_dir, plan_from_args(args), dataset=args.dataset, data_root=args.data_root,
                  subset_dir=args.subset_dir, device=args.device, workers=args.workers,
                  skip_existing=not args.overwrite)
    print(f"[e2mc] {len(paths)} result file(s) for {args.run_dir}")


def _diagnose(args: argparse.Namespace) -> None:
    from e2mc.evaluation.runner import diagnose_checkpoint

    require_clean_tree(args.results_dir)
    diagnose_checkpoint(args.checkpoint, args.results_dir, method=args.method, arm=args.arm, epoch=args.epoch,
                        dataset=args.dataset, data_root=args.data_root, n_images=args.n_images,
                        n_pairs=args.n_pairs, seed=args.seed, device=args.device, workers=args.workers)


def _add_identity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="one of our checkpoint.pt files, or an official release")
    p.add_argument("--method", choices=method_names(), help="required for official releases (read on a ResNet-50)")
    p.add_argument("--arm", help="experiment arm recorded in the results (default: inferred from the configuration)")
    p.add_argument("--epoch", type=non_negative_int,
                   help="epochs of continued pre-training recorded (default: from the file)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate``, ``sweep`` and ``diagnose`` on the subparsers of ``python -m e2mc``."""
    text = "linear probe / fine-tuning / transfer evaluation of a checkpoint; one result JSON per evaluation"
    p = sub.add_parser("evaluate", help=text, description=text)
    _add_identity_arguments(p)
    _add_data_arguments(p)
    _add_plan_arguments(p, seeds=[0, 1, 2])
    p.add_argument("--results-dir", required=True, help="where the result JSON files go")
    p.set_defaults(run=_run(_evaluate))

    text = "evaluate every checkpoint-epochNNN.pt of a training run (accuracy after each epoch, Fig. 6)"
    p = sub.add_parser("sweep", help=text, description=text)
    # dest run_dir: "run" is the namespace attribute that holds each subcommand's handler
    p.add_argument("--run", dest="run_dir", required=True,
                   help="the run's output_dir (trained with train.keep_epoch_checkpoints=true)")
    _add_data_arguments(p)
    _add_plan_arguments(p, seeds=[0])
    p.set_defaults(seeds=[0])
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
    p.add_argument("--n-pairs", type=positive_int, default=8, help="dimension pairs whose 2-D samples are stored")
    p.add_argument("--seed", type=int, default=0, help="chooses the images and the dimension pairs")
    p.set_defaults(run=_run(_diagnose))
