"""The training loop: data, model (through its MoE path's spec), engine, then steps with validation, checkpoints and
metrics. One rank's view; every rank runs the same loop (moe/launch/rank.py starts it)."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch

from moe import checkpoint
from moe.config import Resolved
from moe.data import BlockBatches, prepare_data
from moe.parallel import barrier
from moe.train.accumulate import MicroBatchSteps
from moe.train.engine import build_engine
from moe.train.metrics import MetricsLog
from moe.train.model_spec import model_spec
from moe.train.pipeline_step import PipelineSteps
from moe.train.router_telemetry import router_metrics
from moe.train.run_folder import write_device_peaks, write_model_files, write_resolved_config
from moe.train.throughput import ThroughputMeter


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, resolved: Resolved, rank: int, resume: bool = False):
        self.resolved, self.rank, self.resume = resolved, rank, resume
        self.recipe, self.run_dir = resolved.recipe, resolved.run_dir
        self.spec = model_spec(self.recipe)
        if rank == 0:
            write_resolved_config(resolved)
        self.data = self._prepare_data()
        self.engine = self._build_engine()
        self.model_config = self.engine.module.config
        compiled = self.spec.compile(self.engine, resolved.ds_config)  # the ds_config's section; never with PP
        if compiled and rank == 0:
            print(f"torch.compile: {len(compiled)} regions ({compiled[0]}, ...)", flush=True)
        self.telemetry = self.spec.router_telemetry(self.engine.module, self.recipe)
        pipeline = resolved.pipeline_stages > 1
        self.steps = (PipelineSteps if pipeline else MicroBatchSteps)(
            self.engine, self.spec, self.telemetry, self.recipe
        )
        # TFLOP/s, MFU, memory: rank 0 writes the metrics, so only it measures the peak and reads the timers
        self.throughput = (
            ThroughputMeter(
                self.model_config,
                self.recipe.data.seq_len,
                resolved.global_batch_tokens,
                resolved.world_size,
                self.recipe.logging.peak_tflops,
                resolved.precision,
            )
            if rank == 0
            else None
        )
        if self.throughput:
            write_device_peaks(self.run_dir, self.throughput.describe())
            warning = self.throughput.slow_bf16_warning()
            if warning:
                print(f"warning: {warning}", flush=True)
        self._make_batches(self.engine.grid.get_data_parallel_rank() if pipeline else rank)
        self.step = self.samples_consumed = 0  # optimizer steps taken, training samples drawn (global)
        wandb_id = self._restore() if resume else None
        self.code_version = checkpoint.code_version() if rank == 0 else {}
        self.metrics = (
            MetricsLog(self.run_dir, resolved.as_dict(), self.recipe, wandb_id, self.step) if rank == 0 else None
        )

    def _prepare_data(self):
        data = prepare_data(self.recipe.data) if self.rank == 0 else None  # rank 0 builds the caches first
        barrier()
        return data or prepare_data(self.recipe.data)

    def _build_engine(self):
        resolved = self.resolved
        vocab = self.spec.vocab_size(self.recipe, self.data.tokenizer)
        model = self.spec.build(resolved, vocab, self.rank, self.resume)
        if self.rank == 0:
            write_model_files(self.run_dir, self.data.tokenizer, model.config)
        return build_engine(model, self.recipe, resolved.ds_config)

    def _make_batches(self, dp_rank: int) -> None:
        """Seed after model build and engine setup, whose RNG use depends on the layout: gate sampling (RTS, 2nd
        expert, noise) then draws the same numbers on data-parallel rank r under every EP size / ZeRO stage. A
        pipeline stage's ranks share their data-parallel rank's data."""
        t, dp_size = self.recipe.train, self.resolved.dp_size
        seed_everything(t.seed + self.rank)
        self.batches = BlockBatches(self.data.train, t.micro_batch_size, dp_rank, dp_size, t.seed)
        self.val_batches = BlockBatches(self.data.val, t.micro_batch_size, dp_rank, dp_size, t.seed, shuffle=False)

    def _restore(self) -> str | None:
        """Load the latest checkpoint; returns the run's W&B id."""
        layout = checkpoint.checkpoint_layout_of(self.resolved)
        tag, client_state = checkpoint.load(self.engine, self.run_dir, layout, seed=self.recipe.train.seed)
        self.step = client_state["step"]
        self.samples_consumed = client_state.get(
            "samples_consumed", self.step * self.resolved.ds_config["train_batch_size"]
        )
        if self.rank == 0:
            print(f"resumed from {tag}: step {self.step}", flush=True)
        return client_state.get("wandb_id")

    def fit(self) -> None:
        t = self.recipe.train
        if self.step == 0 and t.eval_interval:
            self.validate()
        from tqdm import tqdm

        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            desc=self.recipe.logging.run_name,
            unit="step",
            disable=self.rank != 0 or not self.recipe.logging.progress_bar,
            dynamic_ncols=True,
        )
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
        engine = self.engine
        start = time.perf_counter()
        lr = engine.get_lr()[0]
        loss, lm_loss, aux_loss = self.steps.train(self.batches, self.samples_consumed, self.recipe.train.grad_accum)
        self.step += 1
        self.samples_consumed += self.resolved.ds_config["train_batch_size"]
        elapsed = time.perf_counter() - start
        grad_norm = engine.get_global_grad_norm()
        record = {
            "step": self.step,
            "loss": loss,
            "lm_loss": lm_loss,
            "aux_loss": aux_loss,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": self.resolved.global_batch_tokens / elapsed,
            "step_time_s": elapsed,
            "time": time.time(),  # wall clock at the step's end: throughput between steps, bookkeeping included
        }
        if self.resolved.precision == "fp16":  # dynamic loss scaling: DeepSpeed skips a step that overflowed
            record.update(
                loss_scale=float(engine._get_optimizer_loss_scale()),
                skipped_steps=engine.skipped_steps,
                overflow=not engine.was_step_applied(),
            )
        if self.throughput:
            record.update(self.throughput.record(engine, elapsed))
        return record

    def router_metrics(self) -> dict:
        """Routing telemetry summed over all ranks since the last call, per MoE layer (one all-reduce)."""
        return router_metrics(self.telemetry, self.engine.device)

    @torch.no_grad()
    def validate(self) -> float:
        self.engine.eval()
        val_loss = self.steps.validation_loss(self.val_batches, self.recipe.train.eval_batches)
        self.engine.train()
        if self.throughput:
            self.throughput.forget_work_between_steps(self.engine)
        if self.metrics:
            self.metrics.log({"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))})
        return val_loss

    def save(self) -> None:
        client_state = {
            "step": self.step,
            "samples_consumed": self.samples_consumed,
            "wandb_id": self.metrics.wandb_id if self.metrics else None,
        }
        checkpoint.save(
            self.engine,
            self.run_dir,
            self.step,
            client_state,
            checkpoint.tag_metadata(self.resolved, self.code_version),
            keep=self.recipe.train.keep_checkpoints,
        )
