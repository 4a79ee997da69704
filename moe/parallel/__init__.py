"""Process groups and communication, apart from the model math: joining the job, the trainer's own collectives,
DeepSpeed's expert-parallel groups, and our GPT as a pipeline-parallel PipelineModule (pipeline_module.py).

    init_distributed() -> (rank, world size)      shutdown_distributed() on the way out
                                                  all_reduce_mean / all_reduce_sum / all_reduce_named, barrier
    expert_parallel_rank(ep_size)                 free_port()
"""

from moe.parallel.comm import (
    all_reduce_mean,
    all_reduce_named,
    all_reduce_sum,
    barrier,
    free_port,
    init_distributed,
    shutdown_distributed,
)
from moe.parallel.expert_groups import expert_parallel_rank, reset_expert_groups

__all__ = [
    "all_reduce_mean",
    "all_reduce_named",
    "all_reduce_sum",
    "barrier",
    "expert_parallel_rank",
    "free_port",
    "init_distributed",
    "reset_expert_groups",
    "shutdown_distributed",
]
