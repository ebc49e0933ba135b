#!/bin/bash
# Run a kandistill config across GPU nodes with SLURM: one `accelerate launch` per node, every GPU a
# process. The targets stage shards the teacher's inputs across all processes; students train with
# their gradients averaged across processes; extraction and the audit run on the main process.
#
#     sbatch scripts/slurm_distill.sh pipelines/configs/llama_audit.yaml [runs/llama-loan-audit]
#
# A killed or preempted job resumes where it stopped when resubmitted with the same arguments.
#SBATCH --job-name=kandistill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=kandistill-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_distill.sh CONFIG [OUT]}
OUT=${2:-runs/$(basename "$CONFIG" .yaml)}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-4}
MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun bash -c "accelerate launch \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_HOST \
    --main_process_port 29500 \
    --mixed_precision bf16 \
    -m kandistill.pipelines.cli run '$CONFIG' --out '$OUT'"
