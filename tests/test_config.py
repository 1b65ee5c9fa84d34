"""Configuration files: every shipped config loads, and mistakes are named."""
from pathlib import Path

import pytest

from e2mc.config import ConfigError, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Training configurations; configs/experiments/ holds experiment descriptions (tests/test_experiments.py).
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "experiments" not in p.relative_to(CONFIG_DIR).parts)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.method in path.stem or cfg.method in str(path)


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(CONFIGS[0], ["train.epochs=3", "criterion.name=none", "optim.base_lr=1e-2",
                                   "eval.label_fractions=[0.01, 0.1]", "train.init=null"])
    assert (cfg.train.epochs, cfg.criterion.name, cfg.optim.base_lr) == (3, "none", 0.01)
    assert cfg.eval.label_fractions == [0.01, 0.1] and cfg.train.init is None


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown configuration key 'train.epoch'. Did you mean 'epochs'"),
    ("trian.epochs=3", "unknown configuration key 'trian'"),
    ("train.epochs=three", "train.epochs must be int"),
    ("criterion.name=e2mcc", "criterion.name must be one of"),
    ("data.batch_size=1", "data.batch_size must be >= 2"),
    ("train.epochs", "section.key=value"),
])
def test_mistakes_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(CONFIGS[0], [override])


def test_hash_changes_with_content():
    a, b = load_config(CONFIGS[0]), load_config(CONFIGS[0], ["train.seed=1"])
    assert a.hash() != b.hash() and a.hash() == load_config(CONFIGS[0]).hash()


def test_missing_file_is_clear():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_hash_ignores_where_a_run_lives_but_not_where_it_starts():
    a = load_config(CONFIGS[0])
    moved = load_config(CONFIGS[0], ["train.output_dir=/elsewhere/run", "data.root=/data/fmnist", "data.workers=2",
                                     "eval.results_dir=/elsewhere/results"])
    assert moved.hash() == a.hash()
    assert load_config(CONFIGS[0], ["train.init=/other/base.pt"]).hash() != a.hash()
