"""The evaluation settings are one typed object (e2mc.eval_settings.EvalConfig), checked in one place.

A bad value is refused once, with the same one line, wherever it enters: an option of `evaluate`, a YAML
configuration, an `eval.*` override, the reproduction's --epoch-fractions, or the protocols' own settings
objects. The options of `evaluate` and `sweep` are generated from the fields and parse to the settings a
hand-written reference gives; every option name users and scripts type still exists."""
from __future__ import annotations

from pathlib import Path

import pytest

import e2mc
from e2mc.__main__ import build_parser, main
from e2mc.config import ConfigError, load_config
from e2mc.eval_settings import FIELDS, EvalConfig, FinetuneConfig, ProbeConfig, TransferConfig
from e2mc.evaluation import EvaluationPlan, FinetuneSettings, ProbeSettings
from e2mc.evaluation.cli import option, settings_from_args

ROOT = Path(e2mc.__file__).resolve().parent.parent

# The options of the hand-written command line before the settings generated it (slurm/eval_linear.sh,
# the Makefile, README and docs type them).
HISTORICAL_OPTIONS = ["--protocols", "--label-fractions", "--seeds", "--transfer", "--transfer-protocol",
                      "--probe-on", "--probe-epochs", "--probe-lr", "--probe-weight-decay", "--probe-weight-decays",
                      "--probe-batch-size", "--probe-val-fraction", "--finetune-epochs", "--finetune-backbone-lr",
                      "--finetune-head-lr", "--finetune-schedule", "--batch-size", "--subset-dir"]


def parsed(*argv: str) -> EvalConfig:
    return settings_from_args(build_parser().parse_args([str(a) for a in argv]))


def evaluate(*argv: str) -> EvalConfig:
    return parsed("evaluate", "--checkpoint", "c.pt", "--results-dir", "out", *argv)


def test_every_historical_option_is_generated_and_every_setting_has_one():
    actions = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse keeps them there)
    for command in ("evaluate", "sweep"):
        options = {s for a in actions[command]._actions for s in a.option_strings}
        assert set(HISTORICAL_OPTIONS) <= options, command
        assert {option(path) for path, f in FIELDS.items() if f.metadata["cli"]} <= options, command


def test_generated_options_parse_to_the_hand_written_settings():
    settings = evaluate(
        "--protocols", "linear_probe", "transfer", "--label-fractions", "0.01", "0.5", "--seeds", "3", "4",
        "--transfer", "cifar10=/data/cifar", "--transfer", "dtd=/data/dtd", "--transfer-protocol", "pooled",
        "--probe-on", "images", "--probe-epochs", "5", "--probe-lr", "0.2", "--probe-weight-decay", "0.001",
        "--probe-weight-decays", "0.1", "0.01", "--probe-batch-size", "64", "--probe-val-fraction", "0.1",
        "--finetune-epochs", "2", "--finetune-backbone-lr", "0.05", "--finetune-head-lr", "0.3",
        "--finetune-schedule", "cosine", "--batch-size", "128", "eval.finetune.batch_size=32")
    reference = EvalConfig(
        label_fractions=[0.01, 0.5], seeds=[3, 4], protocols=["linear_probe", "transfer"],
        probe=ProbeConfig(on="images", epochs=5, batch_size=64, lr=0.2, weight_decay=0.001, weight_decays=[0.1, 0.01],
                          val_fraction=0.1),
        finetune=FinetuneConfig(epochs=2, batch_size=32, backbone_lr=0.05, head_lr=0.3, schedule="cosine"),
        transfer=TransferConfig(datasets={"cifar10": "/data/cifar", "dtd": "/data/dtd"}, protocol="pooled"),
        batch_size=128)
    assert settings == reference


def test_options_left_out_keep_the_commands_defaults_and_overrides_win():
    assert evaluate() == EvalConfig(seeds=[0, 1, 2])  # evaluate: three probe seeds, as before
    assert parsed("sweep", "--run", "r") == EvalConfig()  # sweep: the configuration's one seed
    assert evaluate().batch_size == 512 and evaluate().label_fractions == [0.01, 0.1, 1.0]
    assert evaluate("--probe-epochs", "5", "eval.probe.epochs=7").probe.epochs == 7


def test_the_settings_hash_as_before():
    """The eval section is part of Config.hash(): the committed configurations keep theirs (their result
    files are named by it), and the setting added with the generated options is left out at its default."""
    assert load_config(ROOT / "configs/mini/vicreg.yaml").hash() == "7491f1bb8bc532b1"
    assert load_config(ROOT / "configs/imagenet/swav.yaml").hash() == "7f6a8c3b593b7872"
    plain = load_config(None).hash()
    assert load_config(None, ["eval.batch_size=512"]).hash() == plain != load_config(None, ["eval.batch_size=256"]).hash()


FRACTION = "eval.label_fractions must hold numbers in (0, 1], got 1.5"
EPOCHS = "eval.probe.epochs must be >= 1, got 0"


def _yaml(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text((ROOT / "configs/mini/vicreg.yaml").read_text() + f"\n{section}\n")
    return path


def _command_line(capsys, argv) -> str:
    """stderr of the command line, which must refuse with exit status 2 and no traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # an argparse type error: its usage, then one error line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("entry", ["option", "yaml", "override", "epoch-fractions"])
def test_a_bad_label_fraction_is_refused_once_with_one_line_wherever_it_enters(capsys, tmp_path, entry):
    if entry == "option":
        err = _command_line(capsys, ["evaluate", "--checkpoint", tmp_path / "no.pt", "--results-dir", tmp_path,
                                     "--label-fractions", "0.1", "1.5"])
    elif entry == "epoch-fractions":
        err = _command_line(capsys, ["reproduce", "--epoch-fractions", "1.5", "--dry-run"])
    else:
        config = _yaml(tmp_path, "eval:\n  label_fractions: [0.1, 1.5]") if entry == "yaml" else \
            ROOT / "configs/mini/vicreg.yaml"
        extra = ["eval.label_fractions=[0.1, 1.5]"] if entry == "override" else []
        err = _command_line(capsys, ["continue", "--config", config, f"train.output_dir={tmp_path / 'run'}", *extra])
        assert not (tmp_path / "run").exists()
    assert err.count(FRACTION) == 1, err
    assert err.strip().splitlines()[-1].endswith(FRACTION)  # the last line says it all


def test_a_bad_probe_setting_is_refused_by_the_same_rule_in_every_form(capsys, tmp_path):
    err = _command_line(capsys, ["evaluate", "--checkpoint", tmp_path / "no.pt", "--results-dir", tmp_path,
                                 "--probe-epochs", "0"])
    assert err == f"configuration error: {EPOCHS}\n"
    with pytest.raises(ConfigError) as from_yaml:
        load_config(_yaml(tmp_path, "eval:\n  probe:\n    epochs: 0"))
    with pytest.raises(ValueError) as from_settings:
        ProbeSettings(epochs=0)  # the probe's own settings, as the library is called
    with pytest.raises(ValueError) as from_finetune:
        FinetuneSettings(epochs=0)
    with pytest.raises(ValueError) as from_plan:
        EvaluationPlan(label_fractions=(0.1, 1.5))
    assert str(from_yaml.value) == str(from_settings.value) == EPOCHS
    assert str(from_finetune.value) == "eval.finetune.epochs must be >= 1, got 0"
    assert str(from_plan.value) == FRACTION

