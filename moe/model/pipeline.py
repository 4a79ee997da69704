"""Our GPT as a `deepspeed.pipe.PipelineModule`: embedding, one pipeline layer per transformer block, head.

DeepSpeed's PipelineModule keeps only this rank's stage of those layers and its PipelineEngine runs the 1F1B
schedule, the stage-to-stage sends and the data-parallel gradient reduction; the MoE layers stay DeepSpeed's own
`deepspeed.moe.layer.MoE`, with expert-parallel groups inside a stage.

Weights: the whole MoEGPTForCausalLM is built first, with the layout-independent init of moe/model/build.py, and its
modules are handed to PipelineModule. A pipeline run therefore starts from exactly the weights of the non-pipeline
run at the same seed, and the two differ only by float summation order (tests/distributed/test_pipeline.py). The
price is one whole model in host memory per rank while building, which is what the non-pipeline path holds anyway.

Between stages flows a tuple: the hidden states (B, T, d) and the router losses (3,) = (balance aux, z, seq-aux)
summed over the MoE layers so far. Why carry them: a MoE layer may sit on any stage, but only the last stage computes
the loss (PipelineEngine calls `loss_fn` there), so the aux loss must travel with the activations to be added into
the loss with its coefficient, and its gradient then flows back through the same sends to each router. A dense
model sends the hidden states alone.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from deepspeed.pipe import PipelineModule
from torch import nn

from moe.model.modeling import Block, MoEGPTForCausalLM, next_token_loss, training_loss
from moe.model.layers import RotaryEmbedding

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

    def __init__(self, model: MoEGPTForCausalLM, topology, partition_method: str,
                 activation_checkpoint_interval: int = 0):
        moe = model.config.moe_enabled
        layers = [EmbeddingPipe(model.embed_tokens, moe), *(BlockPipe(b, model.rotary) for b in model.layers),
                  HeadPipe(model.norm, model.lm_head)]
        super().__init__(layers, topology=topology, loss_fn=self.compute_loss, partition_method=partition_method,
                         activation_checkpoint_interval=activation_checkpoint_interval)
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


def build_pipeline_model(recipe, ds_config: dict, vocab_size: int, rank: int, world_size: int,
                         resume: bool = False) -> GPTPipe:
    """This rank's stage of the recipe's GPT, initialized exactly as the non-pipeline model at the same seed."""
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

    from moe.config.pipeline import pipeline_stages
    from moe.model import build_model, config_from_recipe
    stages = pipeline_stages(ds_config)
    topology = PipeDataParallelTopology(num_pp=stages, num_dp=world_size // stages)
    ep_size = recipe.moe.ep_size if recipe.moe.enabled else 1
    # DeepSpeed's expert-parallel groups are consecutive data-parallel ranks inside a stage (groups.py, legacy path)
    ep_rank = topology.get_coord(rank).data % ep_size
    model = build_model(config_from_recipe(recipe, vocab_size=vocab_size), seed=recipe.train.seed, ep_rank=ep_rank)
    if recipe.model.init_from and not resume:
        from moe.model.hf_import import load_init_from
        load_init_from(model, recipe.model.init_from, ep_rank, upcycle=recipe.model.upcycle)
    section = ds_config["pipeline"]
    pipe = GPTPipe(model, topology, section["partition"], section["activation_checkpoint_interval"])
    if recipe.moe.enabled:
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
        raise RuntimeError(f"expert-parallel rank {groups._get_expert_parallel_rank(name)} != {ep_rank} assumed at init")


def full_param_name(pipe_name: str, n_layers: int) -> str:
    """A GPTPipe parameter name -> the MoEGPTForCausalLM name: `0.embed_tokens.weight` -> `embed_tokens.weight`,
    `2.block.attn.q_proj.weight` -> `layers.1.attn.q_proj.weight`, `{n_layers + 1}.norm.weight` -> `norm.weight`."""
    index, rest = pipe_name.split(".", 1)
    if int(index) in (0, n_layers + 1):
        return rest
    return f"layers.{int(index) - 1}.{rest.removeprefix('block.')}"


LAYER_FILE = re.compile(r"^layer_(\d+)-model_states\.pt$")


def is_pipeline_checkpoint(tag_dir: Path) -> bool:
    """Whether a checkpoint tag was written by a pipeline run (its saved ds_config has pipeline.stages > 1)."""
    import json

    from moe.config.pipeline import pipeline_stages
    ds_path = Path(tag_dir) / "ds_config.json"
    return ds_path.is_file() and pipeline_stages(json.loads(ds_path.read_text())) > 1


def pipeline_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The whole model's state dict (MoEGPTForCausalLM names, experts by global index) from a pipeline checkpoint.

    DeepSpeed writes a stage in one of two ways: a stage without a MoE layer through PipelineModule's per-layer files
    (`layer_XX-model_states.pt`, keys relative to the layer); a stage with one through the MoE checkpoint path, as a
    non-pipeline MoE engine does: its non-expert weights in `mp_rank_<stage>_model_states.pt` (keys `<layer>.<name>`)
    and one file per expert (`layer_<moe layer>_expert_<global index>_mp_rank_<stage>_model_states.pt`, keys
    already by global expert index)."""
    import yaml
    tag_dir = Path(tag_dir)
    n_layers = yaml.safe_load((tag_dir / "recipe.yaml").read_text())["model"]["n_layers"]
    pipe_state = {}
    for path in sorted(tag_dir.iterdir()):
        if match := LAYER_FILE.match(path.name):
            layer = torch.load(path, map_location="cpu", weights_only=False)
            pipe_state.update({f"{int(match.group(1))}.{key}": tensor for key, tensor in layer.items()})
    for path in sorted(tag_dir.glob("mp_rank_*_model_states.pt")):
        module = torch.load(path, map_location="cpu", weights_only=False)["module"]  # None on a per-layer stage
        pipe_state.update(module or {})
    for path in sorted(tag_dir.glob("layer_*_expert_*_mp_rank_*_model_states.pt")):
        pipe_state.update(torch.load(path, map_location="cpu", weights_only=False))
    return {full_param_name(name, n_layers): tensor for name, tensor in pipe_state.items()}
