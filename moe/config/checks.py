"""Value checks of the recipe's model, moe, data and train sections: ranges and combinations that cannot work.

Pure: they read values and raise a one-line ConfigError; whether files, folders or ops exist is preflight's
question (moe/launch/environment.py). The MoE path's own rules (native against AutoEP) are in moe_paths.py.
"""

from __future__ import annotations

from moe.config.loader import ConfigError
from moe.config.schema import DataConfig, MoEConfig, Recipe, SourceConfig, TrainConfig

NOISY_GATE_POLICIES = (None, "Jitter", "RSample")
DATA_SOURCES = ("stdlib", "site_packages", "hf", "files")
# Router losses and balancing of our RouterGate (moe/model/gate.py), moe.impl=deepspeed only
ROUTER_LOSS_KEYS = ("z_loss_coef", "seq_aux_loss_coef", "bias_update_rate")


def check_model(recipe: Recipe) -> None:
    m = recipe.model
    for name in ("d_model", "n_layers", "n_heads", "max_seq_len"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be positive, got {getattr(m, name)}")
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"head size {m.d_model // m.n_heads} must be even for rotary embeddings")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads % kv:
        raise ConfigError(f"model.n_heads={m.n_heads} is not divisible by model.n_kv_heads={kv}")


def check_moe(recipe: Recipe, world_size: int) -> None:
    """Expert counts, top-k, expert parallelism, capacity and balancing of an enabled MoE."""
    moe = recipe.moe
    if not moe.enabled:
        return
    if moe.interval < 1 or moe.interval > recipe.model.n_layers:
        raise ConfigError(f"moe.interval={moe.interval} must be between 1 and model.n_layers={recipe.model.n_layers}")
    if isinstance(moe.num_experts, list):  # PR-MoE: one count per MoE layer
        moe_layers = recipe.model.n_layers // moe.interval
        if len(moe.num_experts) != moe_layers:
            layers = f"{moe_layers} MoE layer{'s' * (moe_layers != 1)}"
            raise ConfigError(
                f"moe.num_experts lists {len(moe.num_experts)} expert counts but the model has {layers} "
                f"(model.n_layers={recipe.model.n_layers}, moe.interval={moe.interval}); give one count "
                f"per MoE layer"
            )
        named = [(f"moe.num_experts[{i}]", count) for i, count in enumerate(moe.num_experts)]
    else:
        named = [("moe.num_experts", moe.num_experts)]
    for name, count in named:
        if count < 1 or not 1 <= moe.top_k <= count:
            raise ConfigError(f"moe.top_k={moe.top_k} must be between 1 and {name}={count}")
        if moe.ep_size < 1 or count % moe.ep_size:
            raise ConfigError(f"{name}={count} is not divisible by moe.ep_size={moe.ep_size}")
    if world_size % moe.ep_size:
        raise ConfigError(
            f"world size {world_size} is not divisible by moe.ep_size={moe.ep_size}; "
            f"launch a multiple of {moe.ep_size} ranks or lower moe.ep_size"
        )
    if moe.noisy_gate_policy not in NOISY_GATE_POLICIES:
        raise ConfigError(f"moe.noisy_gate_policy must be null, Jitter or RSample, got {moe.noisy_gate_policy!r}")
    if moe.capacity_factor <= 0 or moe.eval_capacity_factor <= 0:
        raise ConfigError("moe.capacity_factor and moe.eval_capacity_factor must be positive")
    if moe.use_residual and moe.routed_scaling_factor != 1.0:
        raise ConfigError(
            "moe.routed_scaling_factor scales the experts' output, but with moe.use_residual DeepSpeed mixes it "
            "with the dense MLP inside its MoE layer; use one of the two"
        )
    _check_balancing(moe)


def _check_balancing(moe: MoEConfig) -> None:
    for key in ROUTER_LOSS_KEYS:
        if getattr(moe, key) < 0:
            raise ConfigError(f"moe.{key} must be >= 0, got {getattr(moe, key)}")
    if not moe.bias_update_rate:
        return
    # The bias decides a deterministic top-k choice; DeepSpeed's sampled choices would override it.
    if moe.noisy_gate_policy == "RSample":
        raise ConfigError(
            "moe.noisy_gate_policy=RSample samples the top-1 expert, but moe.bias_update_rate selects "
            "by biased scores; use noisy_gate_policy Jitter or null"
        )
    if moe.top_k == 2 and moe.top2_2nd_expert_sampling:
        raise ConfigError(
            "moe.top2_2nd_expert_sampling samples the 2nd expert, but moe.bias_update_rate selects "
            "both by biased scores; set moe.top2_2nd_expert_sampling=false"
        )
    if moe.top_k == 1 and moe.drop_tokens and moe.use_rts:
        raise ConfigError(
            "moe.use_rts drops random tokens, but with moe.bias_update_rate a full expert keeps its "
            "highest-probability tokens; set moe.use_rts=false, or moe.drop_tokens=false (dropless)"
        )


def check_data(d: DataConfig, max_seq_len: int) -> None:
    if d.seq_len > max_seq_len:
        raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={max_seq_len}")
    if d.seq_len < 2:
        raise ConfigError(f"data.seq_len must be at least 2 (a next-token target), got {d.seq_len}")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {d.val_fraction}")
    if d.tokenizer_sample_mb <= 0:
        raise ConfigError(f"data.tokenizer_sample_mb must be positive, got {d.tokenizer_sample_mb}")
    if d.num_proc < 0:
        raise ConfigError(f"data.num_proc must be 0 (every core) or more, got {d.num_proc}")
    if d.weight != 1.0 or d.label is not None:
        raise ConfigError("data.weight and data.label belong to the entries of data.mixture")
    for i, source in enumerate(d.mixture):
        _check_source(source, f"data.mixture[{i}].")
        if not source.weight > 0:
            raise ConfigError(f"data.mixture[{i}].weight must be positive, got {source.weight}")
    if not d.mixture:
        _check_source(d, "data.")


def _check_source(s: SourceConfig, where: str) -> None:
    if s.source not in DATA_SOURCES:
        raise ConfigError(f"{where}source must be one of {', '.join(DATA_SOURCES)}, got {s.source!r}")
    if s.source == "files" and not s.files:
        raise ConfigError(f"{where}source=files needs {where}files: a list of .txt/.jsonl/.json/.parquet paths")
    if s.source == "hf" and not s.name:
        raise ConfigError(f"{where}source=hf needs {where}name: a datasets name or a local dataset folder")
    if s.packages is not None:
        if s.source != "site_packages":
            raise ConfigError(f"{where}packages selects the distributions of source=site_packages, not of {s.source}")
        if not s.packages or not all(isinstance(n, str) and n for n in s.packages):
            raise ConfigError(f"{where}packages must be a non-empty list of distribution names, got {s.packages!r}")
    if s.max_documents is not None and s.max_documents < 1:
        raise ConfigError(f"{where}max_documents must be positive, got {s.max_documents}")


def check_train(t: TrainConfig) -> None:
    # max_steps and warmup: moe/config/budget.py, once the global batch is known
    for name in ("micro_batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
    for name in ("eval_interval", "save_interval", "keep_checkpoints", "eval_blocks", "train_eval_blocks"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name} must be 0 or more, got {getattr(t, name)}")
