"""Certified robustness of BagNets to adversarial patches, and a patch attack to test it.

A sticker (every pixel of one p x p square, anywhere in the image) can change only the
patch logits whose q x q windows it touches. :func:`affected_locations` computes which;
:class:`RobustBagNet` defends a BagNet with PatchGuard's robust masking or Clipped BagNet's
bounded evidence (its squashing decided per model by :func:`clip_squashing`), and
:func:`certify` proves, per image, that no such sticker can change the defended
prediction. :func:`patch_attack` is a real pixel-space attack (PGD on the sticker's pixels
with a position search) for any classifier. :class:`PatchCleanser` defends and certifies
any classifier by double masking over the mask set of :func:`mask_set`.
"""

from ._attack import AttackResult, patch_attack
from ._certificate import Certificate
from ._cleanser import CleanserDecision, MaskSet, PatchCleanser, mask_set
from ._defense import DEFENSES, RobustBagNet, certify
from ._evaluate import RobustnessSummary, plot_certified_accuracy, robustness_records, summarize
from ._geometry import AffectedLocations, affected_locations, affected_window, format_share, patch_pixels
from ._squashing import RECOMMENDED_SQUASHING, ClipSquashing, clip_squashing

__all__ = [
    "DEFENSES",
    "RECOMMENDED_SQUASHING",
    "AffectedLocations",
    "AttackResult",
    "Certificate",
    "CleanserDecision",
    "ClipSquashing",
    "MaskSet",
    "PatchCleanser",
    "RobustBagNet",
    "RobustnessSummary",
    "affected_locations",
    "affected_window",
    "certify",
    "clip_squashing",
    "format_share",
    "mask_set",
    "patch_attack",
    "patch_pixels",
    "plot_certified_accuracy",
    "robustness_records",
    "summarize",
]
