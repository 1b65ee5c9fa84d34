"""docs/extending.md, executed: the document's method module (in a temporary module),
registered, pre-trained from scratch, exported as a base, and continued with E2MC and a probe after
every epoch, all through the commands the document gives, on the fake Fashion-MNIST of fake_data."""
from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from e2mc import experiments
from e2mc.__main__ import main
from e2mc.build import build_network
from e2mc.checkpoints import load
from e2mc.config import config_from_dict
from e2mc.methods import get_method, method_names, unregister
from fake_data import write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent

# The method module of the document's walk-through, read from the document itself.
DOCUMENT = (ROOT / "docs" / "extending.md").read_text()
METHOD_MODULE = DOCUMENT.split("### A worked example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def simclr(tmp_path, monkeypatch):
    """The method module imported from a temporary folder (which registers it); unregistered afterwards."""
    (tmp_path / "my_simclr.py").write_text(METHOD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_simclr")
    try:
        yield module
    finally:
        unregister("simclr")
        sys.modules.pop("my_simclr", None)


def write_config(path: Path, tree: dict) -> str:
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_the_document_gives_a_whole_method_module():
    assert "register(SimCLR())" in METHOD_MODULE and "class SimCLR(Method)" in METHOD_MODULE


def test_a_new_method_pretrains_exports_and_continues_with_a_probe_every_epoch(simclr, tmp_path, monkeypatch):
    assert "simclr" in method_names() and get_method("simclr").head_options() == ["projector"]
    monkeypatch.chdir(tmp_path)  # runs/ and results/ of the commands land here
    root = write_fake_fashion_mnist(tmp_path / "fashion", n_train=200, n_test=50)
    # Pre-train from scratch: one epoch of cosine schedule needs warmup_epochs=0; limit >= batch_size.
    pretrain = {
        "method": "simclr",
        "data": {"dataset": "fashion_mnist", "root": str(root), "batch_size": 32, "limit": 64},
        "model": {"backbone": "convnet", "widths": [4, 4, 8, 8], "heads": {"projector": [32, 16]}},
        "loss": {"params": {"temperature": 0.5}},
        "criterion": {"name": "none"},
        "optim": {"name": "sgd", "base_lr": 0.05, "schedule": "cosine", "warmup_epochs": 0},
        "train": {"epochs": 1, "output_dir": "runs/mini/pretrain/simclr", "device": "cpu"},
    }
    assert main(["pretrain", "--config", write_config(tmp_path / "pretrain.yaml", pretrain)]) == 0
    base = Path("results/mini/checkpoints/simclr.pt")
    assert main(["export-base", "--run", "runs/mini/pretrain/simclr", "--to", str(base)]) == 0
    state = load(base)
    network = build_network(config_from_dict(state["config"]))
    network.load_state_dict(state["model"], strict=True)

    # Continue from the base with E2MC, a linear probe after every epoch (and of the base, epoch 0).
    cont = {**pretrain, "criterion": {"name": "e2mc", "transform": "sigmoid", "ent_coeff": 10.0, "cov_coeff": 1.0},
            "optim": {"name": "sgd", "base_lr": 0.01, "schedule": "constant"},
            "train": {"epochs": 1, "init": str(base), "output_dir": "runs/mini/simclr", "device": "cpu"},
            "eval": {"every_epoch": True, "label_fractions": [1.0], "seeds": [0], "probe": {"epochs": 2}}}
    assert main(["continue", "--config", write_config(tmp_path / "continue.yaml", cont)]) == 0
    probes = sorted(Path("runs/mini/simclr/eval").rglob("*.json"))
    records = [json.loads(p.read_text()) for p in probes]
    assert sorted(r["epoch"] for r in records) == [0, 1]
    assert all(r["method"] == "simclr" and r["arm"] == "e2mc" for r in records)
    assert all(0.0 <= r["metrics"]["top1"] <= 100.0 for r in records)


def test_a_registered_method_joins_the_full_grid_only_once_its_base_exists(simclr, tmp_path):
    full = dataclasses.replace(experiments.parts()["full"], checkpoints=str(tmp_path),
                               optional_methods=("barlowtwins", "simclr"))
    paper = tuple(m for m in method_names() if get_method(m).in_paper)
    assert experiments.part_methods(full) == paper  # no base yet: not in the grid, and nothing fails
    torch.save({}, tmp_path / "simclr.pt")
    assert experiments.part_methods(full) == (*paper, "simclr")
    assert experiments.parts()["full"].methods == paper


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_pretrain_mini_takes_one_method_and_keeps_an_existing_base(tmp_path):
    """`make pretrain-mini METHODS=...` pre-trains and exports the named methods whose base is missing;
    an existing base is skipped, and only FORCE=1 passes --force to export-base. (PY=echo prints the
    commands instead of running them; -o skips the venv and data prerequisites.)"""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "vicreg.pt").write_bytes(b"committed")

    def make(*arguments: str) -> str:
        command = ["make", "-s", "-C", str(ROOT), "-o", "data", "-o", ".venv/.e2mc-installed", "pretrain-mini",
                   "PY=echo", f"RESULTS={tmp_path}", *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    printed = make("METHODS=vicreg simclr")
    assert f"{checkpoints}/vicreg.pt exists; skipped" in printed
    assert "pretrain --config configs/mini/pretrain/vicreg.yaml" not in printed
    assert "pretrain --config configs/mini/pretrain/simclr.yaml" in printed
    assert f"export-base --run runs/mini/pretrain/simclr --to {checkpoints}/simclr.pt" in printed
    assert "--force" not in printed
    forced = make("METHODS=vicreg", "FORCE=1")
    assert f"export-base --run runs/mini/pretrain/vicreg --to {checkpoints}/vicreg.pt --force" in forced
