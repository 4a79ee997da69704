#!/usr/bin/env bash
""":"
# Pretrain a MoE GPT.  Both of these work:
#   deepspeed launch/pretrain_moe.sh [--recipe R.yaml] [--ds_config C.json] [--resume] [key=value ...]
#   bash      launch/pretrain_moe.sh [--num_gpus N] [--num_nodes N] [--hostfile H] [--master_port P] [same args]
# NUM_GPUS, NUM_NODES, HOSTFILE, MASTER_PORT, MASTER_ADDR may also come from the environment.
# This file is bash and Python at once: DeepSpeed's runner runs it with python on every rank (the part
# after this string); bash runs the lines below. Both call moe/launch/launcher.py.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" -u "$repo/launch/pretrain_moe.sh" "$@"
":"""
import sys

from moe.launch.launcher import main

main(sys.argv[1:])
