"""Training through a defence's aggregation: the image logit is the mean of squashed patch logits.

Clipped BagNet (Zhang, Yuan, Mu and Wagner, "Clipped BagNet: Defending Against Sticker
Attacks with Clipped Bag-of-features", 2020) certifies BagNets through clipped evidence and
reports models trained through it too: the model is then optimised for the logits the
defence computes, and can learn to spread its evidence over many patches instead of
relying on a few large patch logits that the squashing cuts off.
"""

from __future__ import annotations

import torch
from torch import nn

from ..robust import RobustBagNet

__all__ = ["ClippedEvidence"]


class ClippedEvidence(nn.Module):
    """A BagNet whose logits are the mean over locations of ``tanh(scale * patch logit + shift)``.

    The defended logits of ``RobustBagNet(model, defense="clip", tanh_scale=scale,
    tanh_shift=shift)``, which are what ``bagnet certify --defense clip`` certifies; no
    patch size is involved (the clip defence averages every location).

    Args:
        model: a BagNet with ``patch_logits``; it stays the trained (and saved) module.
        scale, shift: the squashing.
    """

    def __init__(self, model: nn.Module, scale: float, shift: float):
        super().__init__()
        # The squashing comes from the certifying module itself, so training and
        # certification cannot drift apart.
        self.defense = RobustBagNet(model, defense="clip", tanh_scale=scale, tanh_shift=shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 for the squashing and the mean: under bf16 autocast the 144-term mean of
        # values near +-1 would lose the small differences the loss is made of.
        return self.defense.squash(self.defense.model.patch_logits(x).float()).mean((2, 3))
