"""The training loop: exact resume after SIGKILL and SIGTERM, non-finite losses, starting points."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2mc import checkpoints
from e2mc.config import load_config
from e2mc.epoch import NonFiniteLossError
from e2mc.methods import build_model
from e2mc.meter import read_metrics
from e2mc.train import train
from fake_data import write_fake_fashion_mnist
from run_records import comparable_records, segment_starts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def tiny_overrides(method, data_root, output_dir, epochs=2, criterion="e2mc"):
    heads = {"vicreg": "{expander: [64, 64]}", "swav": "{hidden_dim: 32, output_dim: 16, n_prototypes: 10}",
             "simsiam": "{dim: 32, pred_dim: 8, hidden_dim: 32}"}[method]
    overrides = [f"data.root={data_root}", "data.batch_size=64", f"model.heads={heads}", f"train.epochs={epochs}",
                 f"train.output_dir={output_dir}", "train.log_every=1", f"criterion.name={criterion}",
                 "optim.warmup_epochs=0"]  # no warm-up longer than these short runs
    if method == "swav":
        overrides.append("loss.params={queue_length: 128}")
    return overrides


def final_weights(output_dir):
    return checkpoints.load(Path(output_dir) / "checkpoint.pt")["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def cli(method, overrides):
    return [sys.executable, "-m", "e2mc", "pretrain", "--config", str(ROOT / f"configs/mini/pretrain/{method}.yaml"),
            *overrides, "optim.warmup_epochs=1"]


def wait_for_step_line(metrics_path, epoch, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if metrics_path.exists():
            for line in metrics_path.read_text().splitlines():
                rec = json.loads(line)
                if rec["kind"] == "step" and rec["epoch"] == epoch:
                    return
        time.sleep(0.05)
    raise TimeoutError("no step of the epoch was logged in time")


@pytest.mark.parametrize("method", ["vicreg", "swav"])
def test_sigkill_mid_epoch_then_restart_equals_uninterrupted_run(tmp_path, data_root, method):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cli(method, tiny_overrides(method, data_root, reference)), check=True, env=env,
                   capture_output=True)
    process = subprocess.Popen(cli(method, tiny_overrides(method, data_root, killed)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step_line(killed / "metrics.jsonl", epoch=1, process=process)  # epoch 0 checkpointed, epoch 1 begun
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints.load(killed / "checkpoint.pt")["epoch"] == 1
    subprocess.run(cli(method, tiny_overrides(method, data_root, killed)), check=True, env=env, capture_output=True)
    assert_same_weights(final_weights(killed), final_weights(reference))
    assert comparable_records(killed) == comparable_records(reference)
    # the killed piece reached the epoch-1 checkpoint; the restart resumed there
    assert segment_starts(reference) == [(0, 0)] and segment_starts(killed) == [(0, 0), (1, 0)]


def test_sigterm_saves_mid_epoch_and_resume_continues_exactly(tmp_path, data_root):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cli("simsiam", tiny_overrides("simsiam", data_root, reference)), check=True, env=env,
                   capture_output=True)
    process = subprocess.Popen(cli("simsiam", tiny_overrides("simsiam", data_root, stopped)), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step_line(stopped / "metrics.jsonl", epoch=0, process=process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, out  # stopped, not finished
    assert "stopped by SIGTERM" in out
    state = checkpoints.load(stopped / "checkpoint.pt")
    assert state["epoch"] < 2 and (state["epoch"], state["step"]) != (0, 0)
    assert json.loads((stopped / "summary.json").read_text())["status"] == "interrupted"
    subprocess.run(cli("simsiam", tiny_overrides("simsiam", data_root, stopped)), check=True, env=env,
                   capture_output=True)
    assert_same_weights(final_weights(stopped), final_weights(reference))
    assert comparable_records(stopped) == comparable_records(reference)
    assert segment_starts(stopped) == [(0, 0), (state["epoch"], state["step"])]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root):
    good = tmp_path / "good"
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml", tiny_overrides("vicreg", data_root, good, epochs=1)))
    out = tmp_path / "run"
    exploding = tiny_overrides("vicreg", data_root, out, epochs=2) + [
        f"train.init={good / 'checkpoint.pt'}", "optim.base_lr=1e30", "optim.schedule=constant"]
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 0") as error:
        train(load_config(ROOT / "configs/mini/vicreg.yaml", exploding))
    assert "last good state" in str(error.value)
    assert_same_weights(final_weights(out), final_weights(good))  # the starting point, untouched


def test_continue_starts_from_official_layout_release(tmp_path, data_root):
    """A file in the official VICReg full-checkpoint layout (module.-prefixed) lands tensor for tensor."""
    torch.manual_seed(5)
    release = build_model("vicreg", "convnet", backbone_widths=(16, 32, 64, 128), expander=(64, 64)).state_dict()
    path = tmp_path / "resnet50_fullckpt.pth"
    torch.save({"epoch": 1000, "model": {f"module.{k}": v for k, v in release.items()}}, path)
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs/mini/vicreg.yaml",
                      tiny_overrides("vicreg", data_root, out, epochs=0) + [f"train.init={path}"])
    train(cfg)
    assert_same_weights(final_weights(out), release)


def test_resume_refuses_another_optimizer(tmp_path, data_root):
    out = tmp_path / "run"
    overrides = tiny_overrides("vicreg", data_root, out, epochs=0)
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml", overrides))
    with pytest.raises(ValueError, match="another configuration \\(optim.name: 'lars' -> 'sgd'"):
        train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml", overrides + ["optim.name=sgd"]))


def test_continue_refuses_a_checkpoint_of_another_method(tmp_path, data_root):
    first = tmp_path / "simsiam"
    train(load_config(ROOT / "configs/mini/pretrain/simsiam.yaml",
                      tiny_overrides("simsiam", data_root, first, epochs=0)))
    cfg = load_config(ROOT / "configs/mini/vicreg.yaml",
                      tiny_overrides("vicreg", data_root, tmp_path / "v", epochs=0)
                      + [f"train.init={first / 'checkpoint.pt'}"])
    with pytest.raises(ValueError, match="holds a simsiam network"):
        train(cfg)


@pytest.mark.parametrize("criterion", ["none", "e2mc", "uniformity", "mmcr", "vc"])
def test_every_criterion_trains_one_epoch_and_logs_its_terms(tmp_path, data_root, criterion):
    out = tmp_path / criterion
    train(load_config(ROOT / "configs/mini/pretrain/swav.yaml",
                      tiny_overrides("swav", data_root, out, epochs=1, criterion=criterion)))
    epoch = read_metrics(out, "epoch")[0]
    assert {"loss", "ssl_loss", "marginal_entropy", "covariance_penalty", "embedding_std", "lr"} <= epoch.keys()
    assert ("add_loss" in epoch) == (criterion != "none")
    if criterion != "none":
        assert epoch["loss"] == pytest.approx(epoch["ssl_loss"] + epoch["add_loss"], rel=1e-5)
