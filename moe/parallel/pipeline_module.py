"""Our GPT as a `deepspeed.pipe.PipelineModule`: embedding, one pipeline layer per transformer block, head.

DeepSpeed's PipelineModule keeps only this rank's stage of those layers and its PipelineEngine runs the 1F1B
schedule, the stage-to-stage sends and the data-parallel gradient reduction; the MoE layers stay DeepSpeed's own
`deepspeed.moe.layer.MoE`, with expert-parallel groups inside a stage.

Weights: the whole MoEGPTForCausalLM is built first, with the layout-independent init of moe/model/build.py, and its
modules are handed to PipelineModule. A pipeline run therefore starts from exactly the weights of the non-pipeline
run at the same seed, and the two differ only by float summation order (tests/parallel/test_pipeline.py). The
price is one whole model in host memory per rank while building, which is what the non-pipeline path holds anyway.

Between stages flows a tuple: the hidden states (B, T, d) and the router losses (3,) = (balance aux, z, seq-aux)
summed over the MoE layers so far. Why carry them: a MoE layer may sit on any stage, but only the last stage computes
the loss (PipelineEngine calls `loss_fn` there), so the aux loss must travel with the activations to be added into
the loss with its coefficient, and its gradient then flows back through the same sends to each router. A dense
model sends the hidden states alone.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from deepspeed.pipe import PipelineModule
from torch import nn

from moe.model.layers import RotaryEmbedding
from moe.model.modeling import Block, MoEGPTForCausalLM, next_token_loss, training_loss

ROUTER_LOSSES = 3  # balance aux loss, z-loss, sequence-wise balance loss


class EmbeddingPipe(nn.Module):
    def __init__(self, embed_tokens: nn.Embedding, carries_router_losses: bool):
        super().__init__()
        self.embed_tokens, self.carries_router_losses = embed_tokens, carries_router_losses

    def forward(self, input_ids: torch.Tensor):
        """input_ids: (B, T) -> hidden (B, T, d), plus zero router losses (3,) for a MoE model."""
        x = self.embed_tokens(input_ids)  # (B, T, d)
        if not self.carries_router_losses:
            return x
        # A leaf that requires grad: the PipelineEngine back-propagates every floating tensor a stage sends, so the
        # router-loss carrier must be in the graph even on a stage without a MoE layer.
        return x, torch.zeros(ROUTER_LOSSES, device=x.device, requires_grad=torch.is_grad_enabled())


class BlockPipe(nn.Module):
    def __init__(self, block: Block, rotary: RotaryEmbedding):
        super().__init__()
        self.block, self.rotary = block, rotary  # rotary holds no parameters: every block may share it

    def forward(self, inputs):
        """hidden (B, T, d) [, router losses (3,)] -> the same, after this transformer block."""
        x, losses = inputs if isinstance(inputs, tuple) else (inputs, None)
        cos, sin = self.rotary(x.shape[1], x.device)  # (T, hd/2) each
        x, router = self.block(x, cos, sin)
        if router is not None:
            losses = losses + torch.stack([router.balance.float(), router.z.float(), router.seq_aux.float()])
        return x if losses is None else (x, losses)


class HeadPipe(nn.Module):
    def __init__(self, norm: nn.RMSNorm, lm_head: nn.Linear):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, inputs):
        """hidden (B, T, d) [, router losses (3,)] -> logits (B, T, V) [, router losses (3,)]."""
        x, losses = inputs if isinstance(inputs, tuple) else (inputs, None)
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        return logits if losses is None else (logits, losses)


class GPTPipe(PipelineModule):
    """The pipeline form of one MoEGPTForCausalLM; `config` is its MoEGPTConfig (saved with the run)."""

    def __init__(
        self, model: MoEGPTForCausalLM, topology, partition_method: str, activation_checkpoint_interval: int = 0
    ):
        moe = model.config.moe_enabled
        layers = [
            EmbeddingPipe(model.embed_tokens, moe),
            *(BlockPipe(b, model.rotary) for b in model.layers),
            HeadPipe(model.norm, model.lm_head),
        ]
        super().__init__(
            layers,
            topology=topology,
            loss_fn=self.compute_loss,
            partition_method=partition_method,
            activation_checkpoint_interval=activation_checkpoint_interval,
        )
        self.config = model.config
        self._last_losses = OrderedDict(lm_loss=torch.zeros(()), aux_loss=torch.zeros(()))

    def compute_loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        """On the last stage: LM loss + coefficient x router losses, as MoEGPTForCausalLM.forward computes it.
        outputs: logits (B, T, V) [, router losses (3,)]; labels: (B, T)."""
        logits, losses = outputs if isinstance(outputs, tuple) else (outputs, None)
        lm_loss = next_token_loss(logits, labels)
        aux_loss = losses[0] if losses is not None else lm_loss.new_zeros(())
        self._last_losses = OrderedDict(lm_loss=lm_loss.detach(), aux_loss=aux_loss.detach())
        if not self.training:  # validation reports the LM loss alone, as Trainer.validate does
            return lm_loss
        if losses is None:  # a dense model
            return lm_loss
        return training_loss(self.config, lm_loss, *losses)

    def get_additional_losses(self):
        """DeepSpeed's hook for reported losses: the engine averages these over micro-batches and data-parallel
        ranks and broadcasts them to every stage (engine.agg_additional_losses). Same keys on every stage."""
        return self._last_losses

    def local_blocks(self) -> list[tuple[int, Block]]:
        """(model layer index, Block) for the transformer blocks this stage holds."""
        return [(int(name) - 1, layer.block) for name, layer in self.named_children() if isinstance(layer, BlockPipe)]


def pipeline_topology(stages: int, world_size: int):
    """DeepSpeed's (pipe, data) grid: `stages` stages of world_size / stages data-parallel ranks."""
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

    return PipeDataParallelTopology(num_pp=stages, num_dp=world_size // stages)


def pipeline_ep_rank(topology, rank: int, ep_size: int) -> int:
    """This rank's index in its expert-parallel group: DeepSpeed's expert-parallel groups are consecutive
    data-parallel ranks inside a stage (groups.py, legacy path)."""
    return topology.get_coord(rank).data % ep_size


def to_pipeline(model: MoEGPTForCausalLM, topology, section: dict, ep_size: int, ep_rank: int) -> GPTPipe:
    """This rank's stage of `model` (built whole, with its layout-independent init and any init_from weights), with
    DeepSpeed's expert groups created pipeline-aware. `section`: the resolved ds_config's `pipeline` section."""
    pipe = GPTPipe(model, topology, section["partition"], section["activation_checkpoint_interval"])
    if model.config.moe_enabled:
        create_expert_groups(pipe, ep_size, ep_rank)
    return pipe


def create_expert_groups(pipe: GPTPipe, ep_size: int, ep_rank: int) -> None:
    """Create DeepSpeed's expert groups on every rank now, pipeline-aware.

    Why here: torch.distributed.new_group is a collective over all ranks, but DeepSpeed creates expert groups lazily,
    only on ranks that hold a MoE layer; a stage without one would never join and the ranks would disagree on every
    later group. With groups.mpu set to the pipeline grid (what deepspeed.initialize sets), groups.py keeps each
    expert-parallel and expert-data-parallel group inside one stage."""
    from deepspeed.utils import groups

    groups.mpu = pipe.mpu()
    name = f"ep_size_{ep_size}"
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    if groups._get_expert_parallel_rank(name) != ep_rank:
        raise RuntimeError(
            f"expert-parallel rank {groups._get_expert_parallel_rank(name)} != {ep_rank} assumed at init"
        )
