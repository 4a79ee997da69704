"""Documents for pretraining, as a `datasets.Dataset` with columns `text` and `doc_id`.

The embedded default is the running interpreter's standard library: every module's source, each module's,
class's and function's docstring as its own document, and the `pydoc_data` help topics. It is real text,
present on every Python install, and needs no download.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from pathlib import Path

import datasets

from moe.config.schema import DataConfig

EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def stdlib_documents(max_documents: int | None = None) -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[dict] = []
    for path in sorted(root.rglob("*.py")):
        if max_documents and len(docs) >= max_documents:
            return docs[:max_documents]  # the same prefix, without parsing the rest of the stdlib
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        docs.append({"text": source, "doc_id": f"stdlib/{rel}"})
        docs.extend({"text": doc, "doc_id": f"stdlib/{rel}#doc{i}"} for i, doc in enumerate(docstrings(source)))
    from pydoc_data.topics import topics

    docs.extend({"text": topics[name], "doc_id": f"pydoc_data/{name}"} for name in sorted(topics))
    return docs[:max_documents] if max_documents else docs


def docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    found = (ast.get_docstring(n) for n in nodes)
    return [d for d in found if d and len(d) > 40]


def load_documents(cfg: DataConfig) -> datasets.Dataset:
    if cfg.source == "stdlib":
        return datasets.Dataset.from_list(stdlib_documents(cfg.max_documents))
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
    return ds.add_column("doc_id", [str(i) for i in range(len(ds))])


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


def split_documents(ds: datasets.Dataset, val_fraction: float) -> tuple[datasets.Dataset, datasets.Dataset]:
    flags = [is_validation(d, val_fraction) for d in ds["doc_id"]]
    train = [i for i, v in enumerate(flags) if not v]
    val = [i for i, v in enumerate(flags) if v]
    if not val or not train:
        raise ValueError(f"data.val_fraction={val_fraction} leaves an empty split over {len(ds)} documents")
    return ds.select(train), ds.select(val)


def corpus_identity(cfg: DataConfig) -> dict:
    """What determines the documents; part of every cache key."""
    ident = {"source": cfg.source, "max_documents": cfg.max_documents, "val_fraction": cfg.val_fraction}
    if cfg.source == "stdlib":
        ident["python"] = sys.version.split()[0]
    elif cfg.source == "files":
        ident["files"] = [
            (str(Path(f).resolve()), Path(f).stat().st_mtime_ns, Path(f).stat().st_size) for f in cfg.files
        ]
        ident["text_field"] = cfg.text_field
    else:
        ident.update(name=cfg.name, config_name=cfg.config_name, text_field=cfg.text_field)
    return ident
