"""The embedded corpora: the Python source of the running environment, with no download.

- `stdlib`: the interpreter's standard library (its test suites excluded) and the `pydoc_data` help topics.
- `site_packages`: the stdlib plus every installed package (torch, transformers, deepspeed, numpy, ...), or with
  `packages`, only the files those distributions installed (their RECORD): a corpus that depends on their versions
  and the Python's, not on whatever else the machine has installed.

Every file's source is a document, and so is each module's, class's and function's docstring. Files are
deduplicated by content hash (transformers copies code between its models), then docstrings by text. The
fingerprint (file count, bytes, one hash of the kept files' hashes) identifies the corpus in every cache key and
in the run folder; it depends on the installed versions, which is the point. With `packages`, it names them.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from moe.data.dedup import text_key

PYTHON_SOURCES = ("stdlib", "site_packages")
STDLIB_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_DOCSTRING_CHARS = 40


@dataclass(frozen=True)
class SourceFile:
    doc_id: str  # root name / path below the root: stdlib/json/decoder.py, site_packages/torch/nn/functional.py
    path: Path
    digest: str  # sha256 of the bytes
    size: int


def roots(source: str) -> list[tuple[str, Path]]:
    stdlib = ("stdlib", Path(sysconfig.get_paths()["stdlib"]))
    if source == "stdlib":
        return [stdlib]
    paths = dict.fromkeys(Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib"))
    return [stdlib, *(("site_packages", p) for p in paths if p.is_dir())]


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ValueError(f"package {name!r} is not installed") from None


def missing_packages(packages: list[str]) -> list[str]:
    """The named distributions that are not installed here."""
    missing = []
    for name in packages:
        try:
            _distribution(name)
        except ValueError:
            missing.append(name)
    return missing


def package_versions(packages: list[str]) -> dict[str, str]:
    """Each named distribution's installed version; ValueError names the first one not installed."""
    return {name: _distribution(name).version for name in packages}


def package_files(packages: list[str]) -> set[Path]:
    """The .py files the named distributions installed, from their RECORD (what pip wrote, nothing added since)."""
    return {
        Path(f.locate()).resolve() for name in packages for f in _distribution(name).files or [] if f.suffix == ".py"
    }


def _included(rel: Path, root_name: str) -> bool:
    if root_name == "stdlib":
        return not any(part in STDLIB_EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts)
    return "__pycache__" not in rel.parts


def source_files(source: str, packages: list[str] | None = None) -> list[SourceFile]:
    """The corpus's files in a fixed order (root, then path), each distinct content once (its first path); with
    `packages`, site-packages holds only theirs."""
    seen: set[str] = set()
    files = []
    allowed = package_files(packages) if packages else None
    for root_name, root in roots(source):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if not _included(rel, root_name) or not path.is_file():
                continue
            if allowed is not None and root_name == "site_packages" and path.resolve() not in allowed:
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            files.append(SourceFile(f"{root_name}/{rel.as_posix()}", path, digest, len(data)))
    return files


def fingerprint(files: list[SourceFile], source: str, packages: list[str] | None = None) -> dict:
    """What the corpus is: file count, bytes and a hash over the kept files' hashes, in order; and with
    `packages`, their versions."""
    digest = hashlib.sha256("".join(f.doc_id + f.digest for f in files).encode()).hexdigest()
    out = {"source": source, "files": len(files), "bytes": sum(f.size for f in files), "sha256": digest}
    if packages:
        out["packages"] = package_versions(packages)
    return out


def docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    found = (ast.get_docstring(n) for n in nodes)
    return [d for d in found if d and len(d) > MIN_DOCSTRING_CHARS]


def _file_documents(item: tuple[str, str]) -> list[dict]:
    doc_id, path = item
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    docs = [{"text": text, "doc_id": doc_id}] if text.strip() else []  # an empty __init__.py is no document
    docs += [{"text": d, "doc_id": f"{doc_id}#doc{i}"} for i, d in enumerate(docstrings(text))]
    return docs


def python_documents(
    source: str, max_documents: int | None = None, num_proc: int = 1, packages: list[str] | None = None
) -> list[dict]:
    """`source`'s documents in a fixed order; a document whose text repeats an earlier one's is dropped (copied
    docstrings, aliased help topics). With a cap, the same prefix as without one (and only as many files are
    parsed as the cap needs)."""
    files = source_files(source, packages)
    items = [(f.doc_id, str(f.path)) for f in files]
    docs: list[dict] = []
    seen: set[bytes] = set()

    def add(file_docs: list[dict]) -> bool:
        for doc in file_docs:
            key = text_key(doc["text"])
            if key not in seen:
                seen.add(key)
                docs.append(doc)
        return bool(max_documents) and len(docs) >= max_documents

    if num_proc > 1 and not max_documents:
        with ProcessPoolExecutor(num_proc) as pool:  # ast.parse of 200 MB is minutes on one core
            for file_docs in pool.map(_file_documents, items, chunksize=64):
                add(file_docs)
    else:
        for item in items:
            if add(_file_documents(item)):
                return docs[:max_documents]
    from pydoc_data.topics import topics

    add([{"text": topics[name], "doc_id": f"pydoc_data/{name}"} for name in sorted(topics)])
    return docs[:max_documents] if max_documents else docs
