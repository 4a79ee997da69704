"""A tag's metadata, written and read in one place (moe/checkpoint/metadata.py): the tag to resume from, and the saved
recipe, ds_config, layout and MoE path of a tag, as `save` writes them."""

import pytest

from moe.checkpoint.metadata import (
    COMPLETE,
    Tag,
    checkpoint_dir,
    checkpoint_layout_of,
    complete_tags,
    describe_layout,
    latest_tag,
    tag_metadata,
)
from moe.config import load_resolved
from tests.helpers import REPO


def resolved(ds_config="zero1.json", *overrides, recipe="recipes/tiny.yaml", world_size=2):
    return load_resolved(REPO / recipe, REPO / "ds_configs" / ds_config, list(overrides), world_size)


def write_tag(run_dir, step, resolved_run, complete=True):
    tag = checkpoint_dir(run_dir) / f"global_step{step}"
    tag.mkdir(parents=True)
    for name, text in tag_metadata(resolved_run, {"moe": "0.1.0"}).items():
        (tag / name).write_text(text)
    if complete:
        (tag / COMPLETE).write_text("")
    return tag


def test_latest_is_the_newest_complete_tag(tmp_path):
    run = resolved()
    assert latest_tag(tmp_path) is None
    for step in (5, 10, 15):
        write_tag(tmp_path, step, run, complete=step != 15)  # step 15's save died before COMPLETE
    assert complete_tags(tmp_path) == ["global_step5", "global_step10"]
    assert latest_tag(tmp_path) == "global_step10"
    (checkpoint_dir(tmp_path) / "latest").write_text("global_step5")
    assert latest_tag(tmp_path) == "global_step5"  # `latest`, when that save completed
    (checkpoint_dir(tmp_path) / "latest").write_text("global_step15")
    assert latest_tag(tmp_path) == "global_step10"  # an incomplete `latest` falls back to the newest complete one


@pytest.mark.parametrize(
    "ds_config, overrides, world_size, path, pipeline",
    [
        ("zero1.json", [], 2, "deepspeed", False),
        ("zero1_accum4.json", ["moe.ep_size=1"], 1, "deepspeed", False),
        ("pipeline2.json", ["moe.ep_size=1"], 2, "deepspeed", True),
        (
            "zero3.json",
            [
                "moe.impl=autoep",
                "model.family=mixtral",
                "moe.interval=1",
                "moe.capacity_factor=1.0",
                "moe.eval_capacity_factor=1.0",
            ],
            2,
            "autoep",
            False,
        ),
    ],
)
def test_a_tag_reads_back_the_layout_and_path_that_wrote_it(tmp_path, ds_config, overrides, world_size, path, pipeline):
    run = resolved(ds_config, *overrides, world_size=world_size)
    tag = Tag(write_tag(tmp_path, 3, run))
    assert (tag.name, tag.run_dir, tag.complete) == ("global_step3", tmp_path, True)
    assert tag.layout == checkpoint_layout_of(run)  # the world size comes back from the batch arithmetic
    assert tag.layout["world_size"] == world_size and ("pipeline_stages" in tag.layout) == pipeline
    assert (tag.moe_path, tag.pipeline, tag.precision) == (path, pipeline, "fp32")
    assert tag.recipe["model"]["d_model"] == run.recipe.model.d_model and tag.ds_config == run.ds_config


def test_a_tag_without_our_metadata_has_no_layout(tmp_path):
    tag = Tag.of(tmp_path, "global_step1")
    tag.dir.mkdir(parents=True)
    assert tag.recipe is None and tag.layout is None and not tag.has_metadata and tag.moe_path == "deepspeed"


def test_layouts_describe_themselves_in_the_refusal_words():
    layout = checkpoint_layout_of(resolved("zero2_bf16.json", "moe.ep_size=1", world_size=1))
    assert describe_layout(layout) == "1 rank, moe.ep_size=1, ZeRO-2, bf16"
