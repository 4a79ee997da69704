"""The run's command line (moe/config/args.py)."""

from moe.config.args import parse_trainer_args


def test_flags_may_come_anywhere_among_the_overrides():
    args = parse_trainer_args(["model.d_model=64", "--resume", "moe.top_k=1", "--ds_config", "c.json", "train.seed=3"])
    assert args.resume and args.ds_config == "c.json"
    assert args.overrides == ["model.d_model=64", "moe.top_k=1", "train.seed=3"]
