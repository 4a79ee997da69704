"""Data pipeline: corpus, tokenizer, packing and deterministic sharded batches."""
from moe.data.loader import BlockBatches
from moe.data.pipeline import PreparedData, prepare_data

__all__ = ["BlockBatches", "PreparedData", "prepare_data"]
