"""Tokenize documents and pack them, EOS-separated, into fixed-length blocks (HF `run_clm` style)."""

from __future__ import annotations

import datasets
import numpy as np


def pack_documents(docs: datasets.Dataset, tokenizer, seq_len: int, num_proc: int = 1) -> datasets.Dataset:
    """docs(text) -> blocks(input_ids: seq_len int32). Each 1000-document batch drops its tail remainder."""
    eos = tokenizer.eos_token_id

    def tokenize_and_pack(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int32)  # (N,)
        n_blocks = len(stream) // seq_len
        return {"input_ids": stream[: n_blocks * seq_len].reshape(n_blocks, seq_len).tolist()}

    blocks = docs.map(
        tokenize_and_pack,
        batched=True,
        batch_size=1000,
        remove_columns=docs.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        desc="tokenize+pack",
    )
    return blocks.cast_column("input_ids", datasets.Sequence(datasets.Value("int32")))
