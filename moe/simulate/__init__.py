"""Predict tokens/s and scaling efficiency of a recipe from 8 to thousands of GPUs, analytically.

    python -m moe.simulate --recipe R.yaml [--ds_config C.json] --cluster clusters/a100_80g_dgx.yaml --gpus 8..4096

cluster.py reads the cluster YAML, collectives.py times the collectives, step_time.py adds up one optimizer step,
gpu_counts.py picks the expert-parallel size a GPU count allows, predict.py runs step_time.py per GPU count,
calibrate.py fits the two constants (the achieved MFU of the dense and of the MoE family) to DeepSpeed-MoE's published
throughput and our CPU runs, and checks them.
"""
