"""The training loop: data, model (through its MoE path's spec), engine, then steps with validation, checkpoints and
metrics. One rank's view; every rank runs the same loop (moe/launch/rank.py starts it)."""

from __future__ import annotations

import math
import os
import random
import time

import numpy as np
import torch

from moe import checkpoint
from moe.config import Resolved
from moe.config.args import RESTART_REASON_ENV, restart_attempt
from moe.data import BlockBatches, prepare_data
from moe.parallel import barrier
from moe.train.accumulate import MicroBatchSteps
from moe.train.engine import build_engine
from moe.train.evaluation import EvalSet
from moe.train.faults import inject_step_faults, nan_loss
from moe.train.metrics import MetricsLog
from moe.train.model_spec import model_spec
from moe.train.pipeline_step import PipelineSteps
from moe.train.router_telemetry import router_metrics
from moe.train.run_folder import (
    write_block_losses,
    write_data_summary,
    write_device_peaks,
    write_done,
    write_model_files,
    write_resolved_config,
)
from moe.train.step_health import StepHealth, StepHealthError
from moe.train.throughput import ThroughputMeter
from moe.train.watchdog import Progress, watch_engine


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, resolved: Resolved, rank: int, resume: bool = False, progress: Progress | None = None):
        """`progress`: where this rank is, for its hang watchdog and end record (moe/launch/rank.py)."""
        self.resolved, self.rank, self.resume = resolved, rank, resume
        self.progress = progress or Progress()
        self.recipe, self.run_dir = resolved.recipe, resolved.run_dir
        self.spec = model_spec(self.recipe)
        if rank == 0:
            write_resolved_config(resolved)
        self.data = self._prepare_data()
        self.engine = self._build_engine()
        watch_engine(self.engine, self.progress)
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
        t = self.recipe.train
        self.health = StepHealth(t.max_skipped_steps, t.loss_spike_factor, fp16=resolved.precision == "fp16")
        self.last_val_loss = None
        wandb_id = self._restore() if resume else None
        self.code_version = checkpoint.code_version() if rank == 0 else {}
        self.metrics = (
            MetricsLog(self.run_dir, resolved.as_dict(), self.recipe, wandb_id, self.step) if rank == 0 else None
        )
        attempt = restart_attempt()  # set by the launcher's automatic restarts
        if self.metrics and attempt:
            self.metrics.log_restart(self.step, attempt, os.environ.get(RESTART_REASON_ENV, ""))

    def _prepare_data(self):
        """The launcher prepared the shards before spawning; rank 0 builds what is still missing (a job started
        another way), the others then map the same files."""
        data = prepare_data(self.recipe.data) if self.rank == 0 else None
        barrier()
        data = data or prepare_data(self.recipe.data)
        if self.rank == 0:
            write_data_summary(self.run_dir, data.summary())
        return data

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
        data_seed = t.seed if t.data_seed is None else t.data_seed
        sources = self.data.sources
        self.batches = BlockBatches(
            [s.train for s in sources],
            t.micro_batch_size,
            dp_rank,
            dp_size,
            data_seed,
            weights=[s.weight for s in sources],
        )
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.eval_sets = {"val": EvalSet.of(self.data.val, t.eval_blocks)}
        if t.train_eval_blocks:  # the same seeded sample of training blocks: the train/validation gap
            self.eval_sets["train_sample"] = EvalSet.of(self.data.train, t.train_eval_blocks)

    def _restore(self) -> str | None:
        """Load the latest checkpoint; returns the run's W&B id."""
        layout = checkpoint.checkpoint_layout_of(self.resolved)
        tag, client_state = checkpoint.load(self.engine, self.run_dir, layout, seed=self.recipe.train.seed)
        self.step = client_state["step"]  # tokens seen = samples_consumed x seq_len, recorded as client_state tokens
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
        while self.step < t.max_steps:  # resolve derived max_steps from train.max_tokens when that is given
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            # a skipped step logs its router telemetry whatever the interval: the verdict is the same on every rank
            if self.step % t.log_interval == 0 or self.step == t.max_steps or record.get("skipped"):
                record.update(self.router_metrics())  # a collective: every rank, on the same steps
                if self.metrics:
                    self.metrics.log(record)
            stop = self.health.stop_reason()
            if stop:
                raise StepHealthError(stop)
            last = self.step == t.max_steps
            if (t.eval_interval and self.step % t.eval_interval == 0) or last:
                self.validate()
            if (t.save_interval and self.step % t.save_interval == 0) or last:
                self.save()
        bar.close()
        if self.metrics:
            self.metrics.close()
            write_done(self.run_dir, {"step": self.step, "tokens": self.tokens_seen, "val_loss": self.last_val_loss})

    def train_step(self) -> dict:
        engine = self.engine
        self.progress.report("data", self.step + 1)
        inject_step_faults(self.rank, self.step + 1)
        self.steps.poison_loss = nan_loss(self.rank, self.step + 1)
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
            "tokens": self.tokens_seen,
            **self.tokens_per_source(),
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
        health = self.health.check(self.step, loss, record["grad_norm"], engine.was_step_applied())
        warning = self.health.warning(self.step, loss, record["grad_norm"], health)
        if warning and self.rank == 0:
            print(f"warning: {warning}", flush=True)
        record.update(health)
        return record

    @property
    def tokens_seen(self) -> int:
        return self.samples_consumed * self.recipe.data.seq_len

    def tokens_per_source(self) -> dict:
        counts = self.batches.samples_per_source(self.samples_consumed)
        return {f"tokens/{s.label}": n * self.recipe.data.seq_len for s, n in zip(self.data.sources, counts)}

    def router_metrics(self) -> dict:
        """Routing telemetry summed over all ranks since the last call, per MoE layer (one all-reduce)."""
        return router_metrics(self.telemetry, self.engine.device)

    @torch.no_grad()
    def validate(self) -> float:
        """Score the validation set (and the training sample): mean per-block loss and its standard error."""
        self.engine.eval()
        with self.progress.within("validation"):
            results = {name: self.steps.evaluate(es, self.dp_rank, self.dp_size) for name, es in self.eval_sets.items()}
        self.engine.train()
        if self.throughput:
            self.throughput.forget_work_between_steps(self.engine)
        val = results["val"]
        self.last_val_loss = val.loss
        record = {"step": self.step, "tokens": self.tokens_seen, "val_loss": val.loss, "val_loss_se": val.stderr}
        record.update(val_ppl=math.exp(min(val.loss, 50.0)), val_blocks=val.blocks)
        if "train_sample" in results:
            sample = results["train_sample"]
            record.update(train_sample_loss=sample.loss, train_sample_loss_se=sample.stderr)
            record["val_train_gap"] = val.loss - sample.loss
        if self.metrics:
            self.metrics.log(record)
            for name, result in results.items():
                if result.block_losses is not None:
                    write_block_losses(self.run_dir, name, self.step, result.block_losses)
        return val.loss

    def save(self) -> None:
        self.progress.report("checkpoint")
        client_state = {
            "step": self.step,
            "samples_consumed": self.samples_consumed,
            "tokens": self.tokens_seen,
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
