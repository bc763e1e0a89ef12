import pytest
import torch

import bagnet


def randomized(name: str, num_classes: int = 7, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A model in eval mode with non-trivial BatchNorm statistics and biases, so that
    folding BatchNorm is really exercised."""
    model = bagnet.create_model(name, num_classes=num_classes, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        model.fc.bias.copy_(torch.randn(model.fc.bias.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def tiny():
    return randomized("bagnet_tiny", num_classes=7, seed=1)


@pytest.fixture(scope="session")
def slim33():
    return randomized("bagnet33_slim", num_classes=6, seed=2)
