"""The one resolve step: recipe (what) + ds_config JSON (how) + world size -> one validated config.

Rules:
- Each mirrored setting (micro-batch, accumulation, clipping, precision, optimizer fields) may be set in the
  recipe or in the ds_config. Set in both and different is an error naming both places; set in neither
  takes the default below. The resolved ds_config holds the final value.
- train_batch_size is derived (micro x accumulation x world size); a ds_config that sets it differently is an
  error. The LR schedule is the recipe's (moe/train/schedule.py); a ds_config 'scheduler' section is an error.
- Every combination that cannot work fails here, before any rank spawns or any file is written.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moe.config.compile import check_compile
from moe.config.compressed_comm import check_compressed_comm
from moe.config.elastic import apply_elasticity
from moe.config.loader import ConfigError, apply_override, to_dict
from moe.config.memory_saving import check_memory_saving, check_recompute
from moe.config.pipeline import pipeline_stages, validate_pipeline
from moe.config.schema import Recipe

# (recipe field, ds_config key path, default when neither sets it)
MIRRORED = [
    ("train.micro_batch_size", "train_micro_batch_size_per_gpu", 8),
    ("train.grad_accum", "gradient_accumulation_steps", 1),
    ("train.grad_clip", "gradient_clipping", 1.0),
    ("optim.type", "optimizer.type", "AdamW"),
    ("optim.lr", "optimizer.params.lr", 3e-4),
    ("optim.betas", "optimizer.params.betas", [0.9, 0.95]),
    ("optim.eps", "optimizer.params.eps", 1e-8),
    ("optim.weight_decay", "optimizer.params.weight_decay", 0.1),
]
PRECISIONS = ("fp32", "bf16", "fp16")
NOISY_GATE_POLICIES = (None, "Jitter", "RSample")
DATA_SOURCES = ("stdlib", "hf", "files")


@dataclass
class Resolved:
    recipe: Recipe
    ds_config: dict
    world_size: int
    ds_config_path: str

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.logging.runs_dir) / self.recipe.logging.run_name

    @property
    def dp_size(self) -> int:  # ranks that see different data: a pipeline's stages share theirs; EP sits inside DP
        return self.world_size // pipeline_stages(self.ds_config)

    @property
    def precision(self) -> str:
        return self.recipe.train.precision

    @property
    def global_batch_tokens(self) -> int:
        return self.ds_config["train_batch_size"] * self.recipe.data.seq_len

    def as_dict(self) -> dict:
        return {"recipe": to_dict(self.recipe), "ds_config": self.ds_config, "world_size": self.world_size}


def load_ds_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a ds_config JSON; `ds.key.sub=value` overrides (with the `ds.` prefix stripped) apply on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ds_config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a ds_config must be a JSON object")
    for item in overrides:
        apply_override(config, item)
    return config


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Dotted overrides: `ds.x=1` goes to the ds_config, everything else to the recipe."""
    ds = [i[len("ds."):] for i in items if i.startswith("ds.")]
    return [i for i in items if not i.startswith("ds.")], ds


