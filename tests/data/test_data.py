import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import tqdm

from moe.config.schema import DataConfig
from moe.data import BlockBatches, prepare_data
from moe.data.corpus import is_validation, load_documents, split_documents
from moe.data.packing import pack_documents
from moe.data.python_source import fingerprint, package_files, python_documents, source_files
from moe.data.tokenizer import train_bpe

TEXTS = ["def add(a, b):\n    return a + b\n", "Return the sum of two numbers.", "class Foo:\n    pass\n"] * 20


@pytest.fixture(scope="module")
def small_tokenizer():
    return train_bpe(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def stdlib_corpus():
    return python_documents("stdlib")


def test_stdlib_corpus_is_real_text_and_deterministic(stdlib_corpus):
    docs = stdlib_corpus
    ids = [d["doc_id"] for d in docs]
    assert len(docs) > 1000 and len(set(ids)) == len(ids)
    assert any(i.startswith("pydoc_data/") for i in ids) and any("#doc" in i for i in ids)
    assert not any("site-packages" in i or "/test/" in i for i in ids)
    assert ids[:1000] == [d["doc_id"] for d in python_documents("stdlib", 1000)]  # a cap is the same prefix
    texts = [d["text"] for d in docs if "#" not in d["doc_id"]]
    assert len(set(texts)) == len(texts)  # files deduplicated by content


def test_site_packages_of_named_packages_is_their_recorded_files_and_the_stdlib():
    """`packages` (recipes/study.yaml's pinned runtime) makes a corpus that another install on the machine cannot
    change: site-packages contributes only the files the named distributions' RECORD lists."""
    files = source_files("site_packages", ["tqdm", "pyyaml"])
    stdlib = [f.doc_id for f in files if f.doc_id.startswith("stdlib/")]
    assert stdlib == [f.doc_id for f in source_files("stdlib")]
    installed = [f for f in files if f.doc_id.startswith("site_packages/")]
    assert {f.doc_id.split("/")[1] for f in installed} == {"tqdm", "yaml", "_yaml"}
    assert {f.path.resolve() for f in installed} <= package_files(["tqdm", "pyyaml"])
    assert len(installed) > 10
    assert len([f for f in installed if f.doc_id.startswith("site_packages/tqdm/")]) == len(
        [p for p in package_files(["tqdm"]) if Path(tqdm.__file__).parent in p.parents]
    )
    prints = fingerprint(files, "site_packages", ["tqdm", "pyyaml"])
    assert prints["packages"] == {"tqdm": "4.70.1", "pyyaml": "6.0.3"}  # requirements.txt's pins
    with pytest.raises(ValueError, match="package 'no-such-distribution' is not installed"):
        fingerprint(files, "site_packages", ["no-such-distribution"])


def test_split_is_deterministic_disjoint_and_keeps_docstrings_with_their_module(stdlib_corpus):
    ds = datasets.Dataset.from_list(stdlib_corpus[:3000])
    train, val, report = split_documents(ds, 0.1)
    train_ids, val_ids = set(train["doc_id"]), set(val["doc_id"])
    dropped = report["val_documents_dropped_as_near_duplicates"]
    assert not train_ids & val_ids and len(train_ids) + len(val_ids) + dropped == len(ds)
    assert 0.03 < len(val_ids) / len(ds) < 0.25
    for doc_id in val_ids:
        assert is_validation(doc_id.split("#")[0], 0.1)
    again_train, _, _ = split_documents(ds, 0.1)
    assert again_train["doc_id"] == train["doc_id"]


def test_tokenizer_round_trips(small_tokenizer):
    text = "def add(a, b):\n    return a + b  # ünïcödé ✓\n"
    ids = small_tokenizer(text)["input_ids"]
    assert small_tokenizer.decode(ids) == text
    assert small_tokenizer.eos_token == "<|endoftext|>"


def test_packing_is_deterministic_and_fills_fixed_blocks(small_tokenizer):
    docs = datasets.Dataset.from_dict({"text": TEXTS})
    a = pack_documents(docs, small_tokenizer, seq_len=16)
    b = pack_documents(docs, small_tokenizer, seq_len=16)
    assert a["input_ids"] == b["input_ids"]
    assert all(len(row) == 16 for row in a["input_ids"])
    eos = small_tokenizer.eos_token_id
    flat = [t for row in a["input_ids"] for t in row]
    assert flat.count(eos) >= len(TEXTS) - 3  # documents are EOS-separated; only the tail is dropped
    expected = [t for text in TEXTS for t in (*small_tokenizer(text)["input_ids"], eos)]
    assert flat == expected[: len(flat)]


def test_batches_are_sharded_deterministic_and_resumable():
    blocks = torch.arange(50).repeat_interleave(4).view(50, 4)
    ranks = [BlockBatches(blocks, micro_batch=3, dp_rank=r, dp_size=2, seed=5) for r in range(2)]
    seen = [torch.cat([ranks[r].batch(m)[:, 0] for r in range(2)]) for m in range(8)]  # 8 x 6 = 48 < 50
    flat = torch.cat(seen).tolist()
    assert len(set(flat)) == len(flat)  # no sample twice within an epoch, none shared between ranks
    fresh = BlockBatches(blocks, micro_batch=3, dp_rank=1, dp_size=2, seed=5)
    assert torch.equal(fresh.batch(5), ranks[1].batch(5))  # a batch is a function of (seed, step) alone
    other_seed = BlockBatches(blocks, micro_batch=3, dp_rank=1, dp_size=2, seed=6)
    assert not torch.equal(other_seed.batch(0), ranks[1].batch(0))
    assert ranks[0].batch(9).shape == (3, 4)  # crosses into the next epoch's permutation


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt"])
def test_local_files_feed_the_same_pipeline(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    docs = [f"document number {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(60)]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    elif suffix == ".parquet":
        datasets.Dataset.from_dict({"text": docs}).to_parquet(str(path))
    else:
        path.write_text(docs[0])
    cfg = DataConfig(
        source="files",
        files=[str(path)],
        seq_len=32,
        vocab_size=300,
        val_fraction=0.2,
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(load_documents(cfg)) == (1 if suffix == ".txt" else 60)
    if suffix == ".txt":
        return
    data = prepare_data(cfg)
    assert len(data.train) > 0 and len(data.val) > 0
    assert data.train[0].shape == (32,)
    cached = prepare_data(cfg)  # second call reads the cache
    rows = list(range(len(data.train)))
    assert cached.built == [] and torch.equal(cached.train[rows], data.train[rows])


def test_local_hf_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"body": f"text {i} " * 30}) + "\n" for i in range(40)))
    cfg = DataConfig(
        source="hf",
        name=str(folder),
        text_field="body",
        seq_len=16,
        vocab_size=300,
        val_fraction=0.2,
        cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(cfg)
    assert len(data.train) > len(data.val) > 0


def test_no_validation_document_is_an_exact_or_near_duplicate_of_training(stdlib_corpus):
    from moe.data.dedup import NEAR_DUPLICATE_CONTAINMENT, containment, shingles

    ds = datasets.Dataset.from_list(stdlib_corpus)
    train, val, report = split_documents(ds, 0.02)
    assert {"stdlib/encodings/mac_cyrillic.py", "stdlib/encodings/cp424.py"} <= set(
        report["val_groups_dropped_as_near_duplicates"]
    )  # codec tables: 118 near-identical ones train
    train_texts = set(train["text"])
    train_shingles = np.unique(np.concatenate([shingles(t) for t in train["text"]]))
    for text in val["text"]:
        assert text not in train_texts
        assert containment(shingles(text), train_shingles) < NEAR_DUPLICATE_CONTAINMENT
