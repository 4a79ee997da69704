"""Pretrain a MoE GPT with DeepSpeed: one rank of the job. Start it through launch/pretrain_moe.sh.

deepspeed recipes/pretrain_moe.py --recipe recipes/default.yaml --ds_config ds_configs/zero1_bf16.json [key=value ...]
"""

from moe.launch.rank import main

if __name__ == "__main__":
    main()
