"""bagnet: bag-of-local-features models for PyTorch.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works
surprisingly well on ImageNet", ICLR 2019.
"""

__version__ = "0.1.0"

from .models import BagNet, create_model, list_models, load_model, save_model_file

__all__ = ["BagNet", "__version__", "create_model", "list_models", "load_model", "save_model_file"]
