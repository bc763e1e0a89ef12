"""Tiny models and image folders for the analysis tests (all on the CPU, 40 px images)."""

import os

import pytest
import torch
import torchvision

from bagnet.analysis import Classifier, LogitCache, load_data
from bagnet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from bagnet.models import BagNet

CLASSES = ("circle", "square", "stripes")
IMG = 40

os.environ.setdefault("BAGNET_PROGRESS", "0")


def _perturb_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and head, so outputs differ between images and classes."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def tiny_bagnet(q: int = 9, seed: int = 0) -> BagNet:
    """A width-1/16 BagNet with receptive field 3 (only the stem's 3x3) or 9 (bagnet_tiny)."""
    torch.manual_seed(seed)
    kernel3 = {3: (0, 0, 0, 0), 9: (1, 1, 0, 0)}[q]
    model = BagNet(layers=(1, 1, 1, 1), kernel3=kernel3, width=0.0625, num_classes=len(CLASSES))
    with torch.no_grad():
        model.fc.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    return _perturb_bn(model, seed)


def tiny_resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _perturb_bn(torchvision.models.resnet18(num_classes=len(CLASSES)), seed)


def classifier(label: str, model: torch.nn.Module) -> Classifier:
    return Classifier(label, model, IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads per
    process made these tiny forward passes 10-100x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    from bagnet.testing import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=3, size=IMG)


@pytest.fixture
def data(folder):
    return load_data(folder / "val", IMG)


@pytest.fixture(scope="session")
def bag9():
    return classifier("B9", tiny_bagnet(9))


@pytest.fixture(scope="session")
def bag3():
    return classifier("B3", tiny_bagnet(3))


@pytest.fixture(scope="session")
def resnet():
    return classifier("R18", tiny_resnet())


@pytest.fixture
def cache(tmp_path):
    return LogitCache(tmp_path / "cache")
