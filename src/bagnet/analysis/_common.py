"""The names this module held before it was split into ``_specs``, ``_classifier``,
``_data``, ``_predictions``, ``_cells``, ``_stats`` and ``_output``; kept so that code
written against ``bagnet.analysis._common`` still imports."""

from .._io import atomic_path, write_text
from ._cells import cell_sums, channel_mean
from ._classifier import Classifier, build_model, class_columns, load_classifier, make_classifier
from ._data import EvalData, find_class_index, load_data
from ._output import new_figure, panel_grid, progress, read_json, save_figure, slug, write_json, write_result
from ._predictions import LogitCache, Predictions, aligned_predictions, predictions
from ._specs import ModelSpec, parse_model_spec
from ._stats import nan_if_none, pearson

__all__ = [
    "Classifier",
    "EvalData",
    "LogitCache",
    "ModelSpec",
    "Predictions",
    "aligned_predictions",
    "atomic_path",
    "build_model",
    "cell_sums",
    "channel_mean",
    "class_columns",
    "find_class_index",
    "load_classifier",
    "load_data",
    "make_classifier",
    "nan_if_none",
    "new_figure",
    "panel_grid",
    "parse_model_spec",
    "pearson",
    "predictions",
    "progress",
    "read_json",
    "save_figure",
    "slug",
    "write_json",
    "write_result",
    "write_text",
]
