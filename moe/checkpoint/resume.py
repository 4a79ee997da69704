"""Before anything is written: refuse to overwrite a run, to resume nothing, or to resume what cannot load.

Resuming needs the same model shape. At the same layout DeepSpeed loads its own files; at another one (rank count,
moe.ep_size, ZeRO stage, precision) the tag needs its converted state, and the refusal names the
`python -m moe.reshard` command that writes it. A pipeline checkpoint resumes only at its own layout.
"""

from __future__ import annotations

from moe.checkpoint.metadata import (
    Tag,
    checkpoint_dir,
    checkpoint_layout_of,
    describe_layout,
    latest_tag,
    reshard_command,
)
from moe.config.loader import ConfigError, to_dict
from moe.config.resolve import Resolved

SHAPE_SECTIONS = ("model", "moe")
# (section, key) of the shape sections that may change on resume: routing options, losses, the layout, and
# where the first weights came from
SHAPE_EXEMPT = {
    ("moe", "ep_size"),
    ("moe", "aux_loss_coef"),
    ("moe", "capacity_factor"),
    ("moe", "eval_capacity_factor"),
    ("moe", "min_capacity"),
    ("moe", "drop_tokens"),
    ("moe", "use_rts"),
    ("moe", "noisy_gate_policy"),
    ("moe", "top2_2nd_expert_sampling"),
    ("moe", "z_loss_coef"),
    ("moe", "seq_aux_loss_coef"),
    ("model", "init_from"),
    ("model", "upcycle"),
}


def check_resume(resolved: Resolved, resume: bool) -> None:
    """One ConfigError when `resolved`'s run folder cannot be started (resume False) or resumed (resume True)."""
    run_dir = resolved.run_dir
    tag_name = latest_tag(run_dir)
    if tag_name and not resume:
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoint {tag_name}); pass --resume to continue it "
            f"or set logging.run_name to start a new one"
        )
    if resume and not tag_name:
        raise ConfigError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)}")
    if not resume:
        return
    tag = Tag.of(run_dir, tag_name)
    recipe, saved = to_dict(resolved.recipe), tag.recipe or {}
    for section in SHAPE_SECTIONS:
        for key, value in recipe[section].items():
            old = saved.get(section, {}).get(key, value)
            if (section, key) not in SHAPE_EXEMPT and old != value:
                raise ConfigError(
                    f"--resume: checkpoint {tag.name} was trained with {section}.{key}={old}, "
                    f"this recipe has {value}; the model shapes do not match"
                )
    _check_layout(tag, checkpoint_layout_of(resolved))


def _check_layout(tag: Tag, layout: dict) -> None:
    saved = tag.layout
    if saved is None or saved == layout:
        return
    if "pipeline_stages" in saved or "pipeline_stages" in layout:
        # A pipeline checkpoint holds one file per pipeline layer, which neither DeepSpeed's non-pipeline
        # load_checkpoint nor `python -m moe.reshard` (which rebuilds the whole model on each rank) reads.
        def describe(lay: dict) -> str:
            return (
                f"{lay['world_size']} ranks, pipeline.stages={lay.get('pipeline_stages', 1)}, "
                f"moe.ep_size={lay['ep_size']}"
            )

        raise ConfigError(
            f"--resume: checkpoint {tag.name} was saved with {describe(saved)}, this run has "
            f"{describe(layout)}; a pipeline-parallel run resumes only at its own layout (same ds_config "
            f"and rank count), and no checkpoint converts into or out of a pipeline layout"
        )
    if tag.converted:
        return
    raise ConfigError(
        f"--resume: checkpoint {tag.name} was saved with {describe_layout(saved)}, this run has "
        f"{describe_layout(layout)}; DeepSpeed loads expert and ZeRO shards only at their own layout: "
        f"convert it once with `{reshard_command(tag)}`, then resume"
    )
