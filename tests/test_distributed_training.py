"""Training in two processes (gloo, on the CPU) as torchrun or the SLURM launcher starts them: each
process joins the group from its environment, rank 0 alone writes the run folder, a stop signal that
reaches one rank stops both at the same step, and the pair resumes from there."""
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from e2mc import checkpoints
from e2mc.config import load_config
from e2mc.meter import read_metrics
from distributed_utils import free_port
from fake_data import write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
STEPS = 256 // 64  # images // global batch: steps per epoch, whatever the number of processes


def _rank(rank: int, port: int, output_dir: str, data_root: str, stop_at_ask: int) -> None:
    """One process of the launch: the environment torchrun would give it, then ``train``; ``stop_at_ask``
    > 0 makes rank 1 alone see a stop signal at that check of the stop flag."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from e2mc.distributed import StopRequest
    from e2mc.train import train

    if rank == 1 and stop_at_ask:
        asked = []
        requested = StopRequest.requested

        def signal_on_this_rank(self):
            asked.append(1)
            if len(asked) == stop_at_ask:
                self.signal = signal.SIGUSR1  # as SLURM sends it before the time limit
            return requested(self)

        StopRequest.requested = signal_on_this_rank
    cfg = load_config(ROOT / "configs/mini/swav.yaml", [
        f"data.root={data_root}", "data.batch_size=64", "data.workers=0", "train.epochs=2", "train.log_every=1",
        f"train.output_dir={output_dir}", "model.heads={hidden_dim: 32, output_dim: 16, n_prototypes: 10}",
        "loss.params={queue_length: 64}", "train.init=null"])
    summary = train(cfg)
    Path(output_dir, f"summary-rank{rank}.json").write_text(json.dumps(summary))
    sys.stdout.flush()


def launch(output_dir: Path, data_root: Path, stop_at_ask: int = 0) -> list[dict]:
    mp.start_processes(_rank, args=(free_port(), str(output_dir), str(data_root), stop_at_ask), nprocs=WORLD,
                       join=True, start_method="spawn")
    return [json.loads((output_dir / f"summary-rank{r}.json").read_text()) for r in range(WORLD)]


def test_two_processes_stop_together_and_resume_into_one_run(tmp_path):
    data_root = write_fake_fashion_mnist(tmp_path / "fmnist", n_train=256, n_test=64)
    run = tmp_path / "run"
    # rank 1 asks before epoch 1 (1), after its steps (2..5), before epoch 2 (6), after step 0 (7): stop there
    first = launch(run, data_root, stop_at_ask=7)
    assert [s["status"] for s in first] == ["interrupted", "interrupted"]
    assert first[0]["global_step"] == first[1]["global_step"] == STEPS + 1
    state = checkpoints.load(run / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 1)
    queues = state["objective_states"]  # every rank's SwAV queue, gathered into rank 0's checkpoint
    assert len(queues) == WORLD and not torch.equal(queues[0]["queue"], queues[1]["queue"])

    second = launch(run, data_root)
    assert [s["status"] for s in second] == ["finished", "finished"]
    assert second[0]["global_step"] == second[1]["global_step"] == 2 * STEPS
    # one folder, written by rank 0 alone: each step once, and a segment per start
    assert [r["global_step"] for r in read_metrics(run, "step")] == list(range(1, 2 * STEPS + 1))
    assert [r["epoch"] for r in read_metrics(run, "epoch")] == [1, 2]
    assert [(r["epoch"], r["step"]) for r in read_metrics(run, "segment")] == [(0, 0), (1, 1)]
