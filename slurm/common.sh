# shellcheck shell=bash
# Sourced by every job script in slurm/ (its first command), which then calls e2mc_run: the preamble
# they share lives here once. sbatch runs a copy of the script from its spool folder, so a script finds
# this file through the folder sbatch was called from ($SLURM_SUBMIT_DIR) or E2MC_ROOT.
# Variables (all optional; docs/cluster.md has the full list):
#   E2MC_ROOT    the repository (default: the folder sbatch was called from)
#   E2MC_PYTHON  the Python command (default: $E2MC_ROOT/.venv/bin/python if present, else python3);
#                may be several words, e.g. "apptainer exec e2mc.sif python"
#   E2MC_SETUP   shell commands run first on the node, e.g. "module load cuda/12.1" or
#                "source ~/miniconda3/etc/profile.d/conda.sh && conda activate e2mc"

set -euo pipefail
E2MC_ROOT=${E2MC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$E2MC_ROOT" || exit 2
# The USR2 lead of the script's own "#SBATCH --signal=USR2@<s>" line (an sbatch --signal option on the
# command line is not visible to the job: set E2MC_SIGNAL_LEAD_S with it); checked against the time limit.
if [[ -z ${E2MC_SIGNAL_LEAD_S:-} ]]; then
    E2MC_SIGNAL_LEAD_S=$(grep -oP '^#SBATCH --signal=\S*@\K[0-9]+' "$0" 2>/dev/null | head -n 1) || true
fi
export E2MC_SIGNAL_LEAD_S=${E2MC_SIGNAL_LEAD_S:-0}
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
    local job=${SLURM_JOB_ID:-?}
    if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (job id $job)"; fi
    echo "[e2mc] job $job restart ${SLURM_RESTART_COUNT:-0} on" \
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

# e2mc_run <e2mc.cluster command> [args] [-- script arguments]: the whole job, what each script runs.
e2mc_run() {
    e2mc_arguments "$@"
    e2mc_srun -m e2mc "${e2mc_args[@]}"
}
