"""The ``evaluate``, ``sweep`` and ``diagnose`` subcommands of ``python -m e2mc``.

    python -m e2mc evaluate --checkpoint runs/x/checkpoint.pt --results-dir results/x
    python -m e2mc evaluate --checkpoint resnet50_fullckpt.pth --method vicreg --data-root /data/imagenet \\
        --results-dir results/imagenet --label-fractions 0.01 0.1
    python -m e2mc sweep --run runs/x
    python -m e2mc diagnose --checkpoint runs/x/checkpoint.pt --results-dir results/x
"""
from __future__ import annotations

import argparse
from pathlib import Path

from e2mc.config import ConfigError, apply_overrides, config_from_dict, read_yaml
from e2mc.data.registry import dataset_names
from e2mc.eval_settings import FIELDS, EvalConfig, default_value, setting_fields
from e2mc.evaluation.plan import EvaluationPlan, plan_from_config
from e2mc.evaluation.runner import default_results_dir, diagnose_checkpoint, evaluate_checkpoint, sweep
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


def _add_data_arguments(p: argparse.ArgumentParser, subsets: bool = True) -> None:
    p.add_argument("--dataset", choices=DATASET_CHOICES,
                   help="evaluation dataset (default: the checkpoint's training dataset; imagenet for releases)")
    p.add_argument("--data-root", help="dataset folder (Fashion-MNIST files; ImageNet: the folder holding train/ "
                                       "and val/); default: the checkpoint's data.root")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=non_negative_int, default=8,
                   help="DataLoader workers (ImageNet, transfer datasets)")
    if subsets:  # the label subsets of the probes (diagnostics use none)
        p.add_argument("--subset-dir", help="ImageNet: folder with SimCLR's 1percent.txt / 10percent.txt "
                                            "(default: --data-root; fetched if absent)")


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


def option(path: str) -> str:
    """The command-line option of the setting ``eval.<path>``: ``probe.epochs`` is ``--probe-epochs``."""
    return FIELDS[path].metadata["flag"] or "--" + path.replace(".", "-").replace("_", "-")


def _default_text(value) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) \
        else str(value)


def add_setting_arguments(p: argparse.ArgumentParser, **defaults) -> None:
    """The options of the evaluation settings, one per field of :class:`e2mc.eval_settings.EvalConfig`
    (name, type, help and choices from its declaration). An option left out leaves the setting to the
    configuration: ``defaults`` (by option dest, e.g. ``seeds=[0, 1, 2]``) are this command's own."""
    p.add_argument("overrides", nargs="*", metavar="eval.key=value",
                   help="evaluation settings of the configuration's eval section, e.g. eval.probe.on=images "
                        "eval.probe.epochs=5 eval.finetune.head_lr=0.2 (the options below are shortcuts for these)")
    for path, f, kind in setting_fields():
        if not f.metadata["cli"]:
            continue
        rule, flag = f.metadata["rule"], option(path)
        dest = flag[2:].replace("-", "_")
        default = defaults.get(dest, default_value(f))
        text = f.metadata["help"] + (f"; NAME in {', '.join(TRANSFER_DATASETS)}" if kind is dict else "")
        if default not in (None, [], {}):
            text += f"; default {_default_text(default)}"
        kwargs = {"metavar": "{" + ",".join(rule.choices) + "}"} if rule.choices else {}
        if kind is dict:  # NAME=ROOT pairs, repeatable
            kwargs.update(action="append", type=_transfer_pair, metavar="NAME=ROOT")
        elif kind is list:
            kwargs.update(nargs="+", type=f.metadata["item"])
        else:
            kwargs.update(type=kind)
        p.add_argument(flag, dest=dest, default=defaults.get(dest), help=text, **kwargs)


