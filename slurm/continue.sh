#!/bin/bash
# Continued pre-training of any registered method (E2MC_METHOD: vicreg, swav, simsiam, barlowtwins, ...)
# from its official release with E2MC (or another arm), on one node with 2 GPUs at global batch 512.
# One array task per seed (--array=0-2: seeds 0, 1, 2); a requeued task resumes in the same folder.
# continue_vicreg.sh, continue_swav.sh and continue_simsiam.sh are this script with the method set.
#
#   E2MC_METHOD=barlowtwins sbatch slurm/continue.sh                   # E2MC, seeds 0-2
#   E2MC_METHOD=barlowtwins E2MC_ARM=original sbatch slurm/continue.sh  # the original loss alone
#
# sbatch options override the # Submit from the repository root (the log path is relative to it; docs/cluster.md, Logs).
#SBATCH lines; key=value arguments override the configuration
# (configs/imagenet/<method>.yaml unless E2MC_CONFIG is set). Everything else: docs/cluster.md.
#SBATCH --job-name=e2mc-continue
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=10
#SBATCH --time=08:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --array=0-2
#SBATCH --output=slurm/logs/%x-%A_%a.out
# shellcheck source=slurm/common.sh
source "${E2MC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh" || { echo "error: submit from the e2mc repository root or set E2MC_ROOT" >&2; exit 2; }

e2mc_run continue-args "${E2MC_METHOD:?set E2MC_METHOD to the method to continue, e.g. E2MC_METHOD=vicreg}" -- "$@"
