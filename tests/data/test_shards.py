"""Token shards against the plain packing reference, their index checks, and the mixture's order and proportions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moe.config.schema import DataConfig, SourceConfig
from moe.data.batches import BLEND_PERIOD, BlockBatches, blend_table
from moe.data.corpus import load_documents, split_documents
from moe.data.packing import pack_documents
from moe.data.prepare import check_shards, plan, prepare_data
from moe.data.shards import ShardError, check_index, read_index

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = DataConfig(max_documents=1500, seq_len=32, vocab_size=400, cache_dir=str(tmp_path_factory.mktemp("cache")))
    return cfg, prepare_data(cfg, num_proc=2)


def test_shards_hold_the_blocks_of_the_in_memory_packing(small):
    cfg, data = small
    train_docs, val_docs, _ = split_documents(load_documents(cfg), cfg.val_fraction)
    for docs, shards in ((train_docs, data.train), (val_docs, data.val)):
        reference = torch.tensor(pack_documents(docs, data.tokenizer, cfg.seq_len)["input_ids"])  # (blocks, seq_len)
        assert torch.equal(shards[list(range(len(shards)))], reference.long())
    assert read_index(data.sources[0].folder)["dtype"] == "uint16"
    assert prepare_data(cfg, num_proc=1).built == []  # the same key is reused, whatever the process count


def test_a_truncated_changed_or_foreign_shard_is_refused(small, tmp_path):
    cfg, data = small
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(data.sources[0].folder, folder)
    index = read_index(folder)
    expect = {"tokenizer": index["tokenizer"], "seq_len": cfg.seq_len, "format": index["format"]}
    check_index(index, folder, expect, full=True)
    with pytest.raises(ShardError, match="seq_len=32, the run has 64"):
        check_index(index, folder, {**expect, "seq_len": 64}, full=False)
    with pytest.raises(ShardError, match="tokenizer="):
        check_index(index, folder, {**expect, "tokenizer": "gpt2"}, full=False)
    first = folder / index["splits"]["train"]["files"][0]["name"]
    raw = bytearray(first.read_bytes())
    raw[10] ^= 0xFF
    first.write_bytes(bytes(raw))
    check_index(index, folder, expect, full=False)  # same size: only the checksum sees it
    with pytest.raises(ShardError, match="does not match its checksum"):
        check_index(index, folder, expect, full=True)
    first.write_bytes(bytes(raw[:-6]))
    with pytest.raises(ShardError, match="truncated"):
        check_index(index, folder, expect, full=False)


def test_too_small_a_source_is_refused(small):
    cfg, data = small
    tokens = data.train.tokens
    check_shards(plan(cfg), tokens, full=False)
    with pytest.raises(ShardError, match="fewer than one global batch"):
        check_shards(plan(cfg), tokens + 1, full=False)


def test_order_is_the_same_at_data_parallel_sizes_1_and_2():
    blocks = torch.arange(100).repeat_interleave(3).view(100, 3)
    one = BlockBatches(blocks, 8, 0, 1, seed=3)
    two = [BlockBatches(blocks, 4, r, 2, seed=3) for r in range(2)]
    for step in range(30):  # 2.4 epochs
        assert torch.equal(one.batch(step), torch.cat([two[0].batch(step), two[1].batch(step)]))


def test_mixture_proportions_order_and_resume():
    weights = [0.3, 0.7]
    sources = [torch.full((50, 2), 0), torch.full((70, 2), 1)]
    mixed = BlockBatches(sources, 10, 0, 1, seed=1, weights=weights)
    first = torch.cat([mixed.batch(m)[:, 0] for m in range(1000)])  # 10,000 samples
    share = float((first == 0).float().mean())
    assert abs(share - 0.3) < 0.01
    assert mixed.samples_per_source(10_000) == [3000, 7000]
    again = BlockBatches(sources, 10, 0, 1, seed=1, weights=weights)
    assert torch.equal(again.batch(537), mixed.batch(537))  # a pure function of the position
    two = [BlockBatches(sources, 5, r, 2, seed=1, weights=weights) for r in range(2)]
    assert torch.equal(torch.cat([two[0].batch(9), two[1].batch(9)]), mixed.batch(9))
    table = blend_table([1, 2, 7])
    assert np.bincount(table).tolist() == [BLEND_PERIOD // 10, BLEND_PERIOD // 5, BLEND_PERIOD * 7 // 10]
    for prefix in (10, 101, 999):  # every prefix is within one sample of its share
        counts = np.bincount(table[:prefix], minlength=3)
        assert np.all(np.abs(counts - prefix * np.array([0.1, 0.2, 0.7])) <= 1)


def test_a_mixture_of_sources_keeps_each_sources_own_shards(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": f"note {i}: " + "local text here " * 30}) + "\n" for i in range(80)))
    cfg = DataConfig(
        mixture=[
            SourceConfig(source="stdlib", max_documents=600, weight=0.3),
            SourceConfig(source="files", files=[str(path)], weight=0.7, label="notes"),
        ],
        seq_len=32,
        vocab_size=400,
        val_fraction=0.2,
        cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(cfg, num_proc=1)
    assert [s.label for s in data.sources] == ["stdlib", "notes"]
    assert [s.weight for s in data.sources] == pytest.approx([0.3, 0.7])
    assert len(data.val) == sum(len(s.val) for s in data.sources)
    assert data.summary()["sources"][0]["corpus"]["fingerprint"]["files"] > 0


def test_prepare_command_ends_with_the_token_counts(small):
    cfg, data = small
    args = ["--recipe", "recipes/tiny.yaml", "data.max_documents=1500", "data.val_fraction=0.02", "data.seq_len=32"]
    args.append("data.vocab_size=400")
    out = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "moe.data.prepare",
                *args,
                f"data.cache_dir={cfg.cache_dir}",
                "model.max_seq_len=32",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out.startswith(f"train tokens {data.train.tokens:,}, val tokens {data.val.tokens:,}, ")
    assert "reused" in out
