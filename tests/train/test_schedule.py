"""The LR schedule (moe/train/schedule.py): linear warmup from lr / warmup at step 0, then cosine to lr x min_ratio,
as the LambdaLR DeepSpeed steps once per optimizer step."""

import math

import pytest
import torch

from moe.config import load_recipe
from moe.train.schedule import build_scheduler, warmup_cosine
from tests.helpers import REPO


def test_warmup_is_linear_from_the_first_step():
    assert [warmup_cosine(s, 4, 100, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # step 0 already trains


def test_cosine_decays_to_the_floor_and_stays_there():
    warmup, total, floor = 10, 110, 0.1
    assert warmup_cosine(warmup, warmup, total, floor) == pytest.approx(1.0)
    assert warmup_cosine(warmup + 50, warmup, total, floor) == pytest.approx(floor + (1 - floor) * 0.5)  # midway
    assert warmup_cosine(total, warmup, total, floor) == pytest.approx(floor)
    assert warmup_cosine(total + 500, warmup, total, floor) == pytest.approx(floor)  # past the end: the floor
    decay = [warmup_cosine(s, warmup, total, floor) for s in range(warmup, total + 1)]
    assert decay == sorted(decay, reverse=True)
    for s in (30, 70, 95):  # the closed form
        progress = (s - warmup) / (total - warmup)
        assert warmup_cosine(s, warmup, total, floor) == pytest.approx(
            floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        )


def test_no_warmup_starts_at_the_full_rate():
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_the_scheduler_steps_the_optimizers_learning_rate():
    recipe = load_recipe(REPO / "recipes/tiny.yaml")  # lr 3e-3, warmup 2, 20 steps, floor 0.1
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    scheduler = build_scheduler(optimizer, recipe.train)
    seen = []
    for _ in range(recipe.train.max_steps + 2):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    t = recipe.train
    assert seen == pytest.approx(
        [3e-3 * warmup_cosine(s, t.warmup_steps, t.max_steps, t.min_lr_ratio) for s in range(t.max_steps + 2)],
        rel=1e-12,
    )
    assert scheduler.state_dict()["last_epoch"] == t.max_steps + 2  # what DeepSpeed saves with every checkpoint
