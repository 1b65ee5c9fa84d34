"""The real one-node Slurm cluster of ``scripts/local_slurm.sh``, for tests.

Use the session fixture in a test module with::

    from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

(``tests/`` is on ``sys.path`` under pytest's default import mode), or make it global with
``pytest_plugins = ["slurm_cluster"]`` in ``tests/conftest.py``.

The fixture starts the cluster (installing Slurm with apt-get on first use, which stays installed), keeps
it for the whole test session and stops at the session's end the daemons it started (a cluster that
was already up is left as it was). ``E2MC_LOCAL_SLURM=0`` opts out: the SLURM tests are skipped. A
machine that cannot host the cluster (not root, no apt-get) skips them too; any other failure to start
fails them.

No accounting daemon runs, so job states come from ``scontrol show job``; slurm.conf keeps finished
jobs in the controller for ``MinJobAge=3600`` s, long enough for any test to read their final state.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "local_slurm.sh"
# local_slurm.sh exit code for "this machine cannot host the cluster" (not root / no apt-get).
EXIT_UNSUPPORTED = 3
# Installing slurm-wlm and munge takes ~10 s on a fast mirror; allow for slow mirrors and a held dpkg lock.
START_TIMEOUT_S = 900

# Job states after which a job never runs again (a requeued job goes back to PENDING instead).
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
POLL_INTERVAL_S = 0.25


class SlurmJobNotFound(LookupError):
    """The controller has no record of the job (never submitted, or purged after MinJobAge)."""


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to know about the running cluster."""

    node: str  # NodeName, the short hostname
    partition: str  # default partition
    cpus: int  # schedulable CPUs (hardware threads) on the node


def _run(command: Sequence[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def _start_cluster() -> SlurmCluster:
    result = _run(["bash", str(CLUSTER_SCRIPT), "start"], timeout_s=START_TIMEOUT_S)
    if result.returncode == EXIT_UNSUPPORTED:
        pytest.skip(f"no local Slurm cluster: {result.stdout.strip()}")
    if result.returncode != 0:
        pytest.fail(
            f"{CLUSTER_SCRIPT} start failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    sinfo = _run(["sinfo", "--noheader", "--format=%n %P %c"])
    if sinfo.returncode != 0 or not sinfo.stdout.strip():
        pytest.fail(f"the cluster started but sinfo failed: {sinfo.stderr.strip()}", pytrace=False)
    node, partition, cpus = sinfo.stdout.split()[:3]
    return SlurmCluster(node=node, partition=partition.rstrip("*"), cpus=int(cpus))


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the local one-node cluster; skip where it cannot exist or E2MC_LOCAL_SLURM=0,
    fail where it breaks; stop it after the session if this fixture started it."""
    if os.environ.get("E2MC_LOCAL_SLURM", "1") == "0":
        pytest.skip("E2MC_LOCAL_SLURM=0: the local SLURM cluster is not started")
    was_up = _run(["bash", str(CLUSTER_SCRIPT), "status"]).returncode == 0
    cluster = _start_cluster()
    yield cluster
    if not was_up:
        _run(["bash", str(CLUSTER_SCRIPT), "stop"], timeout_s=120)


def _clean_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """os.environ plus ``env``, minus the SLURM_*/SBATCH_* variables of any job the tests themselves
    run in (they would leak that job's settings into the submitted one); SLURM_CONF is kept."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name == "SLURM_CONF" or not name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
    }
    return {**inherited, **(env or {})}


def submit(
    script_path: str | os.PathLike[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> str:
    """Submit a batch script with ``sbatch --parsable`` and return its job id, e.g. ``"17"``.

    ``args`` go to the script, ``options`` to sbatch (``#SBATCH`` lines in the script work too),
    ``env`` is added to this process's environment, which the job inherits (sbatch ``--export=ALL``).
    """
    command = ["sbatch", "--parsable", *options, os.fspath(script_path), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=_clean_environment(env)
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    # --parsable prints "<job id>" or "<job id>;<cluster>".
    job_id = result.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise RuntimeError(f"cannot parse a job id from sbatch output {result.stdout!r}")
    return job_id


def job_info(job_id: str) -> dict[str, str] | None:
    """All ``Key=Value`` fields of ``scontrol show job``, or None once the controller forgot the job."""
    result = _run(["scontrol", "--oneliner", "show", "job", job_id])
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise RuntimeError(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
    line = result.stdout.strip()
    # Keys are words like JobState or Socks/Node; a value runs until the next " Key=" (some values,
    # e.g. Command with arguments, contain spaces).
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w/:]*)=", line))
    ends = [match.start() for match in keys[1:]] + [len(line)]
    return {match.group(1): line[match.end() : end] for match, end in zip(keys, ends)}


def job_state(job_id: str) -> str | None:
    """The job's state, e.g. ``"PENDING"``, ``"RUNNING"``, ``"COMPLETED"``; None if unknown."""
    info = job_info(job_id)
    return None if info is None else info["JobState"]


def wait_for(
    job_id: str, timeout: float, until: frozenset[str] | set[str] = TERMINAL_STATES
) -> str:
    """Poll until the job's state is in ``until`` (default: finished) and return that state.

    Raises TimeoutError after ``timeout`` seconds, SlurmJobNotFound if the controller does not know
    the job (wrong id, or finished longer than MinJobAge ago: raise MinJobAge in slurm.conf).
    """
    deadline = time.monotonic() + timeout
    state = None
    while True:
        state = job_state(job_id)
        if state is None:
            raise SlurmJobNotFound(
                f"job {job_id} is unknown to slurmctld: wrong id, or purged MinJobAge seconds after "
                "it ended (raise MinJobAge in slurm.conf to keep finished jobs longer)"
            )
        if state in until:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} still {state} after {timeout} s (waiting for {sorted(until)})"
            )
        time.sleep(POLL_INTERVAL_S)
