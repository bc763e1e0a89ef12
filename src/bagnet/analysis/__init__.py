"""The paper's analyses, one module per experiment (Brendel & Bethge, ICLR 2019).

Every experiment is a function that returns plain data (a dataclass or list of them)
and a ``write_*`` function that saves it as JSON plus a PNG figure; ``bagnet analyze``
runs them from the command line and :func:`run_all` from one config file into an HTML
report. Models are :class:`Classifier` objects (a network, its normalization and the
output column of each class of the data), built by :func:`load_classifier` from a
:class:`ModelSpec`; images come from :func:`load_data`; model outputs are computed
once per model and image and kept in a :class:`LogitCache`.
"""

from ._captum import METHODS, attribution_cells, bagnet_occlusion, gradcam_layer, gradcam_map, upsample_to_pixels
from ._captum_ready import UnsupportedModelError, captum_ready, check_lrp_supported, traceable_bagnet
from ._classifier import Classifier, load_classifier
from ._data import EvalData, load_data
from ._predictions import LogitCache, Predictions, predictions
from ._specs import ModelSpec, parse_model_spec
from ._stats import Bootstrap, mcnemar_exact, paired_bootstrap, pearson
from .accuracy import AccuracyResult, ModelAccuracy, accuracy, accuracy_comparisons, write_accuracy
from .error_distribution import ErrorDistribution, error_distribution, write_error_distribution
from .interactions import InteractionResult, choose_patches, interactions, mask_patches, write_interactions
from .logit_correlation import LogitCorrelation, logit_correlation, write_logit_correlation
from .patch_size import PatchSizeResult, patch_size, write_patch_size
from .spatial_sensitivity import (
    SpatialSensitivity,
    bagnet_cells,
    mask_top_cells,
    masking_scores,
    spatial_sensitivity,
    write_spatial_sensitivity,
)

__all__ = [
    "METHODS",
    "AccuracyResult",
    "Bootstrap",
    "Classifier",
    "ErrorDistribution",
    "EvalData",
    "InteractionResult",
    "LogitCache",
    "LogitCorrelation",
    "ModelAccuracy",
    "ModelSpec",
    "PatchSizeResult",
    "Predictions",
    "SpatialSensitivity",
    "UnsupportedModelError",
    "accuracy",
    "accuracy_comparisons",
    "attribution_cells",
    "bagnet_cells",
    "bagnet_occlusion",
    "captum_ready",
    "check_lrp_supported",
    "choose_patches",
    "error_distribution",
    "gradcam_layer",
    "gradcam_map",
    "interactions",
    "load_classifier",
    "load_data",
    "logit_correlation",
    "mask_patches",
    "mask_top_cells",
    "masking_scores",
    "mcnemar_exact",
    "paired_bootstrap",
    "parse_model_spec",
    "patch_size",
    "pearson",
    "predictions",
    "spatial_sensitivity",
    "traceable_bagnet",
    "upsample_to_pixels",
    "write_accuracy",
    "write_error_distribution",
    "write_interactions",
    "write_logit_correlation",
    "write_patch_size",
    "write_spatial_sensitivity",
]
