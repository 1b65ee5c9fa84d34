"""Running under SLURM: the distributed environment, requeue after a stop, and what each job runs.

Three pieces, used by ``python -m e2mc continue`` and by the job scripts in ``slurm/``:

* :func:`export_torch_distributed`: inside an ``srun`` step with several tasks, export MASTER_ADDR,
  MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE through
  ``submitit.helpers.TorchDistributedEnvironment``. That class reads SLURM_* variables through
  ``submitit.JobEnvironment``, which recognises a SLURM job only by ``SUBMITIT_EXECUTOR=slurm`` (set by
  submitit's own job scripts); a plain ``sbatch`` + ``srun`` job lacks it, so it is set here first.
* :func:`requeue_after_stop`: when a warning signal (USR2; USR1) or the SIGTERM of a time limit or a
  preemption stopped training, rank 0 runs ``scontrol requeue <job>`` after the checkpoint is on disk;
  the rerun resumes from ``output_dir/checkpoint.pt``. A SIGTERM from ``scancel`` is not undone.
* :func:`continue_arguments` / :func:`evaluate_arguments`: the ``python -m e2mc`` arguments of one
  job or array task, from the E2MC_* variables documented in docs/cluster.md and the array task id
  (``python -m e2mc.cluster continue-args <method>`` prints them, one per line, for the job scripts).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from e2mc import naming
from e2mc.config import ConfigError, load_config
from e2mc.errors import UserError
from e2mc.methods import method_names
from e2mc.runfolder import run_folder

# Signals that ask a run to stop and come back: SLURM's --signal warning before the time limit
# (USR2 by default: NCCL may install its own USR1 handler, which is why submitit moved to USR2).
WARNING_SIGNALS = ("SIGUSR2", "SIGUSR1")
# Requeues after a stop before a job gives up (E2MC_MAX_REQUEUES), as submitit's max_num_timeout: a time
# limit too short for any progress must not loop for ever.
DEFAULT_MAX_REQUEUES = 8
# A time limit must be at least this many times the warning signal's lead, or the warning stops the
# run soon after it starts (--time=00:02:00 with --signal=USR2@120: at once), and it requeues in a loop.
MIN_LIMIT_PER_LEAD = 4


class ClusterError(UserError):
    """A job was set up inconsistently (array size, E2MC_* variables); the message names the fix."""


@dataclass(frozen=True)
class SlurmJob:
    """This process's place in a SLURM job, read from SLURM_* variables (see :func:`slurm_job`)."""

    job_id: str                  # SLURM_JOB_ID: changes for every array task, kept across requeues
    array_job_id: str | None     # SLURM_ARRAY_JOB_ID, for array tasks
    array_task_id: int | None    # SLURM_ARRAY_TASK_ID
    in_step: bool                # inside an srun step (SLURM_STEP_ID), not the batch shell
    num_tasks: int               # tasks of this step (srun sets SLURM_NTASKS to the step's count)
    global_rank: int             # SLURM_PROCID
    local_rank: int              # SLURM_LOCALID
    restart_count: int           # SLURM_RESTART_COUNT: how often the job was requeued (unset = 0)

    @property
    def requeue_id(self) -> str:
        """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task, else the job id."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id


def slurm_job(environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The SLURM job this process runs in, or None outside SLURM (no SLURM_JOB_ID)."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID"):
        return None
    in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    # In the batch shell SLURM_NTASKS is the allocation's task count although one process runs there.
    num_tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1) if in_step else 1
    task = env.get("SLURM_ARRAY_TASK_ID")
    return SlurmJob(job_id=env["SLURM_JOB_ID"], array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
                    array_task_id=int(task) if task else None, in_step=in_step, num_tasks=num_tasks,
                    global_rank=int(env.get("SLURM_PROCID", 0)), local_rank=int(env.get("SLURM_LOCALID", 0)),
                    restart_count=int(env.get("SLURM_RESTART_COUNT") or 0))


# --- distributed environment --------------------------------------------------------------------

def export_torch_distributed() -> dict[str, str] | None:
    """Export torch.distributed's env:// variables from SLURM's, when this is one of several srun tasks
    (or of several tasks of submitit's local executor).

    Does nothing (returns None) outside SLURM and submitit, in the batch shell, for a single task, or
    when RANK and WORLD_SIZE are already set (torchrun inside an allocation). Otherwise returns what was exported.
    CUDA_VISIBLE_DEVICES is left alone: e2mc.train picks ``cuda:LOCAL_RANK`` among the visible GPUs.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return None
    local_tasks = int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "0") or 0)
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        # submitit's local executor starts one process per task, like srun: join them in one group
        # (independent tasks would each train the same run in the same folder).
        if local_tasks <= 1:
            return None
    else:
        job = slurm_job()
        if job is None or not job.in_step or job.num_tasks <= 1:
            return None
    from submitit.helpers import TorchDistributedEnvironment

    os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")  # how submitit.JobEnvironment recognises SLURM
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return {"MASTER_ADDR": env.master_addr, "MASTER_PORT": str(env.master_port), "RANK": str(env.rank),
            "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.local_world_size)}


# --- requeue ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequeueOutcome:
    requeued: bool
    message: str                 # one line for the job log: what happened and why


def requeue_command(job: SlurmJob) -> list[str]:
    return ["scontrol", "requeue", job.requeue_id]


def job_fields(job_id: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, str]:
    """JobState, Reason, Requeue, Restarts and TimeLimit of ``scontrol --oneliner show job <job_id>``."""
    result = run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
    return {key: m.group(1) for key in ("JobState", "Reason", "Requeue", "Restarts", "TimeLimit")
            if (m := re.search(rf"(?:^|\s){key}=(\S*)", result.stdout))}


def time_limit_seconds(text: str) -> int | None:
    """SLURM's time limit as ``scontrol`` prints it ([D-]HH:MM:SS, MM:SS) in seconds; None if unlimited."""
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = clock.split(":")
    if not days.isdigit() or not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None  # UNLIMITED, Partition_Limit, ...
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return int(days) * 86400 + seconds * (60 if len(parts) == 1 else 1)


def check_time_limit(limit_s: int | None, lead_s: int) -> None:
    """Raise a :class:`ClusterError` when the time limit ``limit_s`` is not well above the warning
    signal's lead ``lead_s`` (both seconds; None or 0: no limit, no signal)."""
    if limit_s is None or lead_s <= 0 or limit_s >= MIN_LIMIT_PER_LEAD * lead_s:
        return
    minimum = MIN_LIMIT_PER_LEAD * lead_s
    raise ClusterError(
        f"the time limit ({limit_s} s) is not well above the USR2 warning sent {lead_s} s before it: training "
        f"would stop soon after it starts and requeue again and again; ask for at least {minimum // 60} min "
        f"(sbatch --time={minimum // 60}:00, submit --time {minimum // 60}), or a shorter lead (sbatch "
        "--signal=USR2@<s> with E2MC_SIGNAL_LEAD_S=<s>, submit --signal-delay-s)")


def check_job_time_limit(environ: Mapping[str, str],
                         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """In a job's batch shell: :func:`check_time_limit` of its TimeLimit (``scontrol``) against
    E2MC_SIGNAL_LEAD_S, which slurm/common.sh reads from the script's ``#SBATCH --signal`` line."""
    job, lead = slurm_job(environ), environ.get("E2MC_SIGNAL_LEAD_S", "0")
    if job is None or job.in_step or not lead.isdigit() or int(lead) == 0:
        return
    try:
        limit = job_fields(job.requeue_id, run).get("TimeLimit", "")
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return  # the controller is asked again when the run requeues; no reason to fail here
    check_time_limit(time_limit_seconds(limit), int(lead))


def requeue_decision(signal_name: str, fields: Mapping[str, str], restart_count: int | None = None
                     ) -> tuple[bool, str]:
    """Whether a run stopped by ``signal_name`` should be requeued, given ``scontrol show job`` ``fields``.

    A warning signal always; SIGTERM only when SLURM ends the job for its time limit or a preemption
    (``scancel`` also sends SIGTERM, and a requeue would undo the user's cancel). When SLURM counts more
    restarts than this run started with (``restart_count``, its SLURM_RESTART_COUNT), SLURM has already
    requeued the job (``scontrol requeue``, preemption in requeue mode): nothing to do, it resumes.
    """
    restarts = fields.get("Restarts", "")
    if restart_count is not None and restarts.isdigit() and int(restarts) > restart_count:
        return False, f"SLURM already requeued the job (restart {restarts}); it resumes from the checkpoint"
    if fields.get("Requeue") == "0":
        return False, "the job is not requeueable (submitted with --no-requeue, or JobRequeue=0)"
    if signal_name in WARNING_SIGNALS:
        return True, f"{signal_name} (the warning before the time limit, or a preemption notice)"
    if signal_name == "SIGTERM":
        state, reason = fields.get("JobState", ""), fields.get("Reason", "")
        if reason == "TimeLimit":
            return True, "SIGTERM at the time limit"
        if "PREEMPT" in state.upper() or "preempt" in reason.lower():
            return True, "SIGTERM from a preemption"
        return False, f"SIGTERM with JobState={state} Reason={reason}: cancelled, not requeued"
    return False, f"{signal_name} does not ask for a requeue"


def requeue_after_stop(summary: Mapping, environ: Mapping[str, str] | None = None,
                       run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> RequeueOutcome:
    """After ``e2mc.train.train`` returned ``summary``: requeue the SLURM job if a signal stopped it.

    Only rank 0 of an interrupted run under SLURM acts; every other case returns without running
    anything. Call it after train() returned: the checkpoint is then on disk on every rank.
    """
    job = slurm_job(environ)
    if summary.get("status") != "interrupted":
        return RequeueOutcome(False, "the run was not interrupted")
    if job is None:
        return RequeueOutcome(False, "not a SLURM job; run the same command again to resume")
    if job.global_rank != 0:
        return RequeueOutcome(False, f"rank {job.global_rank}: rank 0 requeues")
    env = os.environ if environ is None else environ
    limit = int(env.get("E2MC_MAX_REQUEUES") or DEFAULT_MAX_REQUEUES)
    if job.restart_count >= limit:
        return RequeueOutcome(False, f"not requeued: the job was requeued {job.restart_count} times already "
                                     f"(E2MC_MAX_REQUEUES={limit}); resubmit it to resume from the checkpoint")
    command = requeue_command(job)
    try:
        requeue, why = requeue_decision(summary["signal"], job_fields(job.requeue_id, run), job.restart_count)
        if not requeue:
            if why.startswith("SLURM already requeued"):
                return RequeueOutcome(False, why)
            return RequeueOutcome(False, f"{why}; resubmit the same job to resume")
        result = run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:  # no scontrol, controller down, ...
        return RequeueOutcome(False, f"{e}; the job was not requeued, resubmit it to resume")
    return RequeueOutcome(True, f"{why}: requeued job {job.requeue_id} (restart {job.restart_count + 1} of at "
                                f"most {limit}); it resumes from the checkpoint. SLURM now ends this attempt, so "
                                "'STEP ... CANCELLED ... DUE TO JOB REQUEUE' and 'srun: error: ... Terminated' "
                                "below are expected")


# --- what each job runs -------------------------------------------------------------------------

def arm_overrides(arm: str) -> list[str]:
    """:func:`e2mc.naming.arm_overrides`, with a bad name reported as a :class:`ClusterError`."""
    try:
        return naming.arm_overrides(arm)
    except ValueError as e:
        raise ClusterError(str(e)) from None


def _words(environ: Mapping[str, str], name: str) -> list[str]:
    """A list variable: shell words, commas also separate (E2MC_ARMS="original,e2mc" or "original e2mc")."""
    return [w for word in shlex.split(environ.get(name, "")) for w in word.split(",") if w]


def task_assignment(arms: Sequence[str], task_id: int, seeds: Sequence[int] = ()) -> tuple[str, int]:
    """The (arm, seed) of array task ``task_id`` in the grid arms x seeds, arms varying fastest.

    Without ``seeds`` the seed is the index itself (``--array=0-2`` runs seeds 0, 1, 2 of one arm).
    """
    index, arm_index = divmod(task_id, len(arms))
    if seeds:
        if index >= len(seeds):
            raise ClusterError(f"array task {task_id} is outside {len(arms)} arm(s) x {len(seeds)} seed(s); "
                               f"submit with --array=0-{len(arms) * len(seeds) - 1}")
        return arms[arm_index], int(seeds[index])
    return arms[arm_index], index


def _task(method: str, environ: Mapping[str, str], default_arms: Sequence[str]) -> tuple[str, int, str]:
    """(arm, seed, output_dir) of this job or array task; see :func:`continue_arguments`."""
    arms = _words(environ, "E2MC_ARMS") or _words(environ, "E2MC_ARM") or list(default_arms)
    arms = [naming.method_arm(arm, method) for arm in arms]
    for arm in arms:
        arm_overrides(arm)
    try:
        seeds = [int(s) for s in _words(environ, "E2MC_SEEDS")]
    except ValueError:
        raise ClusterError(f"E2MC_SEEDS must hold integers, got {environ['E2MC_SEEDS']!r}") from None
    task_id = int(environ.get("SLURM_ARRAY_TASK_ID") or 0)
    arm, seed = task_assignment(arms, task_id, seeds)
    root = environ.get("E2MC_OUTPUT") or "runs/slurm"
    return arm, seed, str(run_folder(root, method, arm, seed))


def continue_arguments(method: str, environ: Mapping[str, str] | None = None,
                       default_arms: Sequence[str] = ("e2mc",), extra_overrides: Sequence[str] = ()) -> list[str]:
    """``python -m e2mc`` arguments that continue ``method``'s training for this job or array task.

    Config E2MC_CONFIG (default configs/imagenet/<method>.yaml). Arms E2MC_ARMS or E2MC_ARM (one or
    more names of :data:`e2mc.arms.ARMS`; default ``default_arms``). The array task picks arm and seed
    (:func:`task_assignment`; E2MC_SEEDS lists the seeds). Output E2MC_OUTPUT/<method>/<arm>/seed<seed>
    (default runs/slurm/...): the same on every requeue of the task. E2MC_OVERRIDES (shell
    words), then ``extra_overrides`` (the job script's key=value arguments) come last, so they override
    the arm, the seed and the output. The configuration is loaded and checked here, so that a bad one
    fails before anything is submitted or trained.
    """
    env = os.environ if environ is None else environ
    arm, seed, output = _task(method, env, default_arms)
    config = env.get("E2MC_CONFIG") or f"configs/imagenet/{method}.yaml"
    overrides = [*arm_overrides(arm), f"train.seed={seed}", f"train.output_dir={output}",
                 *shlex.split(env.get("E2MC_OVERRIDES", "")), *extra_overrides]
    try:  # a pre-submit check that the job would start: the configuration loads and passes the schema
        load_config(config, overrides)
    except ConfigError as e:
        raise ClusterError(str(e)) from None
    return ["continue", "--config", config, *overrides]


def evaluate_arguments(environ: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> list[str]:
    """``python -m e2mc evaluate`` arguments that evaluate the checkpoint of this job or array task,
    followed by ``extra`` (the job script's own arguments).

    E2MC_METHOD names the method; E2MC_CHECKPOINT a file (e.g. an official release), else the
    checkpoint.pt that ``continue_arguments`` writes for the same E2MC_ARM / seed / E2MC_OUTPUT
    (evaluated under that arm's name, with the training seed as the probe seed unless ``extra`` gives
    ``--seeds``: one probe per training run, so that the seeds of a results folder are the training
    seeds and its figures and tables have one result per seed, as ``reproduce`` writes them).
    Results go to E2MC_RESULTS/<method> (default results/slurm/<method>); the file names carry arm,
    epoch, label fraction, seed and configuration hash, so seeds and arms share the folder.
    """
    env = os.environ if environ is None else environ
    method = env.get("E2MC_METHOD")
    if method not in method_names():
        raise ClusterError(f"set E2MC_METHOD to one of {', '.join(method_names())} (got {method!r})")
    results = f"{env.get('E2MC_RESULTS') or 'results/slurm'}/{method}"
    if env.get("E2MC_CHECKPOINT"):  # its arm comes from its configuration ("base" for a release)
        return ["evaluate", "--checkpoint", env["E2MC_CHECKPOINT"], "--method", method, "--results-dir", results,
                *extra]
    arm, seed, output = _task(method, env, ("e2mc",))
    seeds = [] if "--seeds" in extra else ["--seeds", str(seed)]
    return ["evaluate", "--checkpoint", f"{output}/checkpoint.pt", "--method", method, "--arm", arm,
            "--results-dir", results, *seeds, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m e2mc.cluster continue-args METHOD [DEFAULT_ARM ...] [-- key=value ...]`` or
    ``evaluate-args [-- evaluate options]``: print the arguments of this job's ``python -m e2mc`` command,
    one per line, after checking that its configuration loads (a pre-submit check); in a job's batch
    shell, continue-args also refuses a time limit too close to the USR2 lead (:func:`check_job_time_limit`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    try:
        if argv[:1] == ["continue-args"] and len(argv) >= 2:
            check_job_time_limit(os.environ)  # in a job: refuse a time limit that would requeue in a loop
            words = continue_arguments(argv[1], default_arms=argv[2:] or ("e2mc",), extra_overrides=extra)
        elif argv == ["evaluate-args"]:
            words = evaluate_arguments(extra=extra)
        else:
            print("usage: python -m e2mc.cluster continue-args METHOD [DEFAULT_ARM ...] [-- key=value ...] | "
                  "evaluate-args [-- evaluate options]",
                  file=sys.stderr)
            return 2
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any("\n" in w for w in words):
        print("error: an argument contains a newline; E2MC_OVERRIDES cannot carry one", file=sys.stderr)
        return 2
    print("\n".join(words))
    return 0


if __name__ == "__main__":
    sys.exit(main())
