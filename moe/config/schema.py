"""The recipe: typed dataclasses that say *what* to train.

A recipe YAML maps one to one onto `Recipe`. Fields left as `None` are "mirrored" settings that the
ds_config JSON may own instead (micro-batch, accumulation, clipping, precision, optimizer); the
resolve step (`moe.config.resolve`) fills them from whichever side sets them and refuses a disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Decoder-only transformer shape."""

    family: str = (
        "gpt"  # gpt (ours, moe.impl=deepspeed) | mixtral | qwen3_moe | deepseek_v3 (HF classes, moe.impl=autoep)
    )
    init_from: str | None = None  # start from weights on disk: an HF model folder (continued pretraining)
    upcycle: bool = False  # init_from is a dense Llama: every expert starts as its layer's MLP, the router at zero
    hf_config: dict = field(default_factory=dict)  # moe.impl=autoep: extra fields of the HF family's config class
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    d_ff: int | None = None  # SwiGLU hidden size; None = 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    vocab_size: int | None = None  # None = the tokenizer's size


@dataclass
class MoEConfig:
    """Mixture-of-Experts settings; `enabled: false` gives the dense baseline of the same recipe."""

    enabled: bool = True
    impl: str = (
        "deepspeed"  # deepspeed = deepspeed.moe.layer.MoE in our GPT | autoep = DeepSpeed AutoEP on an HF family
    )
    num_experts: int | list[int] = 4  # or one count per MoE layer, in layer order (PR-MoE pyramid: [4, 8])
    top_k: int = 2
    interval: int = 2  # every Nth MLP is a MoE layer (layers N-1, 2N-1, ...)
    expert_d_ff: int | None = None  # None = model.d_ff
    ep_size: int = 1  # expert-parallel size; must divide num_experts and the world size
    capacity_factor: float = 1.0
    eval_capacity_factor: float = 1.0
    min_capacity: int = 4
    drop_tokens: bool = True  # false = dropless (capacity grows to the busiest expert)
    use_rts: bool = True  # random token selection when dropping (DeepSpeed-MoE)
    noisy_gate_policy: str | None = None  # None | Jitter | RSample
    use_residual: bool = False  # Residual-MoE: a dense MLP beside the experts
    top2_2nd_expert_sampling: bool = True
    aux_loss_coef: float = 0.01
    routed_scaling_factor: float = 1.0  # the experts' combined output x this (DeepSeek-V2/V3's name); top-1 weighs
    # an expert by its softmax probability, 1/E at a uniform router, so E restores a dense MLP's scale
    z_loss_coef: float = 0.0  # ST-MoE router z-loss: mean over tokens of logsumexp(router logits)^2
    seq_aux_loss_coef: float = 0.0  # DeepSeek-V3 sequence-wise balance loss (per sequence, averaged over sequences)
    bias_update_rate: float = 0.0  # DeepSeek-V3 aux-loss-free balancing: per-expert routing bias step (0 = off)
    batched_experts: bool = (
        False  # impl=deepspeed: run the local experts as batched matmuls, not a loop (moe/model/batched_experts.py)
    )


@dataclass
class SourceConfig:
    """One source of documents: the embedded Python corpora, an HF dataset or local files."""

    source: str = "stdlib"  # stdlib | site_packages (stdlib + every installed package) | hf | files
    name: str | None = None  # source=hf: a `datasets` name or a local dataset folder
    config_name: str | None = None  # source=hf: the dataset's config
    files: list[str] = field(default_factory=list)  # source=files: .txt/.jsonl/.json/.parquet paths
    text_field: str = "text"
    packages: list[str] | None = None  # source=site_packages: only these distributions' files (None = every one)
    max_documents: int | None = None  # cap the corpus (tests, smoke runs)
    weight: float = 1.0  # in a data.mixture: this source's share of the training samples (normalized)
    label: str | None = None  # its name in metrics (tokens/<label>); None = the source (files0, hf1 if repeated)


