#!/bin/bash
# Multi-node DDP training without SLURM: run this script once on every node, with the same MASTER_ADDR (the
# host of node 0, reachable from all nodes) and MASTER_PORT, and NODE_RANK = 0 .. NNODES-1. torchrun starts
# GPUS_PER_NODE processes per node and sets RANK, LOCAL_RANK, WORLD_SIZE and GROUP_RANK (the node rank);
# Lightning's TorchElasticEnvironment reads them, and checks that num_nodes x devices equals the world size.
#
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 configs/cluster/torchrun_multinode.sh configs/...yaml
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 configs/cluster/torchrun_multinode.sh configs/...yaml
#
# RUN_DIR must be on a filesystem every node sees, or an fsspec URL (s3://..., gs://...): rank 0 writes
# checkpoints, logs, metrics.json and predictions there, and a restarted run finds last.ckpt there
# (`--ckpt_path last`). Rerunning the same command on every node after a failure resumes the run.
# The global batch is data.init_args.batch_size x NNODES x GPUS_PER_NODE; scale the learning rate with it
# (linear scaling rule with warm-up: model.init_args.lr and warmup_steps).
# On CPU-only machines (tests, a trial run) set ACCELERATOR=cpu: torch.distributed then uses gloo.
set -euo pipefail
CONFIG=${1:?usage: NNODES=.. NODE_RANK=.. MASTER_ADDR=.. torchrun_multinode.sh CONFIG.yaml [--section.key value ...]}
shift
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:?set NODE_RANK (0 on the node at MASTER_ADDR)}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0 address}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATOR=${ACCELERATOR:-gpu}
RUN_DIR=${RUN_DIR:-$PWD/runs/multinode}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    -m densecnn fit --config "$CONFIG" \
    --trainer.accelerator "$ACCELERATOR" --trainer.strategy ddp \
    --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS_PER_NODE" \
    --trainer.default_root_dir "$RUN_DIR" \
    --ckpt_path last "$@"
