"""Optimizer, learning-rate schedule and weight EMA for training BagNets."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only, not on norm parameters or biases.

    Decaying BatchNorm scales and biases only fights the normalization (as in
    torchvision's ``--norm-weight-decay 0``).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=False)


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier on ``cfg.lr`` at optimizer step ``step`` (0-based).

    Linear warmup from ``lr / warmup_steps`` to ``lr``, then a cosine decay to
    ``cfg.min_lr`` at the last step, or a decay by ``gamma`` every ``step_size`` epochs.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    span = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / span, 1.0)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step ``LambdaLR`` for ``cfg``'s warmup and schedule."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg, steps_per_epoch)
    )


class ModelEma(AveragedModel):
    """Exponential moving average of the weights and BatchNorm statistics.

    ``steps`` counts optimizer steps; it is a buffer so that a resumed run updates the
    average on the same steps as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None):
        super().__init__(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))
