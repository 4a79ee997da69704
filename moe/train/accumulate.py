"""One optimizer step of a plain DeepSpeed engine (forward, backward and step over the step's micro-batches), what
follows the step (the aux-loss-free routing-bias update), and a validation pass. moe/train/pipeline_step.py is the
same interface for a PipelineEngine."""

from __future__ import annotations

import torch

from moe.model.gate import RouterGate
from moe.parallel import all_reduce_mean, all_reduce_sum
from moe.train.evaluation import EvalResult, EvalSet, row_losses
from moe.train.grad_norm import install_expert_aware_clipping, install_nonfinite_skip


def update_routing_biases(module: torch.nn.Module) -> None:
    """After an optimizer step: move every bias-balanced gate's bias toward equal load over the global batch.

    Loads are summed over all ranks (the data-parallel group; every rank holds every gate) in one all-reduce of
    sum(E) int64 counts for all MoE layers together, so every rank applies the same update and the biases stay
    identical. A no-op (and no collective) when no gate balances with a bias.
    """
    gates = [m for m in module.modules() if isinstance(m, RouterGate) and m.bias_update_rate > 0]
    if not gates:
        return
    local = torch.cat([gate.selection_counts for gate in gates])  # (sum of E,)
    counts = all_reduce_sum(local).to(local.device)
    for gate, load in zip(gates, counts.split([gate.selection_counts.numel() for gate in gates])):
        gate.update_bias(load)


class MicroBatchSteps:
    """Steps and validation passes of a DeepSpeedEngine, reading losses through the model spec."""

    def __init__(self, engine, spec, telemetry, recipe):
        self.engine, self.spec, self.telemetry, self.recipe = engine, spec, telemetry, recipe
        install_expert_aware_clipping(engine)  # ZeRO-0 fp32: DeepSpeed's own averages per-rank norms
        install_nonfinite_skip(engine)  # ZeRO-0 fp32: the one DeepSpeed path that applies a NaN gradient
        self.poison_loss = False  # fault injection (moe/train/faults.py): this rank's loss becomes NaN

    def train(self, batches, first_sample: int, accum: int) -> list[float]:
        """Forward, backward and step over `accum` micro-batches from stream position `first_sample`;
        (loss, lm_loss, aux_loss) averaged over them and over all ranks."""
        engine = self.engine
        sums = torch.zeros(3, dtype=torch.float64, device=engine.device)  # on device: no host sync per micro-batch
        for micro in range(accum):
            ids = batches.at_sample(first_sample + micro * batches.samples_per_micro_step).to(engine.device)  # (B, T)
            out = engine(ids, labels=ids)
            loss = out.loss * float("nan") if self.poison_loss else out.loss
            engine.backward(loss)
            engine.step()
            lm_loss, aux_loss = self.spec.loss_parts(out, self.recipe)
            self.telemetry.record(out)
            sums += torch.stack([loss.detach(), lm_loss.detach(), aux_loss.detach()]).double()
        update_routing_biases(engine.module)  # aux-loss-free balancing (moe.bias_update_rate), after the step
        return all_reduce_mean(sums / accum)  # the step's one read of the losses

    @torch.no_grad()
    def evaluate(self, eval_set: EvalSet, dp_rank: int, dp_size: int) -> EvalResult:
        """Mean, standard error and each block's LM loss over `eval_set`, over all ranks (one all-reduce)."""
        engine, micro = self.engine, self.recipe.train.micro_batch_size
        sums = torch.zeros(3, dtype=torch.float64, device=engine.device)  # sum, sum of squares, blocks
        mine = []  # this rank's block losses, (B,) each, fillers dropped
        with self.telemetry.paused():
            for ids, weights in eval_set.micro_batches(micro, dp_rank, dp_size):
                scored = int(weights.sum())  # weights are on the host: its fillers are the last rows
                ids, weights = ids.to(engine.device), weights.to(engine.device, torch.float64)
                losses = row_losses(engine(ids).logits, ids).double()  # (B,)
                sums += torch.stack([(weights * losses).sum(), (weights * losses * losses).sum(), weights.sum()])
                mine.append(losses[:scored])
        block_losses = torch.zeros(len(eval_set.rows), dtype=torch.float64, device=engine.device)  # (N,)
        if mine:  # every rank fills its own positions, the rest stay zero for the sum
            block_losses[torch.as_tensor(eval_set.positions(dp_rank, dp_size), device=engine.device)] = torch.cat(mine)
        summed = all_reduce_sum(torch.cat([sums, block_losses]))  # (3 + N,): one collective
        return EvalResult.from_sums(*summed[:3].tolist(), block_losses=summed[3:].float().numpy())
