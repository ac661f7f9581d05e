"""The optimizer and learning-rate schedule of both training stages, so they cannot drift apart.

The supervised stage (:mod:`trainer.lora`) and the preference stage (:mod:`trainer.preference`)
each train the LoRA parameters with AdamW (the stage's own learning rate, the config's weight
decay), a linear warm-up over ``config.warmup_ratio`` of the stage's steps and then a cosine
decay to zero. An optimizer step clips the accumulated gradient to ``config.max_grad_norm``
(when above zero), steps the optimizer and the schedule, and clears the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.config import TrainConfig


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor of step ``step`` of ``total``: rising to 1 over ``warmup``
    steps, then a half cosine down to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class StageOptimizer:
    """AdamW and its schedule over one stage's trainable parameters."""

    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    max_grad_norm: float

    def step(self) -> None:
        """Apply the gradients accumulated since the last step, and clear them."""
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def stage_optimizer(
    params: dict[str, torch.nn.Parameter], config: TrainConfig, *, lr: float, total_steps: int
) -> StageOptimizer:
    """The optimizer of a stage of ``total_steps`` optimizer steps at learning rate ``lr``."""
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=config.weight_decay)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, warmup)
    )
    return StageOptimizer(params, optimizer, scheduler, config.max_grad_norm)
