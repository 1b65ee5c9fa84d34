#!/bin/bash
# The alternative criteria added to SwAV (the paper's comparison), one array task per arm and seed:
# task t runs arm t % 6 with seed t / 6 (arms: original e2mc uniformity mmcr vc vc_raw).
#
#   sbatch slurm/sweep_swav_criteria.sh                            # 6 arms x seeds 0-2 = tasks 0-17
#   sbatch --array=0-5 slurm/sweep_swav_criteria.sh                # 6 arms, seed 0
#   E2MC_ARMS="original uniformity" sbatch --array=0-1 slurm/sweep_swav_criteria.sh
#
# Arms are named in e2mc/cluster.py (ARMS). E2MC_SEEDS="3 4" picks seeds instead of 0, 1, 2, ...
# Everything else as in continue_swav.sh (docs/cluster.md).
# Submit from the repository root (the log path is relative to it; docs/cluster.md, Logs).
#SBATCH --job-name=e2mc-swav-criteria
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=10
#SBATCH --time=12:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --array=0-17
#SBATCH --output=slurm/logs/%x-%A_%a.out
# shellcheck source=slurm/common.sh
source "${E2MC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh" || { echo "error: submit from the e2mc repository root or set E2MC_ROOT" >&2; exit 2; }

e2mc_run continue-args swav original e2mc uniformity mmcr vc vc_raw -- "$@"