@dataclass
class DataConfig(SourceConfig):
    """Where the text comes from (one source, or a weighted `mixture` of them) and how it becomes fixed-length
    token blocks: tokenized once into memmapped shards shared by every run and rank (moe/data/shards.py)."""

    mixture: list[SourceConfig] = field(default_factory=list)  # non-empty: these sources, not the fields above
    seq_len: int = 256
    val_fraction: float = 0.02  # documents routed to validation by a hash of their id (near-duplicates dropped)
    tokenizer: str = "bpe"  # "bpe" = train a byte-level BPE on a sample of the corpus; else an AutoTokenizer path
    vocab_size: int = 8192  # for tokenizer=bpe
    tokenizer_sample_mb: float = 32.0  # tokenizer=bpe: MB of training text it learns from (a seeded sample)
    cache_dir: str | None = None  # None = $MOE_CACHE or ~/.cache/moe-recipes
    num_proc: int = 0  # processes that tokenize; 0 = every core of this process's affinity mask


@dataclass
class OptimConfig:
    """Optimizer; each field may be set here or in the ds_config "optimizer" section, not both differently."""

    type: str | None = None  # default AdamW
    lr: float | None = None  # default 3e-4
    betas: list[float] | None = None  # default [0.9, 0.95]
    eps: float | None = None  # default 1e-8
    weight_decay: float | None = None  # default 0.1 (never on norms, biases or the router)


@dataclass
class TrainConfig:
    max_steps: int | None = None  # the run's length in optimizer steps; None = from max_tokens, else 200
    max_tokens: int | None = None  # or in training tokens (steps = ceil(max_tokens / global batch tokens))
    warmup_steps: int | None = None  # None = from warmup_fraction, else 20 (capped below max_steps)
    warmup_fraction: float | None = None  # or as a fraction of the run
    decay_fraction: float | None = (
        None  # cosine decay over this last fraction, constant before; None = all after warmup
    )
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    seed: int = 1234
    data_seed: int | None = None  # the training blocks' order; None = seed. Fixed, a new seed varies the init only
    micro_batch_size: int | None = None  # mirrors train_micro_batch_size_per_gpu
    grad_accum: int | None = None  # mirrors gradient_accumulation_steps
    grad_clip: float | None = None  # mirrors gradient_clipping
    precision: str | None = None  # fp32 | bf16 | fp16; mirrors the bf16/fp16 sections
    eval_interval: int = 50  # steps between validation passes (0 = only at the end)
    eval_blocks: int = 0  # validation blocks per pass: 0 = the whole split, N = a fixed seeded sample of N
    train_eval_blocks: int = 256  # training blocks scored at each pass too (a fixed seeded sample; 0 = none)
    save_interval: int = 0  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 0  # complete checkpoints kept, newest first (0 = all)
    log_interval: int = 1
    hang_timeout_s: float = 1800.0  # a rank with no progress this long dumps its stacks and ends the job (0 = off)
    startup_timeout_s: float = 3600.0  # the same limit before the first step: op builds, data preparation
    max_skipped_steps: int = 10  # this many steps in a row skipped for a non-finite loss/grad norm stop the run
    loss_spike_factor: float | None = 2.0  # a loss above this x the running median is logged as a spike (None = off)
    recompute: str = (
        "blocks"  # with an activation_checkpointing section: blocks | mlp (moe/train/activation_checkpointing.py)
    )


@dataclass
class LoggingConfig:
    run_name: str = "default"
    runs_dir: str = "runs"
    wandb: bool = True  # offline unless WANDB_MODE or a W&B key says otherwise
    wandb_project: str = "moe-recipes"
    wandb_group: str | None = None
    progress_bar: bool = True
    router_stats: bool = True  # per-MoE-layer routing telemetry in metrics.jsonl and W&B (moe/model/router_stats.py)
    peak_tflops: float | None = None  # one device's peak for MFU; None = a known GPU's, or measured (CPU)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
