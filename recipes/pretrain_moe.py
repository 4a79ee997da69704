"""Pretrain a MoE GPT with DeepSpeed: one rank of the job. Start it through launch/pretrain_moe.sh.

deepspeed recipes/pretrain_moe.py --recipe recipes/default.yaml --ds_config ds_configs/zero1_bf16.json [key=value ...]
"""

from moe.launch.rank_parent import run_with_parent


def main() -> None:
    from moe.launch.rank import main as rank_main  # in the forked rank: its parent stays small

    rank_main()


if __name__ == "__main__":
    run_with_parent(main)
