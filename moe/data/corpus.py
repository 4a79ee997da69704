"""Documents for pretraining, as a `datasets.Dataset` with columns `text` and `doc_id`, and their split.

The embedded sources are the running environment's Python source (moe/data/python_source.py): `stdlib`, the
default, and `site_packages`. `hf` reads a `datasets` name or local dataset folder, `files` local text, JSON lines
or parquet files. Documents with the same text are kept once. The split is by document, by a hash of its id (a
module's docstrings follow its source); validation documents that training already mostly holds are dropped
(moe/data/dedup.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets

from moe.config.schema import SourceConfig
from moe.data.dedup import NEAR_DUPLICATE_CONTAINMENT, containments, text_key, training_shingles
from moe.data.python_source import PYTHON_SOURCES, python_documents

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_documents(cfg: SourceConfig, num_proc: int = 1) -> datasets.Dataset:
    if cfg.source in PYTHON_SOURCES:
        return datasets.Dataset.from_list(python_documents(cfg.source, cfg.max_documents, num_proc, cfg.packages))
    if cfg.source == "files":
        builder = _builder_for(cfg.files)
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(
            builder, data_files=[str(Path(f).expanduser()) for f in cfg.files], split="train", **kwargs
        )
    else:
        ds = datasets.load_dataset(cfg.name, cfg.config_name, split="train")
    if cfg.text_field not in ds.column_names:
        raise ValueError(f"dataset has no column '{cfg.text_field}' (data.text_field); columns: {ds.column_names}")
    if cfg.max_documents:
        ds = ds.select(range(min(cfg.max_documents, len(ds))))
    ds = (
        ds.select_columns([cfg.text_field]).rename_column(cfg.text_field, "text")
        if cfg.text_field != "text"
        else ds.select_columns(["text"])
    )
    ds = ds.add_column("doc_id", [str(i) for i in range(len(ds))])
    return _unique_texts(ds)


def _unique_texts(ds: datasets.Dataset) -> datasets.Dataset:
    seen: set[bytes] = set()
    keep = []
    for i, text in enumerate(ds["text"]):
        key = text_key(text or "")
        if text and key not in seen:
            seen.add(key)
            keep.append(i)
    return ds if len(keep) == len(ds) else ds.select(keep)


def _builder_for(files: list[str]) -> str:
    kinds = {LOCAL_BUILDERS.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"data.files must all be one of {sorted(LOCAL_BUILDERS)} (got {files})")
    return kinds.pop()


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """Deterministic split by a hash of the document id; a module's docstrings follow its source."""
    group = doc_id.split("#", 1)[0]
    bucket = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "little") % 10_000
    return bucket < val_fraction * 10_000


def split_documents(ds: datasets.Dataset, val_fraction: float) -> tuple[datasets.Dataset, datasets.Dataset, dict]:
    """(train, validation, report), by document group. A validation document that training mostly holds is dropped,
    and so is its whole group when that document is the group's source (moe/data/dedup.py)."""
    doc_ids, texts = ds["doc_id"], ds["text"]
    groups = [d.split("#", 1)[0] for d in doc_ids]
    flags = [is_validation(g, val_fraction) for g in groups]
    train = [i for i, v in enumerate(flags) if not v]
    candidates = [i for i, v in enumerate(flags) if v]
    shares = containments([texts[i] for i in candidates], training_shingles(texts[i] for i in train))
    near = {i for i, share in zip(candidates, shares) if share >= NEAR_DUPLICATE_CONTAINMENT}
    dropped_groups = {groups[i] for i in near if "#" not in doc_ids[i]}
    val = [i for i in candidates if i not in near and groups[i] not in dropped_groups]
    if not val or not train:
        raise ValueError(f"data.val_fraction={val_fraction} leaves an empty split over {len(ds)} documents")
    report = {
        "documents": len(ds),
        "train_documents": len(train),
        "val_documents": len(val),
        "val_documents_dropped_as_near_duplicates": len(candidates) - len(val),
        "val_groups_dropped_as_near_duplicates": sorted(dropped_groups),
    }
    return ds.select(train), ds.select(val), report
