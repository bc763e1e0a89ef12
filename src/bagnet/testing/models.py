"""Models for tests: registered BagNets with non-trivial BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["randomize_batchnorm"]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (and the
    classifier a random bias), in place, so that folding or fusing BatchNorm is really
    exercised (fresh models have the identity statistics). Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        fc = getattr(model, "fc", None)
        if isinstance(fc, nn.Linear) and fc.bias is not None:
            fc.bias.copy_(torch.randn(fc.bias.shape, generator=g))
    return model.eval()
