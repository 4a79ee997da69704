"""Predict tokens/s and scaling efficiency of a recipe from 8 to thousands of GPUs, analytically.

    python -m moe.simulate --recipe R.yaml [--ds_config C.json] --cluster clusters/a100_80g_dgx.yaml --gpus 8..4096

cluster.py reads the cluster YAML, comm.py times the collectives, step.py adds up one optimizer step,
layout.py picks the expert-parallel size a GPU count allows, predict.py runs step.py per GPU count,
calibrate.py fits the one free constant (MFU) to DeepSpeed-MoE's published throughput and checks it.
"""
