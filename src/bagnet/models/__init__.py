"""The BagNet family, its registry and weight loading."""

from . import bagnet as _bagnet  # noqa: F401  (registers the models)
from ._factory import DEFAULT_MODEL, UnnamedWeightsError, create_model, default_model, load_model
from ._fuse import INFERENCE_MODES, FusedBagNet, fuse, prepare_for_inference, top1_agreement
from ._pretrained import push_to_hub, save_pretrained
from ._registry import list_models, register_model
from ._weights import CheckpointMismatchError, clean_state_dict, load_state_dict_strict, save_model_file
from .bagnet import BagNet, Bottleneck, kernel3_for

__all__ = [
    "DEFAULT_MODEL",
    "INFERENCE_MODES",
    "BagNet",
    "Bottleneck",
    "CheckpointMismatchError",
    "FusedBagNet",
    "UnnamedWeightsError",
    "clean_state_dict",
    "create_model",
    "default_model",
    "fuse",
    "kernel3_for",
    "list_models",
    "load_model",
    "load_state_dict_strict",
    "prepare_for_inference",
    "push_to_hub",
    "register_model",
    "save_model_file",
    "save_pretrained",
    "top1_agreement",
]
