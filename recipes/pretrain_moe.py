"""Pretrain a MoE GPT with DeepSpeed: one rank of the job. Start it through launch/pretrain_moe.sh.

    deepspeed recipes/pretrain_moe.py --recipe recipes/default.yaml --ds_config ds_configs/zero1.json [key=value ...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from moe.train.trainer import main  # noqa: E402

if __name__ == "__main__":
    main()
