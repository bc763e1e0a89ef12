"""Certified robustness of BagNets to adversarial patches, and a patch attack to test it.

A sticker (every pixel of one p x p square, anywhere in the image) can change only the
patch logits whose q x q windows it touches. :func:`affected_locations` computes which;
:class:`RobustBagNet` defends a BagNet with PatchGuard's robust masking or Clipped BagNet's
bounded evidence, and :func:`certify` proves, per image, that no such sticker can change
the defended prediction. :func:`patch_attack` is a real pixel-space attack (PGD on the
sticker's pixels with a position search) for any classifier.
"""

from ._attack import AttackResult, patch_attack
from ._defense import DEFENSES, Certificate, RobustBagNet, certify
from ._evaluate import RobustnessSummary, plot_certified_accuracy, robustness_records, summarize
from ._geometry import AffectedLocations, affected_locations, patch_pixels

__all__ = [
    "DEFENSES",
    "AffectedLocations",
    "AttackResult",
    "Certificate",
    "RobustBagNet",
    "RobustnessSummary",
    "affected_locations",
    "certify",
    "patch_attack",
    "patch_pixels",
    "plot_certified_accuracy",
    "robustness_records",
    "summarize",
]
