# shellcheck shell=bash
# Sourced by the job scripts in slurm/: environment, the srun step, signal forwarding.
# Variables (all optional; docs/cluster.md has the full list):
#   E2MC_ROOT    the repository (default: the folder sbatch was called from)
#   E2MC_PYTHON  the Python command (default: $E2MC_ROOT/.venv/bin/python if present, else python3);
#                may be several words, e.g. "apptainer exec e2mc.sif python"
#   E2MC_SETUP   shell commands run first on the node, e.g. "module load cuda/12.1" or
#                "source ~/miniconda3/etc/profile.d/conda.sh && conda activate e2mc"

cd "$E2MC_ROOT" || exit 2
if [[ -n ${E2MC_SETUP:-} ]]; then
    set +u # conda's and some module systems' scripts read unset variables
    eval "$E2MC_SETUP"
    set -u
fi
if [[ -z ${E2MC_PYTHON:-} ]]; then
    if [[ -x $E2MC_ROOT/.venv/bin/python ]]; then E2MC_PYTHON=$E2MC_ROOT/.venv/bin/python; else E2MC_PYTHON=python3; fi
fi
read -r -a e2mc_python <<<"$E2MC_PYTHON"
# One intra-op thread pool per task, sized to the task's CPUs (torch would otherwise use every core).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

# e2mc_arguments <e2mc.cluster command> [args]: the python -m e2mc arguments of this job or array task,
# into the array e2mc_args (python -m e2mc.cluster reads E2MC_* and SLURM_ARRAY_TASK_ID).
e2mc_arguments() {
    local listing
    listing=$("${e2mc_python[@]}" -m e2mc.cluster "$@") || exit 2
    # shellcheck disable=SC2034  # read by the calling job script
    mapfile -t e2mc_args <<<"$listing"
}

# e2mc_srun ARGS...: run "python ARGS..." as one srun step over the job's tasks, and return its status.
# A signal sent to the batch shell only (scancel --signal=USR2 --batch, --signal=B:USR2@120) is passed
# on to the step; the shell also waits for the step to save its checkpoint before it exits, because
# SLURM ends every step of a job whose batch shell has exited.
e2mc_srun() {
    echo "[e2mc] job ${SLURM_JOB_ID:-?} task ${SLURM_ARRAY_TASK_ID:--} restart ${SLURM_RESTART_COUNT:-0} on" \
        "$(hostname): ${e2mc_python[*]} $*"
    srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${e2mc_python[@]}" "$@" &
    local step=$!
    trap 'kill -USR2 "$step" 2>/dev/null || true' USR2
    trap 'kill -TERM "$step" 2>/dev/null || true' TERM
    while kill -0 "$step" 2>/dev/null; do
        wait "$step" || true # returns early when a trap ran
    done
    trap - USR2 TERM
    wait "$step" # the step's exit status (bash keeps it after the process is gone)
}
