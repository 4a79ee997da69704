"""DeepSpeed's expert-parallel process groups, created before the engine so that experts are built by global index."""

from __future__ import annotations


def expert_parallel_rank(ep_size: int) -> int:
    """Create DeepSpeed's expert-parallel groups now (the engine would create the same ones at initialize)
    and return this rank's index inside its expert-parallel group, so experts can be built by global index."""
    if ep_size == 1:
        return 0
    from deepspeed.utils import groups

    name = f"ep_size_{ep_size}"
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    return groups._get_expert_parallel_rank(name)


def reset_expert_groups() -> None:
    """Forget DeepSpeed's process-global expert groups and mpu, between runs of different layouts in one process:
    they are keyed by the EP size alone, and a pipeline's (inside a stage) differ from a data-parallel run's at the
    same EP size."""
    from deepspeed.utils import groups

    for table in (
        groups._EXPERT_PARALLEL_GROUP,
        groups._EXPERT_PARALLEL_GROUP_RANKS,
        groups._EXPERT_DATA_PARALLEL_GROUP,
        groups._EXPERT_DATA_PARALLEL_GROUP_RANKS,
    ):
        table.clear()
    groups.mpu = None
