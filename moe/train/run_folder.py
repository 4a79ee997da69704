"""The run folder rank 0 writes: the resolved config first, then what `moe.export` and generation need besides the
weights (the tokenizer and the model's HF config), fixed for the whole run.

    runs/<run_name>/recipe.yaml, ds_config.json, tokenizer/, model_config/, device_peaks.json, data.json

and, when the run has completed its last step, done.json (step, tokens, final validation loss: what a sweep reads).
Each validation pass adds eval/<set>_step<N>.npy: the loss of every block it scored, in the set's fixed order
(moe/train/evaluation.py), for comparisons between runs block by block.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from moe.config import Resolved, to_dict


def write_resolved_config(resolved: Resolved) -> Path:
    run_dir = resolved.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(resolved.recipe), sort_keys=False))
    (run_dir / "ds_config.json").write_text(json.dumps(resolved.ds_config, indent=2) + "\n")
    return run_dir


def write_model_files(run_dir: Path, tokenizer, model_config) -> None:
    tokenizer.save_pretrained(run_dir / "tokenizer")
    model_config.save_pretrained(run_dir / "model_config")


def write_device_peaks(run_dir: Path, peaks: dict) -> None:
    """The matmul peak(s) this run's MFU is measured against (moe/train/throughput.py), once per run."""
    (run_dir / "device_peaks.json").write_text(json.dumps(peaks, indent=2) + "\n")


def write_data_summary(run_dir: Path, summary: dict) -> None:
    """Each data source's corpus fingerprint (files, bytes, hash), split, shard folder and token counts."""
    (run_dir / "data.json").write_text(json.dumps(summary, indent=2) + "\n")


def write_done(run_dir: Path, final: dict) -> None:
    tmp = run_dir / "done.json.tmp"
    tmp.write_text(json.dumps(final) + "\n")
    tmp.replace(run_dir / "done.json")


def write_block_losses(run_dir: Path, eval_set: str, step: int, losses: np.ndarray) -> Path:
    path = Path(run_dir) / "eval" / f"{eval_set}_step{step}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, losses.astype(np.float32))
    return path
