"""The optimizer both training stages share (``trainer.optim``)."""

from __future__ import annotations

import itertools

import pytest
import torch

from trainer.config import TrainConfig
from trainer.optim import cosine_with_warmup, stage_optimizer


def test_the_schedule_warms_up_then_decays_to_zero() -> None:
    total, warmup = 20, 4
    factor = cosine_with_warmup(total, warmup)
    rising = [factor(s) for s in range(warmup + 1)]
    falling = [factor(s) for s in range(warmup, total + 1)]
    assert all(a < b for a, b in itertools.pairwise(rising))
    assert factor(warmup) == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(falling))
    assert factor(total) == pytest.approx(0.0, abs=1e-12)
    assert factor(total + 5) == pytest.approx(0.0, abs=1e-12)


def test_a_step_clips_updates_follows_the_schedule_and_clears_the_gradients() -> None:
    config = TrainConfig(task="draft", warmup_ratio=0.25, weight_decay=0.01, max_grad_norm=1.0)
    weight = torch.nn.Parameter(torch.zeros(4))
    opt = stage_optimizer({"w": weight}, config, lr=0.1, total_steps=8)
    (group,) = opt.optimizer.param_groups
    assert group["weight_decay"] == 0.01
    factor = cosine_with_warmup(8, 2)
    assert group["lr"] == pytest.approx(0.1 * factor(0))
    for step in range(1, 4):
        weight.grad = torch.full((4,), 10.0)  # norm 20, clipped to 1
        opt.step()
        assert weight.grad is None
        assert group["lr"] == pytest.approx(0.1 * factor(step))
    assert bool((weight < 0).all())


def _train(grads: list[list[float]], max_grad_norm: float) -> torch.Tensor:
    config = TrainConfig(task="draft", max_grad_norm=max_grad_norm, warmup_ratio=0.0)
    weight = torch.nn.Parameter(torch.zeros(2))
    opt = stage_optimizer({"w": weight}, config, lr=0.1, total_steps=4)
    for grad in grads:
        weight.grad = torch.tensor(grad)
        opt.step()
    return weight.detach().clone()


def test_the_gradient_is_clipped_to_max_grad_norm_before_the_update() -> None:
    raw = [[30.0, 40.0], [3.0, 4.0]]  # norms 50 and 5
    clipped = _train(raw, max_grad_norm=1.0)
    assert torch.allclose(clipped, _train([[0.6, 0.8], [0.6, 0.8]], max_grad_norm=0.0))
    assert not torch.allclose(clipped, _train(raw, max_grad_norm=0.0))