def settings_from_args(args: argparse.Namespace) -> EvalConfig:
    """The evaluation settings of a command line: the configuration's defaults, the options given, then
    the explicit ``eval.*`` overrides, read and checked as a configuration's eval section is."""
    section: dict = {}
    for path, f, kind in setting_fields():
        value = getattr(args, option(path)[2:].replace("-", "_"), None) if f.metadata["cli"] else None
        if value is not None:
            *sections, name = path.split(".")
            node = section
            for key in sections:
                node = node.setdefault(key, {})
            node[name] = dict(value) if kind is dict else value
    for item in args.overrides:
        if not item.startswith("eval."):
            raise ConfigError(f"{item!r}: evaluation takes only eval.* settings (e.g. eval.probe.epochs=5); the "
                              "model's own configuration comes from its checkpoint")
    return config_from_dict(apply_overrides({"eval": section}, list(args.overrides))).eval


def plan_from_args(args: argparse.Namespace) -> EvaluationPlan:
    """The plan of the command line's evaluation settings (:func:`settings_from_args`)."""
    return plan_from_config(settings_from_args(args), None)


def _run(command):
    def run(args: argparse.Namespace) -> int:
        command(args)  # bad input raises a UserError, which `python -m e2mc` prints as one line
        return 0
    return run


def _evaluate(args: argparse.Namespace) -> None:
    require_clean_tree(args.results_dir)
    paths = evaluate_checkpoint(args.checkpoint, args.results_dir, plan_from_args(args), method=args.method,
                                arm=args.arm, epoch=args.epoch, dataset=args.dataset, data_root=args.data_root,
                                subset_dir=args.subset_dir, device=args.device, workers=args.workers)
    print(f"[e2mc] {len(paths)} result file(s) in {args.results_dir}")


def _sweep(args: argparse.Namespace) -> None:
    saved = Path(args.run_dir) / "config.yaml"  # the run's configuration names its default results folder
    config = read_yaml(saved.read_text(), str(saved)) if saved.is_file() else None
    require_clean_tree(args.results_dir or default_results_dir(config, args.run_dir))
    paths = sweep(args.run_dir, args.results_dir, plan_from_args(args), dataset=args.dataset, data_root=args.data_root,
                  subset_dir=args.subset_dir, device=args.device, workers=args.workers,
                  skip_existing=not args.overwrite)
    print(f"[e2mc] {len(paths)} result file(s) for {args.run_dir}")


def _diagnose(args: argparse.Namespace) -> None:
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
    add_setting_arguments(p, seeds=[0, 1, 2])
    p.add_argument("--results-dir", required=True, help="where the result JSON files go")
    p.set_defaults(run=_run(_evaluate))

    text = "evaluate every checkpoint-epochNNN.pt of a training run (accuracy after each epoch, Fig. 6)"
    p = sub.add_parser("sweep", help=text, description=text)
    # dest run_dir: "run" is the namespace attribute that holds each subcommand's handler
    p.add_argument("--run", dest="run_dir", required=True,
                   help="the run's output_dir (trained with train.keep_epoch_checkpoints=true)")
    _add_data_arguments(p)
    add_setting_arguments(p, seeds=[0])
    p.add_argument("--results-dir", help="default: the run's eval.results_dir, else <run>/eval")
    p.add_argument("--overwrite", action="store_true", help="re-run evaluations whose result file exists")
    p.set_defaults(run=_run(_sweep))

    text = ("embedding diagnostics of a checkpoint: marginal entropy after each transform, covariance penalty, "
            "RankMe, and 2-D samples of fixed images and dimension pairs (Fig. 2c/d)")
    p = sub.add_parser("diagnose", help=text, description=text)
    _add_identity_arguments(p)
    _add_data_arguments(p, subsets=False)
    p.add_argument("--results-dir", required=True)
    p.add_argument("--n-images", type=int, default=2048, help="test images measured (a fixed seeded choice)")
    p.add_argument("--n-pairs", type=positive_int, default=8, help="dimension pairs whose 2-D samples are stored")
    p.add_argument("--seed", type=int, default=0, help="chooses the images and the dimension pairs")
    p.set_defaults(run=_run(_diagnose))
