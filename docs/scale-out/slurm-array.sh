#!/bin/bash
# SL-CAI and RL-CAI data on a Slurm cluster: one array task per shard, each writing its own DuckDB file.
#
#   mkdir -p logs && sbatch --export=ALL,PROMPTS=$PWD/prompts.jsonl docs/scale-out/slurm-array.sh
#   # when every task is done (or: sbatch --dependency=afterok:JOBID --wrap "charter merge ..."):
#   charter merge cai.duckdb 'parts/*.duckdb'
#
# --shard auto reads SLURM_ARRAY_TASK_ID / _MIN / _STEP / _COUNT, so the array may start anywhere
# (--array=1-8 works too). Each task's file is named by its task id: when Slurm re-runs a task
# (requeue, a failed node, `scontrol requeue`), the same command resumes that file; nothing is asked
# twice. Keep --array, the prompts file and every option the same across tasks and re-runs.
#SBATCH --job-name=charter
#SBATCH --array=0-3
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=24:00:00
#SBATCH --output=logs/charter-%A_%a.log
set -euo pipefail

PROMPTS=${PROMPTS:-prompts.jsonl}
MODEL=${MODEL:-hosted_vllm/meta-llama/Llama-3.1-8B-Instruct}
API_BASE=${API_BASE:-http://localhost:8000/v1}   # e.g. a vLLM server next to the task's GPU
PARTS=${PARTS:-parts}
SEED=${SEED:-0}
DB="$PARTS/part-$SLURM_ARRAY_TASK_ID.duckdb"
mkdir -p "$PARTS"

# Only revise takes --shard: it picks this task's prompts. sample and label then read this task's
# own file, which holds only those prompts (sharding them again would drop pairs).
charter revise "$PROMPTS" --db "$DB" --model "$MODEL" --api-base "$API_BASE" --shard auto --seed "$SEED" \
  --run-name revise --rounds 2
charter sample --from-run revise --db "$DB" --model "$MODEL" --api-base "$API_BASE" --seed "$SEED" \
  --run-name sample --n 2
charter label --from-run sample --db "$DB" --model "$MODEL" --api-base "$API_BASE" --seed "$SEED" \
  --run-name label
