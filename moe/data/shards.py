"""Token shards: each split's packed token stream as flat numpy files (uint16 below 65,536 token ids, else uint32)
plus an `index.json`, written once and memory-mapped by every run and rank.

Block i of a split is tokens [i * seq_len, (i + 1) * seq_len) of the concatenated files; every file holds whole
blocks, so a block never straddles two. The packing is the HF `run_clm` one of moe/data/packing.py (the plain
reference the tests compare against): documents EOS-separated, each batch of `PACK_DOCUMENTS` documents dropping
its tail remainder. Files are written by several processes, one contiguous run of batches each, so the stream
does not depend on the process count. The index keeps each file's token count and sha256: a truncated or changed
shard is refused, and so is a set built with another tokenizer or sequence length than the run's.

Anchors: Megatron's indexed dataset (a flat token file and an index of offsets) and OLMo-core's numpy fixed-length
dataset (uint16/uint32 memmaps, blocks by index). `datasets` still reads the sources; only the training loop's
reads moved here, since a row read through Arrow costs more than a memmap slice.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np

PACK_DOCUMENTS = 1000  # documents per packing batch (datasets.map's default batch size, as packing.py)
BATCHES_PER_FILE = 16
INDEX = "index.json"
FORMAT_VERSION = 1


class ShardError(ValueError):
    """A shard set that cannot be used: missing, truncated, changed, or built for another run."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- writing -------------------------------------------------------------------------------------------------

_JOB: dict = {}  # what forked workers read: the texts and the tokenizer (copy-on-write, never pickled)


def _encode(texts: list[str]) -> list[list[int]]:
    tokenizer = _JOB["tokenizer"]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _write_part(task: tuple[int, int, str]) -> dict:
    """Batches [first, last) of the job's texts -> one file of whole blocks; its name, tokens and sha256."""
    first, last, path = task
    texts, seq_len, eos, dtype = _JOB["texts"], _JOB["seq_len"], _JOB["eos"], _JOB["dtype"]
    tokens = 0
    with open(path, "wb") as f:
        for b in range(first, last):
            ids = _encode(texts[b * PACK_DOCUMENTS : (b + 1) * PACK_DOCUMENTS])
            stream = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)  # (N,)
            kept = stream[: len(stream) // seq_len * seq_len].astype(dtype)
            f.write(kept.tobytes())
            tokens += len(kept)
    return {"name": Path(path).name, "tokens": tokens, "sha256": file_sha256(Path(path))}


def write_split(name: str, texts: list[str], tokenizer, seq_len: int, out: Path, num_proc: int) -> dict:
    """Tokenize and pack `texts` into `out`/<name>-NNNNN.bin; the split's index entry."""
    dtype = token_dtype(len(tokenizer))
    batches = -(-len(texts) // PACK_DOCUMENTS)
    tasks = [
        (first, min(first + BATCHES_PER_FILE, batches), str(out / f"{name}-{i:05d}.bin"))
        for i, first in enumerate(range(0, batches, BATCHES_PER_FILE))
    ]
    _JOB.update(texts=texts, tokenizer=tokenizer, seq_len=seq_len, eos=tokenizer.eos_token_id, dtype=dtype)
    try:
        if num_proc > 1 and len(tasks) > 1:
            # fork: the workers share the texts and the tokenizer with this process instead of pickling 200 MB
            with multiprocessing.get_context("fork").Pool(min(num_proc, len(tasks))) as pool:
                files = pool.map(_write_part, tasks, chunksize=1)
        else:
            files = [_write_part(t) for t in tasks]
    finally:
        _JOB.clear()
    tokens = sum(f["tokens"] for f in files)
    return {"tokens": tokens, "blocks": tokens // seq_len, "files": files}


# ---- reading -------------------------------------------------------------------------------------------------


def read_index(folder: Path) -> dict:
    path = folder / INDEX
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ShardError(f"token shards {folder}: cannot read {INDEX} ({e})") from None


def check_index(index: dict, folder: Path, expect: dict, full: bool) -> None:
    """Refuse shards built for another run (`expect`: tokenizer, seq_len) or whose files changed. `full` hashes
    every file (what `moe.data.prepare` and preflight do); otherwise sizes only (what each rank does)."""
    for key, value in expect.items():
        if index.get(key) != value:
            raise ShardError(
                f"token shards {folder} were built with {key}={index.get(key)!r}, the run has {value!r}; "
                f"run `python -m moe.data.prepare` for this recipe"
            )
    itemsize = np.dtype(index["dtype"]).itemsize
    for split in index["splits"].values():
        for entry in split["files"]:
            path = folder / entry["name"]
            size = path.stat().st_size if path.is_file() else -1
            if size != entry["tokens"] * itemsize:
                raise ShardError(
                    f"token shard {path} is truncated or missing: {size} bytes, the index says "
                    f"{entry['tokens'] * itemsize}; delete {folder} and prepare again"
                )
            if full and file_sha256(path) != entry["sha256"]:
                raise ShardError(f"token shard {path} does not match its checksum; delete {folder} and prepare again")


class TokenShards:
    """The (seq_len,) blocks of one split over one or more shard folders, in order, read by index."""

    def __init__(self, folders: list[Path], split: str):
        self.split = split
        self._maps, starts = [], [0]
        for folder in folders:
            index = read_index(folder)
            self.seq_len, dtype = index["seq_len"], np.dtype(index["dtype"])
            for entry in index["splits"][split]["files"]:
                if entry["tokens"]:
                    self._maps.append(np.memmap(folder / entry["name"], dtype=dtype, mode="r"))
                    starts.append(starts[-1] + entry["tokens"] // self.seq_len)
        self._starts = np.array(starts, dtype=np.int64)  # (files + 1,) first block of each file

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def tokens(self) -> int:
        return len(self) * self.seq_len

    def __getitem__(self, rows):
        """rows: an int or a sequence of ints -> (len(rows), seq_len) int64 (or (seq_len,) for an int)."""
        if isinstance(rows, (int, np.integer)):
            return self[[int(rows)]][0]
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"block index out of range 0..{len(self) - 1}")
        files = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), self.seq_len), dtype=np.int64)
        for i, (f, row) in enumerate(zip(files, rows)):
            start = (row - self._starts[f]) * self.seq_len
            out[i] = self._maps[f][start : start + self.seq_len]
        import torch  # here, not at the top: the launcher checks shards without importing torch

        return torch.from_numpy(out)


def publish(tmp: Path, folder: Path) -> None:
    """Make a finished shard folder visible atomically; a concurrent builder's copy loses quietly."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def default_num_proc(num_proc: int) -> int:
    return num_proc or len(os.sched_getaffinity(0))
