"""Every JSON in ds_configs/ is run by a named test, or refused by one with its documented error. A new JSON without
an entry here fails this test; an entry whose test no longer names the JSON fails too."""

import pytest

from tests.helpers import REPO

# ds_config -> the test module that runs it for at least 2 steps (or, where this machine cannot, refuses it)
COVERED_BY = {
    "zero0.json": "tests/train/test_layouts.py",
    "zero1.json": "tests/train/test_layouts.py",
    "zero2.json": "tests/train/test_layouts.py",
    "zero3.json": "tests/train/test_layouts.py",  # dense; AutoEP in tests/train/test_autoep.py
    "zero0_bf16.json": "tests/checkpoint/test_reshard.py",
    "zero1_bf16.json": "tests/train/test_layouts.py",
    "zero1_bf16_compile.json": "tests/train/test_compile.py",  # in fp32 on CPU; bf16 in benchmarks/gpu_mfu.py
    "zero2_bf16.json": "tests/checkpoint/test_reshard.py",
    "zero3_bf16.json": "tests/train/test_layouts.py",
    "zero1_accum4.json": "tests/train/test_layouts.py",
    "zero1_activation_ckpt.json": "tests/train/test_layouts.py",
    "zero2_offload.json": "tests/train/test_layouts.py",
    "zero1_fp16.json": "tests/train/test_precision_gpu.py",  # CPU: refused in tests/config/test_memory_saving.py
    "zero3_offload_nvme.json": "tests/train/test_nvme_offload.py",  # refused without libaio: test_environment.py
    "elastic.json": "tests/launch/test_elastic_and_compressed.py",
    "pipeline2.json": "tests/parallel/test_pipeline.py",
}


def test_every_shipped_ds_config_has_a_test():
    shipped = {p.name for p in (REPO / "ds_configs").glob("*.json")}
    assert shipped == set(COVERED_BY), f"add an entry (and a test) for {sorted(shipped - set(COVERED_BY))}"


@pytest.mark.parametrize("ds_config, test_file", sorted(COVERED_BY.items()))
def test_the_named_test_uses_the_config(ds_config, test_file):
    assert ds_config in (REPO / test_file).read_text()
