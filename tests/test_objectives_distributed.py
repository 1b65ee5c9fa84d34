"""Two-process (gloo, CPU) checks that the gathered objectives equal one process on the
concatenated batch: values, input gradients and DDP-averaged parameter gradients.

``gather_with_grad`` sums the gradients every rank computes for a slice, so each rank's
input gradient is world_size x the single-process gradient of its slice; DDP's averaging
of parameter gradients then makes them exactly the single-process ones.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distributed_utils import run_distributed
from e2mc.objectives import (MMCR, SwAVLoss, Uniformity, VarianceCovariance, VICRegLoss, normalize_prototypes_,
                             sinkhorn)

WORLD = 2
LOCAL = 4  # samples per rank
GLOBAL = WORLD * LOCAL
SWAV_STEPS = 3
SWAV_CROPS = 3
# the alternative criteria to E2MC, each called as criterion(z1, z2)
ALTERNATIVES = {"uniformity": Uniformity, "mmcr": MMCR, "vc": VarianceCovariance}


def make_data():
    g = torch.Generator().manual_seed(0)
    return {
        "scores": F.normalize(torch.randn(GLOBAL, 3, generator=g), dim=1)
        @ F.normalize(torch.randn(5, 3, generator=g), dim=1).t(),
        "x1": torch.randn(GLOBAL, 6, generator=g),
        "x2": torch.randn(GLOBAL, 6, generator=g),
        "z1": torch.randn(GLOBAL, 5, generator=g),
        "z2": torch.randn(GLOBAL, 5, generator=g),
        # SwAV: per step, crops x samples x inputs
        "crops": torch.randn(SWAV_STEPS, SWAV_CROPS, GLOBAL, 6, generator=g),
    }


class SwAVHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.projector = nn.Linear(6, 4)
        self.prototypes = nn.Linear(4, 5, bias=False)

    def forward(self, x):
        return F.normalize(self.projector(x), dim=1)


def make_models():
    torch.manual_seed(1)
    return nn.Linear(6, 5), SwAVHead()


def compute(data, rows, wrap=lambda m: m):
    """Every checked quantity for the samples ``rows`` (this rank's slice, or all of them)."""
    results = {"codes": sinkhorn(data["scores"][rows], epsilon=0.05, iterations=3)}
    linear, head = make_models()

    vicreg_model = wrap(linear)
    vicreg = VICRegLoss()(vicreg_model(data["x1"][rows]), vicreg_model(data["x2"][rows]))
    vicreg["loss"].backward()
    results["vicreg"] = {k: v.detach() for k, v in vicreg.items()}
    results["vicreg_grads"] = [p.grad.clone() for p in linear.parameters()]

    for name, criterion in [("vicreg_input", VICRegLoss())] + [(n, c()) for n, c in ALTERNATIVES.items()]:
        z1, z2 = data["z1"][rows].clone().requires_grad_(), data["z2"][rows].clone().requires_grad_()
        out = criterion(z1, z2)
        out["loss"].backward()
        results[name] = {"terms": {k: v.detach() for k, v in out.items()}, "grads": (z1.grad, z2.grad)}

    swav_model = wrap(head)
    swav = SwAVLoss(queue_length=GLOBAL)  # LOCAL rows per rank: full after the first step
    results["swav"] = []
    for step in range(SWAV_STEPS):
        normalize_prototypes_(head.prototypes)
        crops = data["crops"][step][:, rows]
        embeddings = swav_model(crops.flatten(0, 1)).split(crops.shape[1])
        out = swav(list(embeddings), head.prototypes.weight)
        head.zero_grad()
        out["loss"].backward()
        results["swav"].append({"loss": out["loss"].detach(), "queue_used": out["queue_used"],
                                "grads": [p.grad.clone() for p in head.parameters()]})
    return results


def ranked_results(rank, world_size):
    """This rank's results, computed in a worker of ``run_distributed`` (which also tears it down)."""
    return compute(make_data(), rows_of(rank), wrap=DistributedDataParallel)


@pytest.fixture(scope="module")
def runs():
    return compute(make_data(), slice(None)), run_distributed(ranked_results, WORLD)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def rows_of(rank):
    return slice(rank * LOCAL, (rank + 1) * LOCAL)


def test_distributed_sinkhorn_equals_single_process(runs):
    single, ranks = runs
    for rank, result in enumerate(ranks):
        close(result["codes"], single["codes"][rows_of(rank)])


def test_gathered_vicreg_with_ddp_equals_single_process(runs):
    single, ranks = runs
    # invariance is local (DDP averages it); variance and covariance see the global batch
    close(sum(r["vicreg"]["invariance"] for r in ranks) / WORLD, single["vicreg"]["invariance"])
    close(sum(r["vicreg"]["loss"] for r in ranks) / WORLD, single["vicreg"]["loss"])
    for result in ranks:
        close(result["vicreg"]["variance"], single["vicreg"]["variance"])
        close(result["vicreg"]["covariance"], single["vicreg"]["covariance"])
        for grad, expected in zip(result["vicreg_grads"], single["vicreg_grads"]):
            close(grad, expected)


@pytest.mark.parametrize("name", ["vicreg_input", *ALTERNATIVES])
def test_input_gradients_are_world_size_times_single_process(runs, name):
    single, ranks = runs
    for rank, result in enumerate(ranks):
        for grad, expected in zip(result[name]["grads"], single[name]["grads"]):
            close(grad, WORLD * expected[rows_of(rank)])
    if name != "vicreg_input":  # the added criteria are computed on the global batch alone
        for result in ranks:
            for term, value in result[name]["terms"].items():
                close(value, single[name]["terms"][term])


def test_swav_with_per_rank_queues_and_ddp_equals_single_process(runs):
    single, ranks = runs
    # the rank queues together hold the single process's queue; Sinkhorn ignores sample order
    assert [s["queue_used"].item() for s in single["swav"]] == [0.0, 1.0, 1.0]
    for step, expected in enumerate(single["swav"]):
        for result in ranks:
            assert result["swav"][step]["queue_used"].item() == expected["queue_used"].item()
            for grad, single_grad in zip(result["swav"][step]["grads"], expected["grads"]):
                close(grad, single_grad)
        close(sum(r["swav"][step]["loss"] for r in ranks) / WORLD, expected["loss"])
