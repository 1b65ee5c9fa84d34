#!/bin/bash
# Linear probe (frozen backbone) of a continued run's checkpoint, one array task per training seed:
# task t evaluates runs/slurm/<method>/<arm>/seed<t>/checkpoint.pt (E2MC_OUTPUT, E2MC_ARM, E2MC_SEEDS
# as for continue_<method>.sh), or E2MC_CHECKPOINT (e.g. an official release: the "base" arm).
# Results: E2MC_RESULTS/<method>/ (default results/slurm/<method>/), one JSON per label fraction
# and probe seed. Arguments go to `python -m e2mc evaluate` (see its --help).
#
#   E2MC_METHOD=vicreg sbatch slurm/eval_linear.sh --data-root /data/imagenet
#   E2MC_METHOD=vicreg E2MC_ARM=original sbatch slurm/eval_linear.sh --data-root /data/imagenet
#   E2MC_METHOD=vicreg E2MC_CHECKPOINT=/ckpt/resnet50_fullckpt.pth sbatch --array=0 slurm/eval_linear.sh \
#       --data-root /data/imagenet --label-fractions 0.01 0.1 --probe-on images
#   sbatch --dependency=afterok:<continue job id> ...              # after the training array
#
# No --signal here: an evaluation has no checkpoint to stop at; if preempted, the requeued task
# starts it again (each result file is written whole or not at all).
# Submit from the repository root (the log path is relative to it; docs/cluster.md, Logs).
#SBATCH --job-name=e2mc-eval-linear
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=10
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --array=0-2
#SBATCH --output=slurm/logs/%x-%A_%a.out
# shellcheck source=slurm/common.sh
source "${E2MC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh" || { echo "error: submit from the e2mc repository root or set E2MC_ROOT" >&2; exit 2; }

e2mc_run evaluate-args -- "$@"