def resolve(recipe: Recipe, ds_config: dict, world_size: int, ds_config_path: str = "ds_config",
            cuda: bool = False) -> Resolved:
    recipe = copy.deepcopy(recipe)
    ds = copy.deepcopy(ds_config)
    where = ds_config_path
    apply_elasticity(recipe, ds, world_size, where)  # before the mirrors merge: an elastic section owns the batch
    _merge_mirrors(recipe, ds, where)
    _merge_precision(recipe, ds, where, cuda)
    check_compressed_comm(ds, where, cuda)
    _validate_model(recipe)
    _validate_moe(recipe, ds, world_size, where)
    _validate_init_from(recipe)
    _validate_impl(recipe, ds, where)
    _validate_data(recipe)
    _validate_train(recipe)
    dp_size = validate_pipeline(recipe, ds, world_size, where)  # world_size // pipeline.stages
    check_memory_saving(ds, recipe.moe.impl, world_size // dp_size, where)  # offload, activation checkpointing
    check_compile(ds, recipe.moe.impl, world_size // dp_size, where)  # torch.compile
    check_recompute(recipe.train.recompute, ds, where)  # selective activation checkpointing

    t = recipe.train
    train_batch = t.micro_batch_size * t.grad_accum * dp_size
    if "train_batch_size" in ds and ds["train_batch_size"] != train_batch:
        raise ConfigError(f"{where}: train_batch_size={ds['train_batch_size']} but micro-batch {t.micro_batch_size} x "
                          f"accumulation {t.grad_accum} x {dp_size} ranks = {train_batch}; remove it or make them agree")
    ds["train_batch_size"] = train_batch

    if "scheduler" in ds:
        raise ConfigError(f"{where}: the LR schedule belongs to the recipe (train.max_steps, train.warmup_steps, "
                          f"train.min_lr_ratio); remove the 'scheduler' section")
    # torch's AdamW on CPU avoids JIT-building DeepSpeed's CPU FusedAdam; GPUs keep FusedAdam. torch's is run with its
    # fused kernel (fused=True): the same update, 16-25% less optimizer time than its default foreach loop here
    # (benchmarks/SPEED_NOTES.md). DeepSpeedCPUAdam (ZeRO-Offload, torch_adam false) takes no such argument.
    params = ds["optimizer"]["params"]
    params.setdefault("torch_adam", not cuda)
    if params["torch_adam"]:
        params.setdefault("fused", True)
    ds.setdefault("steps_per_print", 10**9)
    return Resolved(recipe, ds, world_size, str(ds_config_path))


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {}) if isinstance(tree, dict) else getattr(tree, part)
    if isinstance(tree, dict):
        tree[last] = value
    else:
        setattr(tree, last, value)


def _merge_mirrors(recipe: Recipe, ds: dict, where: str) -> None:
    for recipe_key, ds_key, default in MIRRORED:
        section, name = recipe_key.split(".")
        mine = getattr(getattr(recipe, section), name)
        theirs = _get(ds, ds_key)
        if mine is not None and theirs is not None and not _same(mine, theirs):
            raise ConfigError(f"{recipe_key}={mine} in the recipe disagrees with {ds_key}={theirs} in {where}; "
                              f"set it in one place")
        value = mine if mine is not None else theirs if theirs is not None else default
        setattr(getattr(recipe, section), name, value)
        _set(ds, ds_key, value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _merge_precision(recipe: Recipe, ds: dict, where: str, cuda: bool) -> None:
    bf16 = bool(_get(ds, "bf16.enabled"))
    fp16 = bool(_get(ds, "fp16.enabled"))
    if bf16 and fp16:
        raise ConfigError(f"{where} enables both bf16 and fp16; pick one")
    theirs = "bf16" if bf16 else "fp16" if fp16 else ("fp32" if "bf16" in ds or "fp16" in ds else None)
    mine = recipe.train.precision
    if mine is not None and mine not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {mine!r}")
    if mine is not None and theirs is not None and mine != theirs:
        raise ConfigError(f"train.precision={mine} in the recipe disagrees with {where} ({theirs}); set it in one place")
    precision = mine or theirs or "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("fp16 needs a CUDA GPU (DeepSpeed's CPU accelerator has no fp16); use bf16 or fp32 on CPU")
    recipe.train.precision = precision
    ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
    ds.setdefault("fp16", {})["enabled"] = precision == "fp16"


def _validate_model(recipe: Recipe) -> None:
    m = recipe.model
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"head size {m.d_model // m.n_heads} must be even for rotary embeddings")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads % kv:
        raise ConfigError(f"model.n_heads={m.n_heads} is not divisible by model.n_kv_heads={kv}")
    for name in ("d_model", "n_layers", "n_heads", "max_seq_len"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be positive, got {getattr(m, name)}")


def _validate_moe(recipe: Recipe, ds: dict, world_size: int, where: str) -> None:
    moe = recipe.moe
    if not moe.enabled:
        return
    if moe.impl == "autoep":
        _refuse_native_routing_options(moe)
    if moe.interval < 1 or moe.interval > recipe.model.n_layers:
        raise ConfigError(f"moe.interval={moe.interval} must be between 1 and model.n_layers={recipe.model.n_layers}")
    if isinstance(moe.num_experts, list):  # PR-MoE: one count per MoE layer
        moe_layers = recipe.model.n_layers // moe.interval
        if len(moe.num_experts) != moe_layers:
            layers = f"{moe_layers} MoE layer{'s' * (moe_layers != 1)}"
            raise ConfigError(f"moe.num_experts lists {len(moe.num_experts)} expert counts but the model has {layers} "
                              f"(model.n_layers={recipe.model.n_layers}, moe.interval={moe.interval}); give one count "
                              f"per MoE layer")
        named = [(f"moe.num_experts[{i}]", count) for i, count in enumerate(moe.num_experts)]
    else:
        named = [("moe.num_experts", moe.num_experts)]
    for name, count in named:
        if count < 1 or not 1 <= moe.top_k <= count:
            raise ConfigError(f"moe.top_k={moe.top_k} must be between 1 and {name}={count}")
        if moe.ep_size < 1 or count % moe.ep_size:
            raise ConfigError(f"{name}={count} is not divisible by moe.ep_size={moe.ep_size}")
    if world_size % moe.ep_size:
        raise ConfigError(f"world size {world_size} is not divisible by moe.ep_size={moe.ep_size}; "
                          f"launch a multiple of {moe.ep_size} ranks or lower moe.ep_size")
    if moe.noisy_gate_policy not in NOISY_GATE_POLICIES:
        raise ConfigError(f"moe.noisy_gate_policy must be null, Jitter or RSample, got {moe.noisy_gate_policy!r}")
    if moe.capacity_factor <= 0 or moe.eval_capacity_factor <= 0:
        raise ConfigError("moe.capacity_factor and moe.eval_capacity_factor must be positive")
    _validate_balancing(moe)
    stage = _get(ds, "zero_optimization.stage") or 0
    if stage == 3 and moe.impl == "deepspeed":
        raise ConfigError(f"{where}: DeepSpeed refuses native MoE (deepspeed.moe.layer.MoE) under ZeRO-3; "
                          f"use ds_configs/zero2.json (ZeRO 0/1/2), or moe.enabled=false for a dense model")


# Native-path options (deepspeed.moe.layer.MoE) and their defaults; AutoEP is dropless and has none of them.
NATIVE_ONLY = {"capacity_factor": 1.0, "eval_capacity_factor": 1.0, "min_capacity": 4, "noisy_gate_policy": None,
               "use_residual": False}
# Router options of our RouterGate (moe/model/gate.py) on the moe.impl=deepspeed path
ROUTER_LOSS_KEYS = ("z_loss_coef", "seq_aux_loss_coef", "bias_update_rate")


def _refuse_native_routing_options(moe) -> None:
    if isinstance(moe.num_experts, list):
        raise ConfigError(f"moe.num_experts={moe.num_experts} (PR-MoE, one count per layer) needs moe.impl=deepspeed; "
                          f"AutoEP gives every MoE layer of an HF family the same moe.num_experts")
    for key in ROUTER_LOSS_KEYS:
        if getattr(moe, key):
            why = ("DeepSpeed's AutoEP rejects load_balance_coeff, its aux-loss-free balancing"
                   if key == "bias_update_rate" else "AutoEP routes with the HF family's own router")
            raise ConfigError(f"moe.{key}={getattr(moe, key)} needs moe.impl=deepspeed ({why}); remove it for "
                              f"moe.impl=autoep")
    for key, default in NATIVE_ONLY.items():
        if getattr(moe, key) != default:
            raise ConfigError(f"moe.{key}={getattr(moe, key)} is a deepspeed.moe option; AutoEP routes dropless "
                              f"without it: remove it, or use moe.impl=deepspeed")


def _validate_balancing(moe) -> None:
    for key in ROUTER_LOSS_KEYS:
        if getattr(moe, key) < 0:
            raise ConfigError(f"moe.{key} must be >= 0, got {getattr(moe, key)}")
    if not moe.bias_update_rate:
        return
    # The bias decides a deterministic top-k choice; DeepSpeed's sampled choices would override it.
    if moe.noisy_gate_policy == "RSample":
        raise ConfigError("moe.noisy_gate_policy=RSample samples the top-1 expert, but moe.bias_update_rate selects "
                          "by biased scores; use noisy_gate_policy Jitter or null")
    if moe.top_k == 2 and moe.top2_2nd_expert_sampling:
        raise ConfigError("moe.top2_2nd_expert_sampling samples the 2nd expert, but moe.bias_update_rate selects "
                          "both by biased scores; set moe.top2_2nd_expert_sampling=false")
    if moe.top_k == 1 and moe.drop_tokens and moe.use_rts:
        raise ConfigError("moe.use_rts drops random tokens, but with moe.bias_update_rate a full expert keeps its "
                          "highest-probability tokens; set moe.use_rts=false, or moe.drop_tokens=false (dropless)")


IMPLS = ("deepspeed", "autoep")


def _validate_impl(recipe: Recipe, ds: dict, where: str) -> None:
    """moe.impl picks the MoE path; for AutoEP, write the ds_config `expert_parallel` section or check it."""
    m, moe = recipe.model, recipe.moe
    if moe.impl not in IMPLS:
        raise ConfigError(f"moe.impl must be one of {', '.join(IMPLS)}, got {moe.impl!r}")
    if moe.impl == "deepspeed":
        if m.family != "gpt":
            raise ConfigError(f"model.family={m.family} is an HF family, trained through AutoEP: set moe.impl=autoep "
                              f"(moe.impl=deepspeed trains model.family=gpt)")
        if m.hf_config:
            raise ConfigError("model.hf_config applies to moe.impl=autoep families only")
        if ds.get("expert_parallel", {}).get("enabled"):
            raise ConfigError(f"{where} enables expert_parallel (AutoEP), which needs moe.impl=autoep and an HF "
                              f"model.family; remove the section for moe.impl=deepspeed")
        return
    _validate_autoep(recipe, ds, where)


def _validate_autoep(recipe: Recipe, ds: dict, where: str) -> None:
    from moe.model.hf_families import FAMILIES, init_from_mismatches, unknown_hf_config_keys
    m, moe = recipe.model, recipe.moe
    if m.family not in FAMILIES:
        raise ConfigError(f"moe.impl=autoep needs model.family in {', '.join(FAMILIES)}, got {m.family!r}")
    if not moe.enabled:
        raise ConfigError("moe.impl=autoep needs moe.enabled=true; a dense baseline is moe.impl=deepspeed with "
                          "moe.enabled=false")
    family = FAMILIES[m.family]
    if moe.interval != 1 and not family.any_interval:
        raise ConfigError(f"model.family={m.family} makes every layer MoE: set moe.interval=1 (qwen3_moe interleaves "
                          f"dense layers)")
    if moe.aux_loss_coef and not family.aux_loss:
        raise ConfigError(f"model.family={m.family} computes no aux loss in transformers (it balances with a "
                          f"routing bias): set moe.aux_loss_coef=0")
    if m.family == "deepseek_v3" and m.n_kv_heads not in (None, m.n_heads):
        raise ConfigError("model.family=deepseek_v3 uses multi-head latent attention, which has no grouped-query "
                          "heads: remove model.n_kv_heads")
    unknown = unknown_hf_config_keys(m.family, m.hf_config)
    if unknown:
        raise ConfigError(f"model.hf_config: {family.config_class} has no field '{unknown[0]}'")
    if m.init_from:  # the folder and the tokenizer were checked by _validate_init_from
        mismatches = init_from_mismatches(recipe)
        if mismatches:
            raise ConfigError(f"model.init_from {m.init_from} does not match the recipe: {mismatches[0]}")
    stage = _get(ds, "zero_optimization.stage") or 0
    if stage == 0:
        raise ConfigError(f"{where}: AutoEP is supported (and tested) under ZeRO 1, 2 and 3; use ds_configs/zero1.json, zero2.json or "
                          f"zero3.json")
    wanted = {"enabled": True, "autoep_size": moe.ep_size, "preset_model": m.family}
    section = ds.setdefault("expert_parallel", {})
    for key, value in wanted.items():
        if key in section and section[key] != value:
            recipe_side = {"enabled": "moe.impl=autoep", "autoep_size": f"moe.ep_size={moe.ep_size}",
                           "preset_model": f"model.family={m.family}"}[key]
            raise ConfigError(f"expert_parallel.{key}={section[key]} in {where} disagrees with {recipe_side} in the "
                              f"recipe; set it in one place")
        section[key] = value


def _validate_init_from(recipe: Recipe) -> None:
    """moe.impl=deepspeed: model.init_from (an HF Mixtral / Qwen2-MoE / Llama folder) and model.upcycle must fit the
    recipe's shape (moe/model/hf_import.py); model.vocab_size defaults to the checkpoint's."""
    m = recipe.model
    if m.upcycle and not m.init_from:
        raise ConfigError("model.upcycle needs model.init_from: the dense HF Llama folder to copy into the experts")
    if recipe.moe.impl != "deepspeed" and m.upcycle:
        raise ConfigError("model.upcycle applies to moe.impl=deepspeed (our GPT); remove it for moe.impl=autoep")
    if not m.init_from:
        return
    if not (Path(m.init_from).expanduser() / "config.json").is_file():
        raise ConfigError(f"model.init_from: no HF model folder (config.json) at {m.init_from}")
    if recipe.data.tokenizer == "bpe":
        raise ConfigError("model.init_from needs the checkpoint's own tokenizer: set data.tokenizer to its folder")
    if recipe.moe.impl != "deepspeed":
        return  # AutoEP compares the folder's shape with the recipe in _validate_autoep
    from moe.model.hf_import import init_from_problem, read_hf_config
    hf = read_hf_config(m.init_from)
    if m.vocab_size is None:
        m.vocab_size = hf.vocab_size  # the checkpoint's embedding rows, whatever the tokenizer's length
    problem = init_from_problem(recipe, hf)
    if problem:
        raise ConfigError(problem)


def _validate_data(recipe: Recipe) -> None:
    d = recipe.data
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"data.source must be one of {', '.join(DATA_SOURCES)}, got {d.source!r}")
    if d.seq_len > recipe.model.max_seq_len:
        raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={recipe.model.max_seq_len}")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {d.val_fraction}")
    if d.source == "files":
        if not d.files:
            raise ConfigError("data.source=files needs data.files: a list of .txt/.jsonl/.json/.parquet paths")
        for f in d.files:
            if not Path(f).expanduser().exists():
                raise ConfigError(f"dataset file not found: {f} (data.files)")
    if d.source == "hf":
        if not d.name:
            raise ConfigError("data.source=hf needs data.name: a datasets name or a local dataset folder")
        if _looks_like_path(d.name) and not Path(d.name).expanduser().exists():
            raise ConfigError(f"dataset path not found: {d.name} (data.name)")
    if d.tokenizer != "bpe" and _looks_like_path(d.tokenizer) and not Path(d.tokenizer).expanduser().exists():
        raise ConfigError(f"tokenizer path not found: {d.tokenizer} (data.tokenizer)")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).suffix in (".json", ".jsonl", ".txt", ".parquet")


def _validate_train(recipe: Recipe) -> None:
    t = recipe.train
    if t.max_steps < 1:
        raise ConfigError(f"train.max_steps must be positive, got {t.max_steps}")
    if not 0 <= t.warmup_steps < t.max_steps:
        raise ConfigError(f"train.warmup_steps={t.warmup_steps} must be below train.max_steps={t.max_steps}")
    for name in ("micro_batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
    for name in ("eval_interval", "save_interval", "keep_checkpoints"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name} must be 0 or more, got {getattr(t, name)}")


def write_run_folder(resolved: Resolved) -> Path:
    """Write the resolved recipe and ds_config into runs/<run_name>/ (rank 0 only, after validation)."""
    run_dir = resolved.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(resolved.recipe), sort_keys=False))
    (run_dir / "ds_config.json").write_text(json.dumps(resolved.ds_config, indent=2) + "\n")
    return run_dir

