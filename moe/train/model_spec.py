"""The two MoE paths (`moe.impl`) behind one small interface: what the trainer needs to know of a model family.

    vocab_size(recipe, tokenizer)          embedding rows
    build(resolved, vocab, rank, resume)   this rank's model, initialized (or from model.init_from), before the engine
    compile(engine, ds_config)             torch.compile regions, when the ds_config has a `compile` section
    router_telemetry(module, recipe)       per-layer router sums (moe/model/router_stats.py's names)
    loss_parts(output, recipe)             (LM loss, unscaled aux loss) of a training forward

`NativeSpec` is our GPT on deepspeed.moe.layer.MoE (moe.impl=deepspeed, the dense baseline too); `AutoEPSpec` a
stock HF family whose sparse blocks DeepSpeed's AutoEP swaps in at initialize (moe.impl=autoep). The checkpoint half
of each path (its converted form and export) is chosen from a tag's metadata (moe/checkpoint/conversion.py). The
trainer asks `model_spec(recipe)` once and never which path it is on (torchtitan's ModelSpec is the model).
"""

from __future__ import annotations

from typing import Protocol

import torch

from moe.checkpoint.hf_import import init_from_vocab_size, load_family_checkpoint, load_init_from
from moe.config import Resolved
from moe.config.autoep_families import FAMILIES
from moe.model.hf.autoep_stats import AutoEPRouterTelemetry, autoep_layers
from moe.model.router_stats import GPTRouterTelemetry
from moe.parallel import expert_parallel_rank
from moe.train.activation_checkpointing import enable_activation_checkpointing
from moe.train.compile import compile_autoep, compile_gpt_blocks


def padded_vocab(tokenizer) -> int:
    """The tokenizer's length padded up to a multiple of 64 (matmul-friendly embedding and LM head)."""
    return (len(tokenizer) + 63) // 64 * 64


class RouterTelemetry(Protocol):
    enabled: bool

    def record(self, output) -> None: ...  # after each training forward
    def paused(self): ...  # a context: validation forwards are not counted
    def sums(self) -> dict[int, dict[str, torch.Tensor]]: ...  # {MoE layer: named sums}, each summed over ranks
    def reset(self) -> None: ...


class ModelSpec(Protocol):
    def vocab_size(self, recipe, tokenizer) -> int: ...
    def build(self, resolved: Resolved, vocab_size: int, rank: int, resume: bool) -> torch.nn.Module: ...
    def compile(self, engine, ds_config: dict) -> list[str]: ...
    def router_telemetry(self, module: torch.nn.Module, recipe) -> RouterTelemetry: ...
    def loss_parts(self, output, recipe) -> tuple[torch.Tensor, torch.Tensor]: ...


class NativeSpec:
    """moe.impl=deepspeed: our MoEGPTForCausalLM, or its PipelineModule form under a pipeline section."""

    def vocab_size(self, recipe, tokenizer) -> int:
        return init_from_vocab_size(recipe) or padded_vocab(tokenizer)

    def build(self, resolved: Resolved, vocab_size: int, rank: int, resume: bool) -> torch.nn.Module:
        from moe.model import build_model, config_from_recipe

        recipe, stages = resolved.recipe, resolved.pipeline_stages
        ep_size = recipe.moe.ep_size if recipe.moe.enabled else 1
        if stages > 1:  # deepspeed.pipe is imported only here: it adds ~120 MB to every rank's resident memory
            from moe.parallel.pipeline_module import pipeline_ep_rank, pipeline_topology, to_pipeline

            topology = pipeline_topology(stages, resolved.world_size)
            ep_rank = pipeline_ep_rank(topology, rank, ep_size)
        else:
            ep_rank = expert_parallel_rank(ep_size)
        model = build_model(config_from_recipe(recipe, vocab_size=vocab_size), seed=recipe.train.seed, ep_rank=ep_rank)
        if recipe.model.init_from and not resume:  # a resume loads the checkpoint's weights instead
            load_init_from(model, recipe.model.init_from, ep_rank, upcycle=recipe.model.upcycle)
        if stages > 1:
            return to_pipeline(model, topology, resolved.ds_config["pipeline"], ep_size, ep_rank)
        enable_activation_checkpointing(model, resolved.ds_config, recipe.train.recompute)  # the section, if any
        return model

    def compile(self, engine, ds_config: dict) -> list[str]:
        return compile_gpt_blocks(engine, ds_config)

    def router_telemetry(self, module: torch.nn.Module, recipe) -> GPTRouterTelemetry:
        local = {i: block.mlp.router_stats for i, block in module.local_blocks() if block.is_moe}
        return GPTRouterTelemetry(module.config, local, enabled=recipe.logging.router_stats)

    def loss_parts(self, output, recipe) -> tuple[torch.Tensor, torch.Tensor]:
        return output.lm_loss, output.aux_loss


class AutoEPSpec:
    """moe.impl=autoep: a stock HF family; deepspeed.initialize makes it expert-parallel."""

    def vocab_size(self, recipe, tokenizer) -> int:
        return recipe.model.vocab_size or padded_vocab(tokenizer)

    def build(self, resolved: Resolved, vocab_size: int, rank: int, resume: bool) -> torch.nn.Module:
        from moe.model.hf.families import build_hf_model

        recipe = resolved.recipe
        if recipe.model.init_from:  # on resume too: the checkpoint then overwrites every weight
            return load_family_checkpoint(recipe)
        return build_hf_model(recipe, vocab_size, recipe.train.seed)

    def compile(self, engine, ds_config: dict) -> list[str]:
        return compile_autoep(engine, ds_config)

    def router_telemetry(self, module: torch.nn.Module, recipe) -> AutoEPRouterTelemetry:
        e = recipe.moe
        return AutoEPRouterTelemetry(
            autoep_layers(module),
            e.num_experts,
            e.top_k,
            has_logits=FAMILIES[recipe.model.family].aux_loss,
            enabled=recipe.logging.router_stats,
        )

    def loss_parts(self, output, recipe) -> tuple[torch.Tensor, torch.Tensor]:
        """The HF model folds coef x aux into its loss: take it back out."""
        aux = output.aux_loss if getattr(output, "aux_loss", None) is not None else output.loss.new_zeros(())
        return output.loss - recipe.moe.aux_loss_coef * aux, aux


SPECS: dict[str, ModelSpec] = {"deepspeed": NativeSpec(), "autoep": AutoEPSpec()}


def model_spec(recipe) -> ModelSpec:
    return SPECS[recipe.moe.impl]
