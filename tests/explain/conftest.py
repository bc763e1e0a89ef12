import pytest
import torch

import bagnet
from bagnet.testing.models import randomize_batchnorm


def randomized(name: str, num_classes: int = 7, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A registered model in eval mode with random BatchNorm statistics and biases."""
    return randomize_batchnorm(bagnet.create_model(name, num_classes=num_classes, **kwargs), seed)


@pytest.fixture(scope="session")
def tiny():
    return randomized("bagnet_tiny", num_classes=7, seed=1)


@pytest.fixture(scope="session")
def slim33():
    return randomized("bagnet33_slim", num_classes=6, seed=2)
