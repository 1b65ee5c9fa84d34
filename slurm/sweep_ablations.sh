#!/bin/bash
# The E2MC ablations for one method (E2MC_METHOD, default vicreg), one array task per arm and seed:
# task t runs arm t % 3 with seed t / 3. Arms: entropy_only (cov_coeff 0), covariance_only
# (ent_coeff 0), and E2MC with the other transform (Gaussian CDF for VICReg, sigmoid for SwAV and
# SimSiam). The full E2MC and the original loss come from continue_<method>.sh.
#
#   sbatch slurm/sweep_ablations.sh                                # VICReg, 3 arms x seeds 0-2
#   E2MC_METHOD=swav sbatch --array=0-2 slurm/sweep_ablations.sh   # SwAV, seed 0
#
# Everything else as in continue_<method>.sh (docs/cluster.md).
# Submit from the repository root (the log path is relative to it; docs/cluster.md, Logs).
#SBATCH --job-name=e2mc-ablations
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=10
#SBATCH --time=12:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --array=0-8
#SBATCH --output=slurm/logs/%x-%A_%a.out
# shellcheck source=slurm/common.sh
source "${E2MC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh" || { echo "error: submit from the e2mc repository root or set E2MC_ROOT" >&2; exit 2; }

# e2mc_other_transform: the transform the method does not use (e2mc.naming.method_arm)
e2mc_run continue-args "${E2MC_METHOD:-vicreg}" entropy_only covariance_only e2mc_other_transform -- "$@"
