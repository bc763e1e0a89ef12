"""Class-evidence heatmaps of BagNets: exact full-resolution maps in one pass, the most
predictive patches, and the paper's figures.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works surprisingly
well on ImageNet", ICLR 2019. https://openreview.net/forum?id=SkfMWhAqYQ
"""

from ._cost import MapCostError
from ._dataset import ClassPatches, class_patches, plot_class_patches
from ._explain import Explanation, Prediction, explain
from ._figures import (
    colour_scale,
    image_edges,
    plot_evidence_panels,
    plot_heatmap,
    plot_image,
    plot_misclassification,
    plot_patches,
)
from ._images import preprocess
from ._maps import EvidenceMapper, MapGeometry, evidence_map, map_geometry
from ._patches import Patch, top_patches
from ._reference import evidence_map_reference
from ._unknown import UNKNOWN_METHODS, UnknownCalibration, UnknownCheck, calibrate_unknown, familiarity, unknown_check

__all__ = [
    "UNKNOWN_METHODS",
    "ClassPatches",
    "EvidenceMapper",
    "Explanation",
    "MapCostError",
    "MapGeometry",
    "Patch",
    "PatchEvidence",
    "Prediction",
    "UnknownCalibration",
    "UnknownCheck",
    "calibrate_unknown",
    "class_patches",
    "colour_scale",
    "evidence_map",
    "evidence_map_reference",
    "explain",
    "familiarity",
    "image_edges",
    "map_geometry",
    "plot_class_patches",
    "plot_evidence_panels",
    "plot_heatmap",
    "plot_image",
    "plot_misclassification",
    "plot_patches",
    "preprocess",
    "top_patches",
    "unknown_check",
]


def __getattr__(name: str):
    # captum (behind PatchEvidence) takes about a second to import; only pay it when used.
    if name == "PatchEvidence":
        from ._attribution import PatchEvidence

        return PatchEvidence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
