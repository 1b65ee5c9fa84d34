"""The checks that need a CUDA device (issue 14); every test here is skipped without one.

`make gpu-check` (scripts/gpu_check.sh) runs this file first, then the two benchmarks:

* a bf16-autocast training step of every registered method, through the training loop's own
  internals (setup, start, train_one_epoch) on fake Fashion-MNIST, with the loss finite;
* channels_last weights and inputs on CUDA (the mini ConvNet and ResNet-50);
* E2MC computing in float32 under bf16 autocast, and agreeing with the same computation without it;
* a one-rank NCCL process group: an all_reduce, E2MC's gather path under it, a clean teardown.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import e2mc.distributed
from e2mc.config import load_config
from e2mc.criterion import E2MC
from e2mc.methods import build_model, method_names
from e2mc.distributed import StopRequest
from e2mc.epoch import train_one_epoch
from e2mc.meter import EpochMeter, read_metrics
from e2mc.train import setup, start
from fake_data import write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run `make gpu-check`)")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=512, n_test=64)


def cuda_config(method: str, data_root: Path, output_dir: Path, criterion: str = "e2mc"):
    """configs/mini/<method>.yaml (its real heads) on CUDA, bf16 autocast and channels_last on, from random
    weights, one epoch of 4 steps of batch 128."""
    return load_config(ROOT / "configs" / "mini" / f"{method}.yaml",
                       [f"data.root={data_root}", "data.batch_size=128", "train.epochs=1", "train.init=null",
                        "train.device=cuda", "train.amp=true", "train.channels_last=true", "train.log_every=1",
                        f"train.output_dir={output_dir}", f"criterion.name={criterion}"])


def is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("method", method_names())
def test_bf16_autocast_training_step_of_every_method_has_a_finite_loss(tmp_path, data_root, method):
    run = setup(cuda_config(method, data_root, tmp_path / method))
    assert run.device.type == "cuda" and run.added is not None
    seen = {}

    def record(module, inputs, output):
        seen.update(autocast=torch.is_autocast_enabled("cuda"), loss_dtype=output["loss"].dtype,
                    input_dtypes=[x.dtype for x in inputs])

    run.added.register_forward_hook(record)
    run.output_dir.mkdir(parents=True)  # train() makes it, and holds it while the run trains
    start(run)
    with StopRequest() as stop:
        assert train_one_epoch(run, EpochMeter(run.cfg.data.batch_size, run.step, run.carried), stop)
    steps = read_metrics(run.output_dir, "step")
    assert len(steps) == 4  # 512 images / 128
    for rec in steps:
        for key in ("loss", "ssl_loss", "add_loss"):
            assert torch.isfinite(torch.tensor(rec[key])), f"{method}: {key} = {rec[key]} at step {rec['step']}"
    # the step ran under bf16 autocast, and E2MC still answered in float32
    assert seen["autocast"] is True and seen["loss_dtype"] == torch.float32, seen
    assert all(p.is_cuda for p in run.network.parameters())
    assert all(torch.isfinite(p).all() for p in run.network.parameters())


def test_channels_last_weights_and_inputs_on_cuda(tmp_path, data_root):
    run = setup(cuda_config("vicreg", data_root, tmp_path / "vicreg"))
    convs = [p for p in run.network.parameters() if p.dim() == 4]
    assert convs and all(p.is_cuda and is_channels_last(p) for p in convs)
    views = next(iter(run.stream.epoch(0, 0)))
    views = [v.contiguous(memory_format=torch.channels_last) for v in views]  # as train_one_epoch does
    assert all(v.is_cuda and is_channels_last(v) for v in views)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = run.forward(views)
    assert outputs is not None

    # ResNet-50 (the paper's backbone, small batch and resolution): weights, inputs, and the
    # gradients of the convolutions stay channels_last through a bf16 step
    network = build_model("vicreg", "resnet50", expander=(256, 256)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    assert is_channels_last(network.backbone.conv1.weight) and is_channels_last(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z = network(x)["embedding"]
        assert z.dtype == torch.bfloat16
    z.float().pow(2).mean().backward()
    assert is_channels_last(network.backbone.conv1.weight.grad)
    assert torch.isfinite(network.backbone.conv1.weight.grad).all()


@pytest.mark.parametrize("transform", ["sigmoid", "gaussian_cdf"])
def test_e2mc_computes_in_float32_under_bf16_autocast(transform):
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(512, 256, device="cuda", generator=generator)
    layer = nn.Linear(256, 1024).cuda()
    e2mc_ = E2MC(transform, ent_coeff=10.0, cov_coeff=1.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z1, z2 = layer(x).chunk(2, dim=0)
        assert z1.dtype == torch.bfloat16  # the network's output is half precision...
        out = e2mc_(z1, z2)
    for key in ("loss", "entropy", "covariance"):
        assert out[key].dtype == torch.float32, key  # ...the criterion is not
    # the same bf16 embeddings without autocast: the same computation, so (nearly) the same numbers
    plain = e2mc_(z1.float(), z2.float())
    for key in ("loss", "entropy", "covariance"):
        torch.testing.assert_close(out[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)
    # and the float32 network output without autocast: only bf16's rounding of the embeddings differs
    f1, f2 = layer(x).chunk(2, dim=0)
    full = e2mc_(f1, f2)
    for key in ("loss", "entropy", "covariance"):
        torch.testing.assert_close(out[key], full[key], rtol=5e-3, atol=1e-4, msg=key)
    # the gradient flows back to the bf16 network in float32 arithmetic, finite
    out["loss"].backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nccl_group():
    """A one-rank NCCL process group in this process, destroyed afterwards whatever happens."""
    assert not dist.is_initialized()
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert not dist.is_initialized()


def test_one_rank_nccl_group_all_reduce_and_e2mc_gather(nccl_group, monkeypatch):
    assert dist.get_backend() == "nccl" and dist.get_world_size() == 1 and dist.get_rank() == 0
    x = torch.arange(4, dtype=torch.float32, device="cuda")
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    torch.testing.assert_close(x, torch.arange(4, dtype=torch.float32, device="cuda"))

    generator = torch.Generator(device="cuda").manual_seed(1)
    z1 = torch.randn(256, 512, device="cuda", generator=generator)
    z2 = z1 + 0.3 * torch.randn(256, 512, device="cuda", generator=generator)
    local_inputs = [z.clone().requires_grad_() for z in (z1, z2)]
    local = E2MC("sigmoid", gather=False)(*local_inputs)
    local["loss"].backward()

    # e2mc.distributed treats one rank as "not distributed"; force the multi-rank path so that E2MC's
    # gather (torch.distributed.nn all_gather, with its backward) really runs through NCCL
    monkeypatch.setattr(e2mc.distributed, "is_distributed", lambda: True)
    gathered_inputs = [z.clone().requires_grad_() for z in (z1, z2)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gathered = E2MC("sigmoid", gather=True)(*gathered_inputs)
    assert gathered["loss"].dtype == torch.float32
    gathered["loss"].backward()
    torch.testing.assert_close(gathered["loss"], local["loss"], rtol=1e-5, atol=1e-5)
    for a, b in zip(gathered_inputs, local_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-9)
    flag = e2mc.distributed.all_reduce_sum(torch.ones(1, device="cuda"))
    assert flag.item() == 1.0
    dist.barrier()
    torch.cuda.synchronize()
