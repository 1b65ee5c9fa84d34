"""Command line: ``python -m e2mc <command> ...`` (also installed as ``e2mc``).

    python -m e2mc continue --config configs/mini/vicreg.yaml criterion.name=e2mc train.epochs=10
    python -m e2mc pretrain --config configs/mini/vicreg.yaml
    python -m e2mc evaluate --checkpoint runs/mini/vicreg/checkpoint.pt --results-dir results/mini/eval
    python -m e2mc sweep --run runs/mini/vicreg
    python -m e2mc diagnose --checkpoint runs/mini/vicreg/checkpoint.pt --results-dir results/mini/diagnostics
    python -m e2mc submit --config 'configs/imagenet/{method}.yaml' --grid method=vicreg,swav --grid arm=original,e2mc
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from e2mc import cluster, migrations, reproduce
from e2mc.config import ConfigError, load_config
from e2mc.errors import UserError, describe_os_error
from e2mc.evaluation import cli as evaluation_cli
from e2mc.provenance import code_state, require_clean_tree
from e2mc.runs import run_training
from e2mc.epoch import NonFiniteLossError


def _train_command(args) -> int:
    cluster.export_torch_distributed()  # under srun with several tasks: RANK, WORLD_SIZE, ... from SLURM
    cfg = load_config(args.config, args.overrides)
    require_clean_tree(cfg.train.output_dir, cfg.eval.results_dir if cfg.eval.every_epoch else None)
    if args.command == "continue" and not cfg.train.init:
        raise ConfigError("continue needs a pre-trained model: set train.init=<checkpoint> (an official release "
                          "or a checkpoint.pt of ours, e.g. from `python -m e2mc pretrain`)")
    if args.command == "pretrain" and cfg.train.init:
        raise ConfigError("pretrain starts from random weights; remove train.init (or use `continue`)")
    try:
        summary = run_training(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if summary["status"] == "interrupted":
        outcome = cluster.requeue_after_stop(summary)  # under SLURM, rank 0 requeues the job if warranted
        print(f"[e2mc] stopped by {summary['signal']} at epoch {summary['epoch']}; checkpoint saved in "
              f"{summary['output_dir']}; {outcome.message}", flush=True)
        # Unfinished: rank 0 exits as the signal would have (128 + its number: 143 for SIGTERM, 130 for
        # Ctrl-C) unless it requeued the job. Other ranks exit 0: srun --kill-on-bad-exit would otherwise
        # kill rank 0 while it requeues.
        if outcome.requeued or os.environ.get("RANK", "0") != "0":
            return 0
        return 128 + signal.Signals[summary["signal"]].value
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2mc", description="E2MC: continued pre-training of SSL models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("continue", "continue training a pre-trained model with its loss plus E2MC or a baseline criterion"),
        ("pretrain", "train a model from scratch (the mini-scale stand-in for the official releases)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", required=True, help="YAML configuration (see configs/)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override configuration values, e.g. criterion.name=e2mc train.epochs=3")
        p.set_defaults(run=_train_command)
    evaluation_cli.add_commands(sub)  # evaluate, sweep, diagnose
    reproduce.add_commands(sub)  # reproduce, export-base, notebooks
    migrations.add_commands(sub)  # migrate
    text = "submit a grid of training runs (method x arm x configuration values x seed) as a submitit job array"
    try:
        from e2mc import launcher  # lazy: it imports submitit, an optional dependency (the `repro` extra)
    except ModuleNotFoundError as e:
        if e.name != "submitit":
            raise
        # Without it `submit` takes any arguments (no option is parsed) and says what to install.
        p = sub.add_parser("submit", help=text, description=text, prefix_chars="\0", add_help=False)
        p.add_argument("arguments", nargs="*")
        p.set_defaults(run=_needs_repro_extra)
    else:
        p = sub.add_parser("submit", help=text, description=text)
        launcher.add_arguments(p)
        p.set_defaults(run=launcher.submit_command)
    return parser


def _needs_repro_extra(args) -> int:
    print(f"error: `{args.command}` needs submitit, which the core install leaves out: "
          "pip install 'e2mc[repro]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code_state()  # the commit the files of this process will name: the code it started with
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one outside it: nothing was saved then
        print("\n[e2mc] interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    except UserError as e:  # bad input: one line naming the file or the setting; anything else is a bug
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: missing, a folder, read-only, a full disk
        message = describe_os_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
