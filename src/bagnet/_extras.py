"""Optional dependencies, imported where a feature needs them.

The core (models, weights, evidence maps, top patches as data) needs only torch,
torchvision, numpy and pillow. Figures, the demo and the web app, training logs and the
paper's analyses need more; each names the extra that installs it when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]

# import name -> (distribution, extra that installs it)
_PACKAGES = {
    "matplotlib": ("matplotlib", "viz"),
    "skimage": ("scikit-image", "app"),
    "captum": ("captum", "analysis"),
    "tensorboard": ("tensorboard", "train"),
}


class MissingExtraError(ImportError):
    """An optional dependency a feature needs is not installed; the message says how to get it."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (a key of the table above, or a submodule of one) for ``feature``.

    Raises:
        MissingExtraError: it is not installed; one line naming the ``pip install`` to run.
    """
    top = module.split(".")[0]
    dist, extra = _PACKAGES[top]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there, something it needs is broken: torch's message says what
        raise MissingExtraError(
            f"{dist} is not installed ({feature} needs it): pip install 'bagnet[{extra}]' (or 'bagnet[all]')"
        ) from None
