"""The training loop: deepspeed.initialize, warmup+cosine LR, clipping, validation, checkpoints, logging."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml

from moe.cli import parse_trainer_args
from moe.config import ConfigError, Resolved, to_dict, write_run_folder
from moe.config.pipeline import pipeline_stages
from moe.data import BlockBatches, prepare_data
from moe.model.gate import update_routing_bias
from moe.model.router_stats import summarize
from moe.parallel import all_reduce_mean, all_reduce_sum, barrier, expert_parallel_rank, init_distributed
from moe.preflight import preflight
from moe.train import checkpoint, pipeline_step
from moe.train.activation_checkpointing import enable_activation_checkpointing
from moe.train.compile import compile_model
from moe.train.grad_norm import install_expert_aware_clipping
from moe.train.metrics import MetricsLog
from moe.train.schedule import build_scheduler
from moe.train.throughput import ThroughputMeter


def main(argv: list[str] | None = None) -> None:
    args = parse_trainer_args(sys.argv[1:] if argv is None else argv)
    rank, world_size = init_distributed()
    try:
        resolved = preflight(args, world_size, cuda=torch.cuda.is_available())
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    Trainer(resolved, rank, resume=args.resume).fit()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, resolved: Resolved, rank: int, resume: bool = False):
        import deepspeed
        from moe.train.optim import param_groups

        self.resolved, self.rank, self.resume = resolved, rank, resume
        self.recipe = recipe = resolved.recipe
        self.run_dir: Path = resolved.run_dir
        if rank == 0:
            write_run_folder(resolved)
        self.data = prepare_data(recipe.data) if rank == 0 else None  # rank 0 builds the caches first
        barrier()
        self.data = self.data or prepare_data(recipe.data)

        t = recipe.train
        vocab = (len(self.data.tokenizer) + 63) // 64 * 64  # pad the embedding to a multiple of 64
        self.pipeline = pipeline_stages(resolved.ds_config) > 1  # a deepspeed.pipe PipelineModule (moe/model/pipeline.py)
        if self.pipeline:
            from moe.model.pipeline import build_pipeline_model
            model = build_pipeline_model(recipe, resolved.ds_config, vocab, rank, resolved.world_size, resume)
        else:
            model = self.build_model(vocab)
            enable_activation_checkpointing(model, resolved.ds_config, t.recompute)  # the ds_config section, if any
        self.model_config = model.config
        if rank == 0:  # what `moe.export` and generation need besides the weights; fixed for the whole run
            self.data.tokenizer.save_pretrained(self.run_dir / "tokenizer")
            self.model_config.save_pretrained(self.run_dir / "model_config")
        weight_decay = resolved.ds_config["optimizer"]["params"]["weight_decay"]
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, weight_decay),
                                                    lr_scheduler=partial(build_scheduler, train_cfg=t),
                                                    config=resolved.ds_config)
        (pipeline_step.install_pipeline_clipping if self.pipeline else install_expert_aware_clipping)(self.engine)
        compiled = compile_model(self.engine, recipe.moe.impl, resolved.ds_config)  # the section; never with PP
        if compiled and rank == 0:
            print(f"torch.compile: {len(compiled)} regions ({compiled[0]}, ...)", flush=True)
        # TFLOP/s, MFU, memory: rank 0 writes the metrics, so only it measures the peak and reads the timers
        self.throughput = ThroughputMeter(self.model_config, recipe.data.seq_len, resolved.global_batch_tokens,
                                          resolved.world_size, recipe.logging.peak_tflops) if rank == 0 else None
        self.autoep_stats = self.autoep_router_stats() if recipe.moe.impl == "autoep" else None
        blocks = [b for _, b in model.local_blocks()] if self.pipeline else getattr(model, "layers", ())
        for block in blocks:  # our GPT (moe.impl=deepspeed)
            if block.is_moe:
                block.mlp.router_stats.enabled = recipe.logging.router_stats
        # Seed after model build and engine setup, whose RNG use depends on the layout: gate sampling (RTS, 2nd
        # expert, noise) then draws the same numbers on data-parallel rank r under every EP size / ZeRO stage.
        seed_everything(t.seed + rank)
        dp_rank = self.engine.grid.get_data_parallel_rank() if self.pipeline else rank  # a stage's ranks share data
        self.batches = BlockBatches(self.data.train, t.micro_batch_size, dp_rank, resolved.dp_size, t.seed)
        self.val_batches = BlockBatches(self.data.val, t.micro_batch_size, dp_rank, resolved.dp_size, t.seed,
                                        shuffle=False)
        self.step = self.samples_consumed = 0  # optimizer steps taken, training samples drawn (global)
        self.code_version = checkpoint.code_version() if rank == 0 else {}
        wandb_id = None
        if resume:
            layout = checkpoint.run_layout(to_dict(recipe), resolved.ds_config, resolved.world_size)
            tag, client_state = checkpoint.load(self.engine, self.run_dir, layout, seed=t.seed)
            self.step, wandb_id = client_state["step"], client_state.get("wandb_id")
            self.samples_consumed = client_state.get("samples_consumed",
                                                     self.step * resolved.ds_config["train_batch_size"])
            if rank == 0:
                print(f"resumed from {tag}: step {self.step}", flush=True)
        self.metrics = MetricsLog(self.run_dir, resolved.as_dict(), recipe, wandb_id, self.step) if rank == 0 else None

    def build_model(self, vocab: int) -> torch.nn.Module:
        recipe, seed = self.recipe, self.recipe.train.seed
        if recipe.moe.impl == "autoep":  # a stock HF family; deepspeed.initialize makes it expert-parallel
            from moe.model.hf_families import build_hf_model
            return build_hf_model(recipe, vocab, seed)
        from moe.model import build_model, config_from_recipe
        ep_rank = expert_parallel_rank(recipe.moe.ep_size) if recipe.moe.enabled else 0
        model = build_model(config_from_recipe(recipe, vocab_size=vocab), seed=seed, ep_rank=ep_rank)
        if recipe.model.init_from and not self.resume:  # from an HF folder (moe/model/hf_import.py)
            from moe.model.hf_import import load_init_from
            load_init_from(model, recipe.model.init_from, ep_rank, upcycle=recipe.model.upcycle)
        return model

    def autoep_router_stats(self):
        from moe.model.autoep_stats import AutoEPRouterStats
        from moe.model.hf_families import FAMILIES, autoep_layers
        e, family = self.recipe.moe, FAMILIES[self.recipe.model.family]
        stats = AutoEPRouterStats(autoep_layers(self.engine.module), e.num_experts, e.top_k, has_logits=family.aux_loss)
        stats.enabled = self.recipe.logging.router_stats
        return stats

    def loss_parts(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        """(LM loss, unscaled aux loss) of a forward: our GPT reports both; an HF family folds coef * aux into loss."""
        if self.autoep_stats is None:
            return out.lm_loss, out.aux_loss
        aux = out.aux_loss if getattr(out, "aux_loss", None) is not None else out.loss.new_zeros(())
        return out.loss - self.recipe.moe.aux_loss_coef * aux, aux

    def fit(self) -> None:
        t = self.recipe.train
        if self.step == 0 and t.eval_interval:
            self.validate()
        from tqdm import tqdm
        bar = tqdm(total=t.max_steps, initial=self.step, desc=self.recipe.logging.run_name, unit="step",
                   disable=self.rank != 0 or not self.recipe.logging.progress_bar, dynamic_ncols=True)
        while self.step < t.max_steps:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if self.step % t.log_interval == 0 or self.step == t.max_steps:
                record.update(self.router_metrics())  # a collective: every rank, on the same steps
                if self.metrics:
                    self.metrics.log(record)
            last = self.step == t.max_steps
            if (t.eval_interval and self.step % t.eval_interval == 0) or last:
                self.validate()
            if (t.save_interval and self.step % t.save_interval == 0) or last:
                self.save()
        bar.close()
        if self.metrics:
            self.metrics.close()

    def train_step(self) -> dict:
        engine, accum = self.engine, self.recipe.train.grad_accum
        start = time.perf_counter()
        lr = engine.get_lr()[0]
        if self.pipeline:  # one PipelineEngine.train_batch is the whole step; its losses come back global
            loss, lm_loss, aux_loss = pipeline_step.train_batch(engine, self.batches, self.samples_consumed, accum)
        else:
            loss, lm_loss, aux_loss = self.accumulate(accum)
        self.step += 1
        self.samples_consumed += self.resolved.ds_config["train_batch_size"]
        elapsed = time.perf_counter() - start
        grad_norm = engine.get_global_grad_norm()
        record = {"step": self.step, "loss": loss, "lm_loss": lm_loss, "aux_loss": aux_loss, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_per_s": self.resolved.global_batch_tokens / elapsed, "step_time_s": elapsed}
        if self.resolved.precision == "fp16":  # dynamic loss scaling: DeepSpeed skips a step that overflowed
            record.update(loss_scale=float(engine._get_optimizer_loss_scale()), skipped_steps=engine.skipped_steps,
                          overflow=not engine.was_step_applied())
        if self.throughput:
            record.update(self.throughput.record(engine, elapsed))
        return record

    def accumulate(self, accum: int) -> list[float]:
        """Forward, backward and step over `accum` micro-batches; (loss, lm_loss, aux_loss) averaged over them and all
        ranks."""
        engine = self.engine
        sums = torch.zeros(3, dtype=torch.float64, device=engine.device)  # on device: no host sync per micro-batch
        for micro in range(accum):
            position = self.samples_consumed + micro * self.batches.samples_per_micro_step
            ids = self.batches.at_sample(position).to(engine.device)  # (B, T)
            out = engine(ids, labels=ids)
            engine.backward(out.loss)
            engine.step()
            lm_loss, aux_loss = self.loss_parts(out)
            if self.autoep_stats is not None:
                self.autoep_stats.record(getattr(out, "router_logits", None))
            sums += torch.stack([out.loss.detach(), lm_loss.detach(), aux_loss.detach()]).double()
        update_routing_bias(engine.module)  # aux-loss-free balancing (moe.bias_update_rate), after the step
        return all_reduce_mean(sums / accum)  # the step's one read of the losses

    def router_metrics(self) -> dict:
        """Routing telemetry summed over all ranks since the last call, per MoE layer (one all-reduce)."""
        if self.autoep_stats is not None:
            return self.autoep_router_metrics()
        if not self.recipe.logging.router_stats:
            return {}
        module = self.engine.module  # a pipeline stage holds some of the blocks
        blocks = module.local_blocks() if self.pipeline else enumerate(module.layers)
        return layer_router_metrics(module.config, {i: b.mlp.router_stats for i, b in blocks if b.is_moe},
                                    self.engine.device)

    def autoep_router_metrics(self) -> dict:
        stats = self.autoep_stats
        if not stats.layers or not stats.enabled:
            return {}
        sums, width, out = all_reduce_sum(stats.sums()), stats.num_experts + 5, {}
        for n, layer in enumerate(stats.layer_ids):
            for key, value in summarize(sums[n * width:(n + 1) * width], stats.num_experts).items():
                if stats.has_logits or key not in ("router_entropy", "router_entropy_norm", "aux_loss"):
                    out[f"router/layer{layer}/{key}"] = value
        stats.reset()
        return out

    @torch.no_grad()
    def validate(self) -> float:
        engine, count = self.engine, self.recipe.train.eval_batches
        engine.eval()
        if self.pipeline:  # one PipelineEngine.eval_batch runs all `count` micro-batches
            total = pipeline_step.validation_loss(engine, self.val_batches, count) * count
        else:
            total = 0.0
            for i in range(count):
                ids = self.val_batches.batch(i).to(engine.device)
                with self.autoep_stats.paused() if self.autoep_stats is not None else nullcontext():
                    total += float(self.loss_parts(engine(ids, labels=ids))[0])
        engine.train()
        (val_loss,) = all_reduce_mean([total / count])
        if self.metrics:
            self.metrics.log({"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))})
        return val_loss

    def save(self) -> None:
        client_state = {"step": self.step, "samples_consumed": self.samples_consumed,
                        "wandb_id": self.metrics.wandb_id if self.metrics else None}
        metadata = {"recipe.yaml": yaml.safe_dump(to_dict(self.recipe), sort_keys=False),
                    "ds_config.json": json.dumps(self.resolved.ds_config, indent=2) + "\n",
                    "version.json": json.dumps(self.code_version, indent=2) + "\n"}
        checkpoint.save(self.engine, self.run_dir, self.step, client_state, metadata,
                        keep=self.recipe.train.keep_checkpoints)


def layer_router_metrics(config, local: dict, device: torch.device) -> dict:
    """Routing telemetry per MoE layer from each rank's RouterStats (`local`: layer index -> stats of the layers
    this rank holds), summed over all ranks in one all-reduce and reset. A layer held elsewhere (another pipeline
    stage) contributes zeros here, so every rank issues the same collective. `device`: where the sums are reduced
    (NCCL reduces device tensors only)."""
    layer_ids = config.moe_layer_ids()
    if not layer_ids:
        return {}
    widths = [config.experts_in_layer(i) + 7 for i in layer_ids]  # RouterStats.sums: E + 7 (router_stats.py)
    parts = [local[i].sums.to(device) if i in local else torch.zeros(w, dtype=torch.float64, device=device)
             for i, w in zip(layer_ids, widths)]
    summed = all_reduce_sum(torch.cat(parts))  # (sum of widths,), a copy: the local sums may be reset now
    for stats in local.values():
        stats.reset()
    return {f"router/layer{layer}/{key}": value for layer, sums in zip(layer_ids, summed.split(widths))
            for key, value in summarize(sums, config.experts_in_layer(layer)).items()}
