import os
import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))  # test helper modules (distributed_utils, slurm_cluster)

# Two cores shared by the whole suite: intra-op threads beyond that only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests (probes run thousands of tiny matrix
    products; on a shared 2-core machine a second thread only adds synchronisation, measured 20x
    slower under load). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
