"""MoE GPT: a decoder-only transformer (RMSNorm, RoPE, SDPA attention, SwiGLU) whose every Nth MLP is MoE.

It is a `transformers.PreTrainedModel`, so `save_pretrained`, `from_pretrained` and `generate` work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from moe.model.configuration import MoEGPTConfig
from moe.model.layers import CausalSelfAttention, RotaryEmbedding, SwiGLU
from moe.model.recompute import checkpointed_call


class Block(nn.Module):
    def __init__(self, config: MoEGPTConfig, layer_idx: int):
        super().__init__()
        # Activation checkpointing: HF's _set_gradient_checkpointing sets these (moe/train/activation_checkpointing.py)
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config.d_model, config.n_heads, config.n_kv_heads)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        if self.is_moe:
            from moe.model.moe_layer import MoEMLP  # imports deepspeed only for MoE models

            self.mlp = MoEMLP(config, config.experts_in_layer(layer_idx))
        else:
            self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """x: (B, T, d) -> (B, T, d), and the MoE layer's RouterLosses (None for a dense MLP)."""
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, T, d)
        h = self.mlp_norm(x)
        if self.is_moe:
            out, losses = self.mlp(h)
        else:
            out, losses = self.mlp(h), None
        return x + out, losses

    def checkpointed(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """forward() without keeping its activations; the backward recomputes them (moe/model/recompute.py)."""

        def flat(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # checkpoint functions pass tensors only
            out, losses = self(x, cos, sin)
            return (out,) if losses is None else (out, *losses)

        outputs = checkpointed_call(self._gradient_checkpointing_func, flat, x)
        if not self.is_moe:
            return outputs, None
        from moe.model.gate import RouterLosses

        return outputs[0], RouterLosses(*outputs[1:])


# Rows per block of the loss on CPU: 2 MiB of fp32 logits at a time (64 rows of an 8192 vocabulary), so each block
# stays in a core's L2 between its passes. DeepSpeed's default (2^26 elements: every row of a small batch at once)
# is sized for a GPU's memory and runs slower than F.cross_entropy on CPU.
CPU_LOSS_BLOCK_BYTES = 2 << 20


def cpu_loss_block_rows(vocab_size: int) -> int:
    return max(16, CPU_LOSS_BLOCK_BYTES // (4 * vocab_size))


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits: (B, T, V), labels: (B, T) -> mean cross-entropy of each position's next token (-100 ignored), fp32.

    DeepSpeed's chunked cross entropy: the fp32 log-sum-exp one block of rows at a time and the gradient written
    straight in the logits' dtype, with no (B*T, V) fp32 copy, log-softmax or zero-filled gradient (on CPU it takes
    about half the time of F.cross_entropy(logits.float()): benchmarks/SPEED_NOTES.md, "the loss"). The labels
    shift left (the last position's target becomes -100), not the logits: `logits[:, :-1]` would copy them."""
    from deepspeed.runtime.chunked_cross_entropy import chunked_cross_entropy

    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): position t predicts token t+1
    rows = cpu_loss_block_rows(logits.shape[-1]) if logits.device.type == "cpu" else None
    return chunked_cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, block_rows=rows)


def training_loss(
    config: MoEGPTConfig, lm_loss: torch.Tensor, aux: torch.Tensor, z: torch.Tensor, seq_aux: torch.Tensor
) -> torch.Tensor:
    """LM loss + coefficient x each router loss (summed over MoE layers); the plain model and the pipeline's last
    stage both use it."""
    loss = lm_loss + config.aux_loss_coef * aux
    if config.z_loss_coef:  # skipped at 0: the term then carries no gradient (moe/model/gate.py)
        loss = loss + config.z_loss_coef * z
    if config.seq_aux_loss_coef:
        loss = loss + config.seq_aux_loss_coef * seq_aux
    return loss


@dataclass
class MoECausalLMOutput(CausalLMOutput):
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # DeepSpeed's balance loss, summed over MoE layers (unscaled)
    z_loss: torch.Tensor | None = None  # router z-loss, summed over MoE layers (unscaled)
    seq_aux_loss: torch.Tensor | None = None  # sequence-wise balance loss, summed over MoE layers (unscaled)


class MoEGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MoEGPTConfig
    base_model_prefix = "moe_gpt"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]  # noqa: RUF012 (a transformers class attribute, a list there)
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: MoEGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = RotaryEmbedding(config.d_model // config.n_heads, config.rope_theta)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> MoECausalLMOutput:
        """input_ids: (B, T); labels: (B, T) or None (shifted here; -100 is ignored)."""
        T = input_ids.shape[1]
        cos, sin = self.rotary(T, input_ids.device)  # (T, hd/2) each
        x = self.embed_tokens(input_ids)  # (B, T, d)
        aux_loss = z_loss = seq_aux_loss = x.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            x, losses = (
                layer.checkpointed(x, cos, sin)
                if layer.gradient_checkpointing and self.training
                else layer(x, cos, sin)
            )
            if losses is not None:
                aux_loss = aux_loss + losses.balance.float()
                z_loss = z_loss + losses.z.float()
                seq_aux_loss = seq_aux_loss + losses.seq_aux.float()
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = next_token_loss(logits, labels)
            loss = training_loss(self.config, lm_loss, aux_loss, z_loss, seq_aux_loss)
        return MoECausalLMOutput(
            loss=loss, logits=logits, lm_loss=lm_loss, aux_loss=aux_loss, z_loss=z_loss, seq_aux_loss=seq_aux_loss
        )

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs) -> dict:
        # No KV cache: each step re-runs the whole (short) context; the MoE gate needs whole sequences anyway.
        return {"input_ids": input_ids[:, -self.config.max_seq_len :]}

    def moe_layers(self) -> list[nn.Module]:
        return [layer.mlp for layer in self.layers if layer.is_moe]

    def local_blocks(self) -> list[tuple[int, Block]]:
        """(layer index, Block) of the blocks this rank holds: all of them (a pipeline stage holds some)."""
        return list(enumerate(self.layers))
