"""Corpus -> tokenizer -> packed train/validation blocks, all cached on disk under a content key.

Rank 0 builds; the other ranks wait at a barrier and then read the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets

from moe.config.schema import DataConfig
from moe.data.corpus import corpus_identity, load_documents, split_documents
from moe.data.packing import pack_documents
from moe.data.tokenizer import load_or_train_bpe, load_pretrained


@dataclass
class PreparedData:
    tokenizer: object
    train: datasets.Dataset  # input_ids: (seq_len,) int32 per row
    val: datasets.Dataset


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("MOE_CACHE") or Path.home() / ".cache" / "moe-recipes").expanduser()


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_data(cfg: DataConfig) -> PreparedData:
    root = cache_root(cfg)
    ident = corpus_identity(cfg)
    docs = None

    def documents():
        nonlocal docs
        if docs is None:
            docs = split_documents(load_documents(cfg), cfg.val_fraction)
        return docs

    if cfg.tokenizer == "bpe":
        tok_key = _key({"corpus": ident, "vocab_size": cfg.vocab_size, "kind": "bytelevel-bpe"})
        tokenizer = load_or_train_bpe(root / "tokenizers" / tok_key, lambda: documents()[0]["text"], cfg.vocab_size)
    else:
        tok_key = cfg.tokenizer
        tokenizer = load_pretrained(cfg.tokenizer)

    blocks_dir = root / "blocks" / _key({"corpus": ident, "tokenizer": tok_key, "seq_len": cfg.seq_len})
    if not (blocks_dir / "done").is_file():
        train_docs, val_docs = documents()
        tmp = blocks_dir.with_name(f"{blocks_dir.name}.tmp{os.getpid()}")
        for name, split in (("train", train_docs), ("val", val_docs)):
            pack_documents(split, tokenizer, cfg.seq_len, cfg.num_proc).save_to_disk(str(tmp / name))
        (tmp / "done").write_text(json.dumps({"corpus": ident, "tokenizer": tok_key, "seq_len": cfg.seq_len}))
        try:
            tmp.rename(blocks_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    train = datasets.load_from_disk(str(blocks_dir / "train")).with_format("torch")
    val = datasets.load_from_disk(str(blocks_dir / "val")).with_format("torch")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"the corpus gives {len(train)} train and {len(val)} validation blocks of "
            f"{cfg.seq_len} tokens; lower data.seq_len or add documents"
        )
    return PreparedData(tokenizer, train, val)
