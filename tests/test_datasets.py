"""The dataset registry (e2mc.data.registry): one record per dataset that every layer asks, instead of
comparing data.dataset with "imagenet" or "fashion_mnist" in the training loop and in evaluation."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from e2mc.config import Config, ConfigError, validate
from e2mc.data import registry
from e2mc.data.registry import DATASETS, dataset_names, get_dataset
from e2mc.evaluation.runner import EvaluationPlan, evaluation_root, plan_from_config
from e2mc.methods import get_method
from e2mc.registry import Registry
from e2mc.build import build_stream
from fake_data import write_fake_fashion_mnist


def test_the_records_say_what_differs():
    assert dataset_names() == ("fashion_mnist", "imagenet")
    fashion, imagenet = get_dataset("fashion_mnist"), get_dataset("imagenet")
    assert (fashion.scale, fashion.channels, fashion.probe_on) == ("mini", 1, "features")
    assert (imagenet.scale, imagenet.channels, imagenet.probe_on) == ("imagenet", 3, "images")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose one of fashion_mnist, imagenet"):
        get_dataset("cifar")


def test_the_evaluation_defaults_come_from_the_record(monkeypatch):
    """Change a record and the evaluation follows: the rule is read from the registry, not rewritten."""
    cfg = Config()
    assert plan_from_config(cfg.eval, "fashion_mnist").probe_on == "features"
    assert plan_from_config(cfg.eval, "imagenet").probe_on == "images"
    assert EvaluationPlan(("linear_probe",), (0.01,), (0,)).for_dataset("imagenet").probe_on == "images"
    fashion, imagenet = DATASETS.get("fashion_mnist"), DATASETS.get("imagenet")
    monkeypatch.setattr(registry, "DATASETS", Registry("dataset", (replace(fashion, probe_on="images"), imagenet)))
    assert plan_from_config(cfg.eval, "fashion_mnist").probe_on == "images"


def test_evaluation_root_of_an_imagenet_run_is_the_parent_of_train():
    cfg = Config()
    cfg.data.dataset, cfg.data.root = "imagenet", "/data/imagenet/train"
    assert evaluation_root(cfg) == "/data/imagenet"
    cfg.data.root = "/data/imagenet"
    assert evaluation_root(cfg) == "/data/imagenet"
    cfg.data.dataset, cfg.data.root = "fashion_mnist", "/data/train"
    assert evaluation_root(cfg) == "/data/train"  # Fashion-MNIST has no train/ sub-folder


def test_the_config_accepts_exactly_the_registered_datasets():
    cfg = Config()
    cfg.data.dataset = "cifar"
    with pytest.raises(ConfigError, match="data.dataset"):
        validate(cfg)


@pytest.mark.parametrize("method, sizes", [("vicreg", [28, 28]), ("swav", [28, 28, 16, 16, 16, 16])])
def test_the_training_stream_augments_with_the_methods_mini_views(tmp_path, method, sizes):
    root = write_fake_fashion_mnist(tmp_path, n_train=40, n_test=10)
    cfg = Config()
    cfg.method, cfg.data.root, cfg.data.batch_size, cfg.data.limit = method, str(root), 8, 16
    stream = build_stream(cfg, torch.device("cpu"))
    assert stream.steps_per_epoch == 2  # 16 of the 40 images
    views = next(iter(stream.epoch(0)))
    assert [tuple(v.shape) for v in views] == [(8, 1, s, s) for s in sizes]
    assert len(get_method(method).mini_views) == len(sizes)
