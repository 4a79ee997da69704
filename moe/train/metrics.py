"""Step metrics: runs/<run_name>/metrics.jsonl always, W&B on rank 0 when enabled."""

from __future__ import annotations

import json
import os
from pathlib import Path


def wandb_mode() -> str:
    """Offline unless the user's environment turns W&B online (WANDB_MODE, or a key in env or ~/.netrc)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


class MetricsLog:
    def __init__(self, run_dir: Path, resolved_config: dict, recipe, wandb_id: str | None, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        if resume_step and self.path.is_file():  # drop lines past the checkpoint we resume from
            lines = self.path.read_text().splitlines()
            self.path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= resume_step))
        elif not resume_step:
            self.path.write_text("")
        self.wandb_run = None
        log = recipe.logging
        if log.wandb:
            import wandb

            self.wandb_run = wandb.init(
                project=log.wandb_project,
                name=log.run_name,
                group=log.wandb_group,
                id=wandb_id,
                resume="allow",
                dir=str(run_dir),
                config=resolved_config,
                mode=wandb_mode(),
            )

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run else None

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run:
            import wandb

            # Lists (tokens per expert) become a histogram over the expert index.
            self.wandb_run.log(
                {
                    k: wandb.Histogram(np_histogram=(v, list(range(len(v) + 1)))) if isinstance(v, list) else v
                    for k, v in record.items()
                    if k != "step"
                },
                step=record["step"],
            )

    def log_restart(self, step: int, attempt: int, reason: str) -> None:
        """An automatic restart (moe/launch/restarts.py): a metrics.jsonl record, and the W&B run's summary (a
        history row at a step the run already logged would be dropped by W&B)."""
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "restart": attempt, "restart_reason": reason}) + "\n")
        if self.wandb_run:
            self.wandb_run.summary.update({"restarts": attempt, "last_restart_reason": reason})

    def close(self) -> None:
        if self.wandb_run:
            self.wandb_run.finish()
