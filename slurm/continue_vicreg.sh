#!/bin/bash
# Continued pre-training of the official VICReg (ResNet-50, expander 8192-8192-8192, LARS)
# with E2MC (or another arm) for the configured epochs (10 in the paper), on one node with 2 GPUs
# at global batch 512 as in the paper.
# One array task per seed (--array=0-2: seeds 0, 1, 2); a requeued task resumes in the same folder.
#
#   sbatch slurm/continue_vicreg.sh                                   # E2MC, seeds 0-2
#   E2MC_ARM=original sbatch slurm/continue_vicreg.sh                 # the original loss alone
#   sbatch --array=0 --partition=gpu --account=me slurm/continue_vicreg.sh train.epochs=5
#   E2MC_CONFIG=configs/mini/vicreg.yaml sbatch --gpus-per-node=0 --ntasks-per-node=1 --cpus-per-task=2 \
#       --mem=8G --time=01:00:00 slurm/continue_vicreg.sh data.limit=1024 train.epochs=1   # CPU smoke test
#
# Submit from the repository root: the log path below is relative to it, and from another folder the
# job fails at launch with no log (JobLaunchFailure, exit 0:53); else pass --output=/abs/path and E2MC_ROOT.
#
# sbatch options override the #SBATCH lines; key=value arguments override the configuration.
# E2MC_CONFIG, E2MC_ARM, E2MC_SEEDS, E2MC_OUTPUT, E2MC_OVERRIDES, E2MC_PYTHON, E2MC_SETUP: docs/cluster.md.
#SBATCH --job-name=e2mc-vicreg
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

e2mc_run continue-args vicreg -- "$@"
