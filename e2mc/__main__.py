"""Command line: ``python -m e2mc <command> ...`` (also installed as ``e2mc``).

    python -m e2mc continue --config configs/mini/vicreg.yaml criterion.name=e2mc train.epochs=10
    python -m e2mc pretrain --config configs/mini/vicreg.yaml
"""
from __future__ import annotations

import argparse
import sys

from e2mc.config import ConfigError, load_config


def _train_command(args) -> int:
    from e2mc.train import NonFiniteLossError, train

    cfg = load_config(args.config, args.overrides)
    if args.command == "continue" and not cfg.train.init:
        raise ConfigError("continue needs a pre-trained model: set train.init=<checkpoint> (an official release "
                          "or a checkpoint.pt of ours, e.g. from `python -m e2mc pretrain`)")
    if args.command == "pretrain" and cfg.train.init:
        raise ConfigError("pretrain starts from random weights; remove train.init (or use `continue`)")
    try:
        summary = train(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if summary["status"] == "interrupted":
        print(f"[e2mc] stopped by {summary['signal']} at epoch {summary['epoch']}; checkpoint saved in "
              f"{cfg.train.output_dir}; run the same command again to resume", flush=True)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
