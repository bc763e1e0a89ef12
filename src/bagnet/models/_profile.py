"""Model size and cost without running real arithmetic (shape inference on the meta device)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def count_macs(model: nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image.

    The model is copied to the ``meta`` device, so this costs no arithmetic and works for
    any ``nn.Module`` (BagNets and torchvision classifiers alike).
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, in_chans, h, w, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())
