"""Preparing a corpus into token shards, and reading them back: the cost of `python -m moe.data.prepare`.

    python benchmarks/data_prepare.py                         # site_packages of this environment, default shape
    python benchmarks/data_prepare.py data.source=stdlib      # any recipe override

Measures, in a fresh cache folder: the wall time of the first prepare (parse, dedup, split, tokenizer, shards) on
this machine's cores, the time of a second one (reuse: fingerprint, checksums), the disk size of the shards and
the tokenizer, the token counts, and how fast the trainer's batches read from the shards (random global batches
of the recipe's micro-batch through BlockBatches) against a training rate given with --train-tokens-per-s
(default: the default recipe's 2-rank bf16 rate in benchmarks/RESULTS.md). JSON: benchmarks/results/data_prepare.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "data_prepare.json"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prepare(recipe: str, overrides: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "moe.data.prepare", "--recipe", recipe, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    return time.perf_counter() - start, proc.stdout.strip().splitlines()[-1]


def read_rate(recipe: str, overrides: list[str], seconds: float = 5.0) -> float:
    """Tokens/s of BlockBatches reading consecutive global batches (one rank's view, dp_size 1)."""
    from moe.config import load_recipe
    from moe.data.batches import BlockBatches
    from moe.data.prepare import prepare_data

    r = load_recipe(REPO / recipe, overrides)
    data = prepare_data(r.data)
    batches = BlockBatches([s.train for s in data.sources], 16, 0, 1, r.train.seed, weights=[1.0] * len(data.sources))
    tokens, start, step = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        tokens += batches.batch(step).numel()
        step += 1
    return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--train-tokens-per-s", type=float, default=7428.0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    overrides = args.overrides or ["data.source=site_packages"]
    with tempfile.TemporaryDirectory() as cache:
        overrides = [*overrides, f"data.cache_dir={cache}"]
        first_s, line = prepare(args.recipe, overrides)
        second_s, _ = prepare(args.recipe, overrides)
        rate = read_rate(args.recipe, overrides)
        shards = folder_bytes(Path(cache) / "shards")
        tokenizer = folder_bytes(Path(cache) / "tokenizers")
    import os

    result = {
        "command": "python benchmarks/data_prepare.py " + " ".join(args.overrides),
        "date": time.strftime("%Y-%m-%d"),
        "cores": len(os.sched_getaffinity(0)),
        "overrides": args.overrides,
        "last_line": line,
        "first_prepare_s": round(first_s, 1),
        "second_prepare_s": round(second_s, 1),
        "shard_bytes": shards,
        "tokenizer_bytes": tokenizer,
        "read_tokens_per_s": round(rate),
        "train_tokens_per_s": args.train_tokens_per_s,
        "read_over_train": round(rate / args.train_tokens_per_s, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
