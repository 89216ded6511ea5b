#!/usr/bin/env bash
# The device check of issue 16 in one command: `auto` vs the per-task loop (and `grouped`) at meta-batch 32
# for MAML, FOMAML, Meta-SGD, ANIL and Reptile; tasks/s, GFLOP/s, matmul fraction and peak memory per
# algorithm and path; bf16 autocast; on CUDA a CUDA-graph capture of a whole meta-training step. Runs on the
# GPU when torch sees one, else on the CPU (and says so). Writes benchmarks/results/gpu-check-<device>.json.
#   benchmarks/gpu_check.sh [extra `metabench bench` arguments, e.g. --repeats 10 or --algorithms maml]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m metabench.commands.cli bench --preset gpu --meta-batch 32 --out benchmarks/results "$@"
