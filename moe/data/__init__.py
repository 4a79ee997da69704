"""Data: the sources (corpus.py, python_source.py), near-duplicate filtering (dedup.py), the tokenizer
(tokenizer.py), token shards prepared once and shared (shards.py, prepare.py: `python -m moe.data.prepare`), the
plain packing reference (packing.py) and deterministic data-parallel batches over sources and mixtures
(batches.py). Imported lazily: the launcher checks shards without importing torch."""

__all__ = ["BlockBatches", "PreparedData", "prepare_data"]


def __getattr__(name: str):
    if name == "BlockBatches":
        from moe.data.batches import BlockBatches

        return BlockBatches
    if name in ("PreparedData", "prepare_data"):
        from moe.data import prepare

        return getattr(prepare, name)
    raise AttributeError(name)
