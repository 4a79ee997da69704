"""Corpus -> tokenizer -> token shards, each cached on disk under a content key, built once and shared.

    python -m moe.data.prepare --recipe recipes/default.yaml [key=value ...]

tokenizes before any job (several processes) and ends with one line: `train tokens N, val tokens M, ...`. The
launcher runs the same preparation before it spawns ranks when the shards are missing, and the trainer's rank 0
as a last resort, so a job never tokenizes while its other ranks wait.

Keys: the tokenizer's is the corpus identity (for the Python sources their fingerprint), the vocabulary and the
sample size; a source's shards add the tokenizer and the sequence length. Every run of a sweep and every rank with
the same data settings reads the same shards. A byte-level BPE learns from a seeded sample of at most
`data.tokenizer_sample_mb` of training text, so its cost is bounded whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from moe.config.schema import DataConfig, SourceConfig
from moe.data.python_source import PYTHON_SOURCES, fingerprint, source_files
from moe.data.shards import (
    FORMAT_VERSION,
    INDEX,
    ShardError,
    TokenShards,
    check_index,
    default_num_proc,
    file_sha256,
    publish,
    read_index,
    token_dtype,
    write_split,
)

TOKENIZER_SAMPLE_SEED = 0  # a data setting, not the run's seed: every run of a sweep shares the tokenizer


@dataclass
class SourceShards:
    label: str
    weight: float  # normalized over the mixture
    folder: Path
    train: TokenShards
    val: TokenShards
    index: dict


@dataclass
class PreparedData:
    tokenizer: object
    sources: list[SourceShards]
    tokenizer_key: str
    seconds: float = 0.0
    built: list[str] = field(default_factory=list)  # labels of the sources whose shards this call wrote

    @property
    def train(self) -> TokenShards:
        """The training blocks of a single source (a mixture samples its sources: moe/data/batches.py)."""
        return self.sources[0].train if len(self.sources) == 1 else TokenShards(self._folders, "train")

    @property
    def val(self) -> TokenShards:
        """Every source's validation blocks, in source order."""
        return TokenShards(self._folders, "val")

    @property
    def _folders(self) -> list[Path]:
        return [s.folder for s in self.sources]

    def summary(self) -> dict:
        """What the run folder records (data.json): each source's fingerprint, split and token counts."""
        return {
            "tokenizer": self.tokenizer_key,
            "sources": [
                {
                    "label": s.label,
                    "weight": s.weight,
                    "shards": str(s.folder),
                    "corpus": s.index["corpus"],
                    "split": s.index["split"],
                    "train_tokens": s.train.tokens,
                    "val_tokens": s.val.tokens,
                }
                for s in self.sources
            ],
        }


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("MOE_CACHE") or Path.home() / ".cache" / "moe-recipes").expanduser()


def data_sources(cfg: DataConfig) -> list[SourceConfig]:
    """The sources of `cfg`: its mixture, or the one its own fields describe; each with a unique label."""
    sources = list(cfg.mixture) or [cfg]
    labels: dict[str, int] = {}
    out = []
    for i, s in enumerate(sources):
        base = s.label or s.source
        label = base if base not in labels else f"{base}{i}"
        labels[label] = i
        out.append(SourceConfig(**{**{k: getattr(s, k) for k in SourceConfig.__dataclass_fields__}, "label": label}))
    return out


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Documents:
    """Each source's split documents, loaded at most once per call (the tokenizer and the shards both need them)."""

    def __init__(self, cfg: DataConfig, num_proc: int):
        self.cfg, self.num_proc, self._split = cfg, num_proc, {}

    def split(self, source: SourceConfig):
        from moe.data.corpus import load_documents, split_documents  # datasets: only when something is built

        if source.label not in self._split:
            docs = load_documents(source, self.num_proc)
            self._split[source.label] = split_documents(docs, self.cfg.val_fraction)
        return self._split[source.label]

    def tokenizer_sample(self, sources: list[SourceConfig], weights: list[float]):
        """A seeded sample of training documents, about `tokenizer_sample_mb` in all, shared out by weight."""
        budget = self.cfg.tokenizer_sample_mb * 1e6
        for source, weight in zip(sources, weights):
            texts = self.split(source)[0]["text"]
            order = list(range(len(texts)))
            random.Random(TOKENIZER_SAMPLE_SEED).shuffle(order)
            taken = 0.0
            for i in order:
                if taken >= budget * weight:
                    break
                taken += len(texts[i])
                yield texts[i]


