"""Data: corpus (corpus.py), tokenizer (tokenizer.py), packing into fixed-length blocks (packing.py), the cached
preparation of both splits (prepare.py) and deterministic data-parallel batches (batches.py)."""

from moe.data.batches import BlockBatches
from moe.data.prepare import PreparedData, prepare_data

__all__ = ["BlockBatches", "PreparedData", "prepare_data"]
