"""Keep validation honest: no validation document that is an exact or near duplicate of training text.

Exact: documents are deduplicated by a hash of their text before the split. Near: a validation document is
dropped when most of its line shingles (`SHINGLE_LINES` consecutive non-blank lines, whitespace-stripped) also
occur somewhere in training, and a module's docstrings go with its source. Containment against the whole training
set, not Jaccard against one document, is what leakage is: the stdlib's 120 codec tables share their ASCII rows,
so `encodings/cp424.py` is mostly lines the model trained on, whichever table they came from. A document shorter
than one shingle is one shingle of all its lines. Hashes are 64-bit blake2b, deterministic across processes and
machines; the training side is one sorted numpy array.

Why our own and not `datasets`/`text-dedup` MinHash: those find near-duplicate pairs, which over 200 MB of code
is both slower and not the question; the question is how much of a document training already holds.
"""

from __future__ import annotations

import hashlib

import numpy as np

SHINGLE_LINES = 3
NEAR_DUPLICATE_CONTAINMENT = 0.5  # fraction of a document's shingles found in training


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()


def shingles(text: str) -> np.ndarray:
    """(n,) uint64 hashes of the document's line shingles; unique, sorted."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return np.zeros(0, dtype=np.uint64)
    windows = (
        ["\n".join(lines)]
        if len(lines) <= SHINGLE_LINES
        else ["\n".join(lines[i : i + SHINGLE_LINES]) for i in range(len(lines) - SHINGLE_LINES + 1)]
    )
    hashes = [
        int.from_bytes(hashlib.blake2b(w.encode("utf-8", "replace"), digest_size=8).digest(), "little") for w in windows
    ]
    return np.unique(np.array(hashes, dtype=np.uint64))


def containment(doc_shingles: np.ndarray, train_shingles: np.ndarray) -> float:
    """Fraction of `doc_shingles` (unique) present in the sorted array `train_shingles`."""
    if len(doc_shingles) == 0 or len(train_shingles) == 0:
        return 0.0
    pos = np.searchsorted(train_shingles, doc_shingles).clip(max=len(train_shingles) - 1)
    return float(np.mean(train_shingles[pos] == doc_shingles))


def training_shingles(train_texts) -> np.ndarray:
    """The sorted unique shingles of every training text."""
    return np.unique(np.concatenate([shingles(t) for t in train_texts] or [np.zeros(0, np.uint64)]))


def containments(val_texts, train_shingles: np.ndarray) -> list[float]:
    """Each validation text's share of shingles that training holds."""
    return [containment(shingles(t), train_shingles) for t in val_texts]