def corpus_identity(cfg: SourceConfig, val_fraction: float) -> dict:
    """What determines a source's documents; part of every cache key. For the Python sources, their fingerprint."""
    ident = {"source": cfg.source, "max_documents": cfg.max_documents, "val_fraction": val_fraction}
    if cfg.source in PYTHON_SOURCES:
        ident["fingerprint"] = fingerprint(source_files(cfg.source, cfg.packages), cfg.source, cfg.packages)
    elif cfg.source == "files":
        paths = [Path(f).expanduser() for f in cfg.files]
        ident["files"] = [(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths]
        ident["text_field"] = cfg.text_field
    else:
        ident.update(name=cfg.name, config_name=cfg.config_name, text_field=cfg.text_field)
    return ident


@dataclass
class Plan:
    """Where a data config's tokenizer and shards live, computed without building or importing anything heavy."""

    sources: list[SourceConfig]
    weights: list[float]
    identities: list[dict]
    tokenizer_key: str
    expect: dict  # what every shard index must say: tokenizer, seq_len, format
    folders: list[Path]

    def missing(self) -> list[str]:
        return [s.label for s, f in zip(self.sources, self.folders) if not (f / INDEX).is_file()]


def plan(cfg: DataConfig) -> Plan:
    sources = data_sources(cfg)
    total = sum(s.weight for s in sources)
    weights = [s.weight / total for s in sources]
    identities = [corpus_identity(s, cfg.val_fraction) for s in sources]
    if cfg.tokenizer == "bpe":
        tok_key = _key(
            {
                "corpus": identities,
                "weights": weights if len(sources) > 1 else None,
                "vocab_size": cfg.vocab_size,
                "sample_mb": cfg.tokenizer_sample_mb,
                "kind": "bytelevel-bpe",
            }
        )
    else:
        tok_key = cfg.tokenizer
    expect = {"tokenizer": tok_key, "seq_len": cfg.seq_len, "format": FORMAT_VERSION}
    root = cache_root(cfg)
    folders = [root / "shards" / _key({"corpus": ident, **expect}) for ident in identities]
    return Plan(sources, weights, identities, tok_key, expect, folders)


def check_shards(p: Plan, global_batch_tokens: int, full: bool) -> dict[str, dict]:
    """Every source's index, checked (sizes, or checksums too with `full`), with enough tokens for one global batch
    of training and one validation block; ShardError names the source otherwise."""
    indexes = {}
    for source, folder in zip(p.sources, p.folders):
        index = read_index(folder)
        check_index(index, folder, p.expect, full=full)
        train, val = index["splits"]["train"]["tokens"], index["splits"]["val"]["blocks"]
        if train < global_batch_tokens:
            raise ShardError(
                f"data source {source.label} holds {train} training tokens, fewer than one global batch "
                f"({global_batch_tokens}); add documents or lower the batch or data.seq_len"
            )
        if val < 1:
            raise ShardError(f"data source {source.label} has no validation block; raise data.val_fraction")
        indexes[source.label] = index
    return indexes


def prepare_data(cfg: DataConfig, num_proc: int | None = None, full_check: bool = False, log=None) -> PreparedData:
    """The tokenizer and every source's shards, built where missing. `full_check` hashes existing shards."""
    from moe.data.tokenizer import load_or_train_bpe, load_pretrained

    start = time.perf_counter()
    log = log or (lambda message: None)
    num_proc = default_num_proc(cfg.num_proc if num_proc is None else num_proc)
    p, docs = plan(cfg), _Documents(cfg, num_proc)
    if cfg.tokenizer == "bpe":
        tokenizer = load_or_train_bpe(
            cache_root(cfg) / "tokenizers" / p.tokenizer_key,
            lambda: docs.tokenizer_sample(p.sources, p.weights),
            cfg.vocab_size,
        )
    else:
        tokenizer = load_pretrained(cfg.tokenizer)
    prepared, built = [], []
    for source, weight, ident, folder in zip(p.sources, p.weights, p.identities, p.folders):
        if not (folder / INDEX).is_file():
            log(f"{source.label}: tokenizing into {folder}")
            _build(folder, docs.split(source), ident, tokenizer, p.expect, num_proc)
            built.append(source.label)
        index = read_index(folder)
        check_index(index, folder, p.expect, full=full_check)
        shards = [TokenShards([folder], split) for split in ("train", "val")]
        prepared.append(SourceShards(source.label, weight, folder, *shards, index))
    return PreparedData(tokenizer, prepared, p.tokenizer_key, time.perf_counter() - start, built)


def _build(folder: Path, split, ident: dict, tokenizer, expect: dict, num_proc: int) -> None:
    train_docs, val_docs, report = split
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    splits = {
        name: write_split(name, docs["text"], tokenizer, expect["seq_len"], tmp, num_proc)
        for name, docs in (("train", train_docs), ("val", val_docs))
    }
    tokenizer_file = Path(getattr(tokenizer, "name_or_path", "")) / "tokenizer.json"
    index = {
        **expect,
        "dtype": token_dtype(len(tokenizer)).name,
        "vocab_size": len(tokenizer),
        "tokenizer_sha256": file_sha256(tokenizer_file) if tokenizer_file.is_file() else None,
        "corpus": ident,
        "split": report,
        "splits": splits,
    }
    (tmp / INDEX).write_text(json.dumps(index, indent=1))
    publish(tmp, folder)


def describe(data: PreparedData, seq_len: int) -> str:
    """The last line of `python -m moe.data.prepare`."""
    train = sum(s.train.tokens for s in data.sources)
    val = sum(s.val.tokens for s in data.sources)
    blocks = f"{sum(len(s.train) for s in data.sources)} / {sum(len(s.val) for s in data.sources)} blocks of {seq_len}"
    where = data.sources[0].folder.parent
    action = f"built {', '.join(data.built)}" if data.built else "reused"
    return f"train tokens {train:,}, val tokens {val:,}, {blocks}, {action} in {data.seconds:.1f} s, shards in {where}"


def main(argv: list[str] | None = None) -> int:
    from moe.config import ConfigError, load_recipe
    from moe.config.args import trainer_parser
    from moe.config.checks import check_data
    from moe.config.loader import split_overrides

    parser = trainer_parser()
    parser.description = "Tokenize a recipe's data into shared token shards before any job (ds. overrides: ignored)."
    parser.add_argument("--num_proc", type=int, default=None, help="processes (default data.num_proc: every core)")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, split_overrides(args.overrides)[0])  # the data needs no world size
        check_data(recipe.data, recipe.model.max_seq_len)
        data = prepare_data(recipe.data, args.num_proc, full_check=True, log=print)
        check_shards(plan(recipe.data), recipe.data.seq_len, full=False)  # a batch's size is the launcher's check
    except (ConfigError, ShardError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in data.sources:
        print(f"{s.label}: {s.index['corpus']}; split {json.dumps(_split_counts(s.index['split']))}")
    print(describe(data, recipe.data.seq_len))
    return 0


def _split_counts(report: dict) -> dict:
    return {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}


if __name__ == "__main__":
    sys.exit(main())
