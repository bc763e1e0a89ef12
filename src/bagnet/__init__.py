"""bagnet: bag-of-local-features models for PyTorch.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works
surprisingly well on ImageNet", ICLR 2019.
"""

__version__ = "0.1.0"

from .models import BagNet, create_model, list_models, load_model, push_to_hub, save_model_file, save_pretrained
from .models._timm import install_timm_hook as _install_timm_hook

_install_timm_hook()  # timm.create_model("bagnet33") works once timm is imported (if installed)

__all__ = [
    "BagNet",
    "__version__",
    "create_model",
    "list_models",
    "load_model",
    "push_to_hub",
    "save_model_file",
    "save_pretrained",
]
