"""The training loop: deepspeed.initialize, warmup+cosine LR, clipping, validation, checkpoints, logging."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml

from moe.cli import parse_trainer_args
from moe.config import ConfigError, Resolved, to_dict, write_run_folder
from moe.data import BlockBatches, prepare_data
from moe.model.router_stats import summarize
from moe.parallel import all_reduce_mean, all_reduce_sum, barrier, expert_parallel_rank, init_distributed
from moe.preflight import preflight
from moe.train import checkpoint
from moe.train.grad_norm import install_expert_aware_clipping
from moe.train.metrics import MetricsLog
from moe.train.schedule import build_scheduler


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
        from moe.model import build_model, config_from_recipe
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
        self.model_config = config_from_recipe(recipe, vocab_size=vocab)
        if rank == 0:  # what `moe.export` and generation need besides the weights; fixed for the whole run
            self.data.tokenizer.save_pretrained(self.run_dir / "tokenizer")
            self.model_config.save_pretrained(self.run_dir / "model_config")
        ep_rank = expert_parallel_rank(recipe.moe.ep_size) if recipe.moe.enabled else 0
        model = build_model(self.model_config, seed=t.seed, ep_rank=ep_rank)
        weight_decay = resolved.ds_config["optimizer"]["params"]["weight_decay"]
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, weight_decay),
                                                    lr_scheduler=partial(build_scheduler, train_cfg=t),
                                                    config=resolved.ds_config)
        install_expert_aware_clipping(self.engine)
        for block in model.layers:
            if block.is_moe:
                block.mlp.router_stats.enabled = recipe.logging.router_stats
        # Seed after model build and engine setup, whose RNG use depends on the layout: gate sampling (RTS, 2nd
        # expert, noise) then draws the same numbers on data-parallel rank r under every EP size / ZeRO stage.
        seed_everything(t.seed + rank)
        self.batches = BlockBatches(self.data.train, t.micro_batch_size, rank, resolved.dp_size, t.seed)
        self.val_batches = BlockBatches(self.data.val, t.micro_batch_size, rank, resolved.dp_size, t.seed,
                                        shuffle=False)
        self.step = 0
        self.code_version = checkpoint.code_version() if rank == 0 else {}
        wandb_id = None
        if resume:
            tag, client_state = checkpoint.load(self.engine, self.run_dir)
            self.step, wandb_id = client_state["step"], client_state.get("wandb_id")
            if rank == 0:
                print(f"resumed from {tag}: step {self.step}", flush=True)
        self.metrics = MetricsLog(self.run_dir, resolved.as_dict(), recipe, wandb_id, self.step) if rank == 0 else None

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
        sums = torch.zeros(3, dtype=torch.float64)
        for micro in range(accum):
            ids = self.batches.batch(self.step * accum + micro).to(engine.device)  # (B, T)
            out = engine(ids, labels=ids)
            engine.backward(out.loss)
            engine.step()
            sums += torch.stack([out.loss.detach(), out.lm_loss.detach(), out.aux_loss.detach()]).double().cpu()
        self.step += 1
        loss, lm_loss, aux_loss = all_reduce_mean((sums / accum).tolist())
        elapsed = time.perf_counter() - start
        grad_norm = engine.get_global_grad_norm()
        return {"step": self.step, "loss": loss, "lm_loss": lm_loss, "aux_loss": aux_loss, "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": self.resolved.global_batch_tokens / elapsed, "step_time_s": elapsed}

    def router_metrics(self) -> dict:
        """Routing telemetry summed over all ranks since the last call, per MoE layer (one all-reduce)."""
        layers = [(i, block.mlp.router_stats) for i, block in enumerate(self.engine.module.layers) if block.is_moe]
        if not layers or not self.recipe.logging.router_stats:
            return {}
        sums = all_reduce_sum(torch.cat([stats.sums for _, stats in layers]))
        out, width = {}, layers[0][1].sums.numel()
        for n, (layer, stats) in enumerate(layers):
            for key, value in summarize(sums[n * width:(n + 1) * width], stats.num_experts).items():
                out[f"router/layer{layer}/{key}"] = value
            stats.reset()
        return out

    @torch.no_grad()
    def validate(self) -> float:
        engine = self.engine
        engine.eval()
        total = 0.0
        for i in range(self.recipe.train.eval_batches):
            ids = self.val_batches.batch(i).to(engine.device)
            total += float(engine(ids, labels=ids).lm_loss)
        engine.train()
        (val_loss,) = all_reduce_mean([total / self.recipe.train.eval_batches])
        if self.metrics:
            self.metrics.log({"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))})
        return val_loss

    def save(self) -> None:
        client_state = {"step": self.step, "samples_consumed": self.step * self.resolved.ds_config["train_batch_size"],
                        "wandb_id": self.metrics.wandb_id if self.metrics else None}
        metadata = {"recipe.yaml": yaml.safe_dump(to_dict(self.recipe), sort_keys=False),
                    "ds_config.json": json.dumps(self.resolved.ds_config, indent=2) + "\n",
                    "version.json": json.dumps(self.code_version, indent=2) + "\n"}
        checkpoint.save(self.engine, self.run_dir, self.step, client_state, metadata,
                        keep=self.recipe.train.keep_checkpoints)
