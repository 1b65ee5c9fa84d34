"""The local one-node Slurm cluster behaves like the real thing for what e2mc relies on:
batch jobs, multi-task srun, USR2 before the time limit (submitit's preemption signal), and requeue.

All jobs are submitted together by one module fixture, so the slow ones overlap: a ``--signal``
warning arrives on slurmctld's 30 s time-limit pass, and a requeued job waits cred_expire + 1 s
(21 s with scripts/local_slurm.sh) before it may start again.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import slurm_cluster as local_cluster
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a pytest fixture)
    SlurmJobNotFound,
    job_info,
    job_state,
    slurm_cluster,
    submit,
    wait_for,
)

JOB_TIMEOUT_S = 90  # generous: the machine is shared; every job here normally ends within ~35 s

# Each job gets its own work directory as $1, where it leaves evidence, and the scripts directory as $2.
SCRIPTS = {
    "write_file": """
        echo "written by job $SLURM_JOB_ID" > "$1/result"
        """,
    "srun_two_tasks": """
        #SBATCH --ntasks=2
        srun --ntasks=2 bash -c 'echo "$SLURM_PROCID $SLURM_NTASKS $$" > "$0/task_$SLURM_PROCID"' "$1"
        """,
    # Bash runs a trap only between commands, so the script waits on a background sleep.
    "usr2_trap": """
        on_usr2() { echo USR2 > "$1/received"; kill "$sleeper"; exit 0; }
        trap 'on_usr2 "$1"' USR2
        sleep 100 & sleeper=$!
        touch "$1/ready"
        wait "$sleeper"
        echo "no USR2" > "$1/received"; exit 1
        """,
    # Without "B:", --signal goes to the job steps, not the batch shell: the way submitit uses it.
    "usr2_trap_in_step": """
        srun --ntasks=1 bash "$2/usr2_trap.sh" "$1"
        """,
    "requeue": """
        #SBATCH --requeue
        echo "${SLURM_RESTART_COUNT:-unset}" >> "$1/runs"
        if [[ -z "${SLURM_RESTART_COUNT:-}" ]]; then
            touch "$1/ready"
            sleep 100 & wait
            exit 1
        fi
        """,
}

# Submission order is start order on a 2-CPU node: the requeue job starts early so its restart delay
# overlaps with the signal jobs' wait for slurmctld's time-limit pass.
SUBMISSIONS = {
    "srun_two_tasks": ("srun_two_tasks", ()),
    "write_file": ("write_file", ()),
    "scancel_usr2": ("usr2_trap", ()),
    "requeue": ("requeue", ()),
    # --time=2 (minutes) with a 90 s warning: due from the start, sent on the next 30 s pass.
    "signal_batch": ("usr2_trap", ("--time=2", "--signal=B:USR2@90")),
    "signal_steps": ("usr2_trap_in_step", ("--time=2", "--signal=USR2@90")),
}


class Job:
    """A submitted job and its work directory."""

    def __init__(self, job_id: str, work_dir: Path):
        self.id = job_id
        self.dir = work_dir

    def explain(self) -> str:
        """scontrol's view and the job's output, for assertion messages."""
        output = self.dir / "slurm.out"
        text = output.read_text() if output.exists() else "(no output file)"
        return f"job {self.id}: {job_info(self.id)}\noutput:\n{text}"

    def wait_for_file(self, name: str, timeout_s: float = JOB_TIMEOUT_S) -> Path:
        path = self.dir / name
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            assert time.monotonic() < deadline, f"{name} not written in {timeout_s} s\n{self.explain()}"
            time.sleep(0.2)
        return path


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory) -> dict[str, Job]:  # noqa: F811  (fixture argument)
    if slurm_cluster.cpus < 2:
        pytest.fail(f"these tests need a node with 2 CPUs, the cluster has {slurm_cluster.cpus}")
    root = tmp_path_factory.mktemp("slurm_jobs")
    scripts_dir = root / "scripts"
    scripts_dir.mkdir()
    for script_name, body in SCRIPTS.items():
        (scripts_dir / f"{script_name}.sh").write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip())
    submitted = {}
    for name, (script_name, options) in SUBMISSIONS.items():
        work_dir = root / name
        work_dir.mkdir()
        job_id = submit(
            scripts_dir / f"{script_name}.sh",
            str(work_dir),
            str(scripts_dir),
            options=[f"--job-name=e2mc-test-{name}", f"--output={work_dir}/slurm.out", *options],
        )
        submitted[name] = Job(job_id, work_dir)
    return submitted


def test_sbatch_job_writes_file_and_completes(jobs):
    job = jobs["write_file"]
    assert wait_for(job.id, JOB_TIMEOUT_S) == "COMPLETED", job.explain()
    assert (job.dir / "result").read_text() == f"written by job {job.id}\n"
    assert job_info(job.id)["ExitCode"] == "0:0"


def test_srun_runs_two_tasks_with_distinct_ranks(jobs):
    job = jobs["srun_two_tasks"]
    assert wait_for(job.id, JOB_TIMEOUT_S) == "COMPLETED", job.explain()
    tasks = sorted(path.read_text().split() for path in job.dir.glob("task_*"))
    assert [(procid, ntasks) for procid, ntasks, _ in tasks] == [("0", "2"), ("1", "2")], job.explain()
    assert tasks[0][2] != tasks[1][2], "both ranks ran in the same process"


def test_scancel_batch_signal_reaches_bash_trap(jobs):
    job = jobs["scancel_usr2"]
    job.wait_for_file("ready")
    subprocess.run(["scancel", "--signal=USR2", "--batch", job.id], check=True, timeout=30)
    assert wait_for(job.id, JOB_TIMEOUT_S) == "COMPLETED", job.explain()
    assert (job.dir / "received").read_text() == "USR2\n"


def test_scontrol_requeue_restarts_job_with_restart_count(jobs):
    job = jobs["requeue"]
    job.wait_for_file("ready")
    subprocess.run(["scontrol", "requeue", job.id], check=True, timeout=30)
    assert wait_for(job.id, JOB_TIMEOUT_S) == "COMPLETED", job.explain()
    # First run: Slurm leaves SLURM_RESTART_COUNT unset; the rerun sees 1.
    assert (job.dir / "runs").read_text().split() == ["unset", "1"], job.explain()
    assert job_info(job.id)["Restarts"] == "1"


@pytest.mark.parametrize("name", ["signal_batch", "signal_steps"])
def test_signal_option_delivers_usr2_before_time_limit(jobs, name):
    job = jobs[name]
    assert wait_for(job.id, JOB_TIMEOUT_S) == "COMPLETED", job.explain()
    assert (job.dir / "received").read_text() == "USR2\n", job.explain()


def test_state_queries_on_unknown_job(slurm_cluster):  # noqa: F811  (fixture argument)
    unknown = "999999999"
    assert job_state(unknown) is None
    with pytest.raises(SlurmJobNotFound, match="MinJobAge"):
        wait_for(unknown, timeout=5)


@pytest.mark.parametrize(
    ("exit_code", "outcome"), [(3, pytest.skip.Exception), (1, pytest.fail.Exception)]
)
def test_fixture_skips_only_where_cluster_cannot_exist(tmp_path, monkeypatch, exit_code, outcome):
    fake_script = tmp_path / "local_slurm.sh"
    fake_script.write_text(f"echo 'reason given by the script'; exit {exit_code}\n")
    monkeypatch.setattr(local_cluster, "CLUSTER_SCRIPT", fake_script)
    with pytest.raises(outcome, match="reason given by the script"):
        local_cluster._start_cluster()
