"""What a sweep reads back from a run folder (runs/<run>/): whether the run is finished, whether it can resume,
and its metrics. The run folders are the truth about a run; a sweep's state file only records what the sweep did.

    done.json            written by the trainer after the run's last step: step, tokens, val_loss
    checkpoints/latest   the tag to resume from (moe/checkpoint/metadata.py)
    metrics.jsonl        one JSON object a line: training steps (step, loss, time, tokens_per_s, tokens) and
                         validations (step, val_loss)
"""

from __future__ import annotations

import json
from pathlib import Path

from moe.checkpoint.metadata import Tag, latest_tag, tag_step

DONE = "done.json"
METRICS = "metrics.jsonl"


def read_done(run_dir: Path) -> dict | None:
    """done.json, or None when the run has not written it (or a torn copy of it)."""
    path = Path(run_dir) / DONE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_finished(run_dir: Path, max_steps: int | None = None) -> bool:
    """Whether the run in `run_dir` completed: done.json first; without it (a trainer that does not write one),
    a latest checkpoint at the run's own train.max_steps. `max_steps`: the step the sweep wants the run to reach
    (a run extended to more steps is not finished at its old last step)."""
    done = read_done(run_dir)
    if done is not None:
        return max_steps is None or done.get("step", 0) >= max_steps
    tag = latest_tag(Path(run_dir))
    if tag is None:
        return False
    saved_max = ((Tag.of(Path(run_dir), tag).recipe or {}).get("train") or {}).get("max_steps")
    target = max_steps if max_steps is not None else saved_max
    return target is not None and tag_step(tag) >= target


def can_resume(run_dir: Path) -> bool:
    """Whether the launcher must be given --resume: it refuses a run folder with a checkpoint without it."""
    return latest_tag(Path(run_dir)) is not None


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records; a line cut short by a killed run (the last one) is left out."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
