"""A checkpoint that verifies itself: `MANIFEST.json` in each tag lists every file with its size and sha256.

It is written at save, after every rank's files are on disk and before COMPLETE, and checked at load. The ranks
share the hashing: rank r hashes every world-th file of the tag's sorted listing, so a save or a load costs each
rank 1/world of the checkpoint's bytes. DeepSpeed keeps no checksums of its own (its `latest` and tag folders are
trusted as found), and a truncated shard otherwise fails deep inside torch.load on one rank, or loads garbage.

    {"files": {"mp_rank_00_model_states.pt": {"bytes": 814970, "sha256": "..."}, ...}}

Files written into a tag later (`python -m moe.reshard`'s converted state) are not listed and not checked. A tag
saved before manifests existed has none and is trusted as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "MANIFEST.json"
CORRUPT = "CORRUPT"  # replaces COMPLETE in a tag that failed verification; holds the reason
UNLISTED = {MANIFEST, CORRUPT, "COMPLETE"}
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tag_files(tag_dir: Path) -> list[str]:
    """Every file of the tag (relative paths, sorted), but the markers and the manifest itself."""
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*") if p.is_file() and p.name not in UNLISTED)


def hash_share(tag_dir: Path, rank: int, world_size: int) -> dict[str, dict]:
    """This rank's share of the manifest: {file: {bytes, sha256}} for every world_size-th file from `rank`."""
    return {
        name: {"bytes": (tag_dir / name).stat().st_size, "sha256": sha256_of(tag_dir / name)}
        for name in tag_files(tag_dir)[rank::world_size]
    }


def write_manifest(tag_dir: Path, shares: list[dict[str, dict]]) -> None:
    files = {name: entry for share in shares for name, entry in share.items()}
    tmp = tag_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1))
    os.replace(tmp, tag_dir / MANIFEST)


def first_bad_file(tag_dir: Path, rank: int = 0, world_size: int = 1, full: bool = True) -> str | None:
    """Why this rank's share of the tag's listed files does not match its manifest (missing, another size, or,
    with `full`, another sha256), naming the file; None when it matches or the tag has no manifest."""
    path = tag_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        return f"{path} is not a readable manifest"
    for name in sorted(files)[rank::world_size]:
        entry, file = files[name], tag_dir / name
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != entry["bytes"]:
            return f"{file} has {size:,} bytes, the manifest {entry['bytes']:,} (truncated?)"
        if full and sha256_of(file) != entry["sha256"]:
            return f"{file} does not match its sha256 in the manifest (corrupted)"
    return None
