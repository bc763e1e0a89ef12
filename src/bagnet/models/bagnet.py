"""BagNets: ResNet-50 variants whose outputs each see one q x q image patch.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works
surprisingly well on ImageNet", ICLR 2019. https://openreview.net/forum?id=SkfMWhAqYQ

Layout of this file: the bottleneck block, the model class, the private builder,
the registered entry points, and the slim presets used for CPU experiments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._base import BagNetBase, check_images, patch_head
from ._fuse import FusedBagNet, fuse
from ._registry import register_model

__all__ = ["BagNet", "Bottleneck"]


def _crop_to(identity: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Crop a residual that is spatially larger than the block output at bottom/right.

    Unpadded 3x3 convolutions shrink the main path; the published weights were trained
    with the residual cropped at the bottom and right, which keeps output location (i, j)
    aligned with the top-left corner of its receptive field.
    """
    dh = identity.shape[-2] - out.shape[-2]
    dw = identity.shape[-1] - out.shape[-1]
    if dh or dw:
        identity = identity[..., : identity.shape[-2] - dh, : identity.shape[-1] - dw]
    return identity


class Bottleneck(nn.Module):
    """ResNet bottleneck with an unpadded middle convolution of size 1 or 3."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        kernel_size: int = 1,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=kernel_size, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + _crop_to(identity, out)
        return self.relu(out)


class BagNet(BagNetBase):
    """A bag-of-local-features network.

    Every location of the final feature map depends on one ``receptive_field`` x
    ``receptive_field`` input patch. ``patch_logits`` applies the linear classifier to
    each location ("class evidence"); the image logits are the spatial mean of that map.

    Args:
        layers: bottleneck blocks per stage.
        kernel3: per stage, how many leading blocks have a 3x3 (instead of 1x1) middle conv.
        strides: stride of each stage's first middle conv.
        num_classes: classifier outputs; 0 leaves out the classifier, so that ``forward``
            returns the pooled features (timm's convention for feature extractors).
        in_chans: input channels.
        width: multiplier on every channel count (1.0 is the published model).

    .. note::
        The published model uses BatchNorm momentum 0.001 on the stem; we use PyTorch's
        default 0.1 everywhere because it trains faster from scratch. Momentum is not part
        of the state dict, so the published weights load unchanged.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        kernel3: Sequence[int] = (1, 1, 1, 1),
        strides: Sequence[int] = (2, 2, 2, 1),
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
    ):
        super().__init__()
        if not (len(layers) == len(kernel3) == len(strides) == 4):
            raise ValueError("layers, kernel3 and strides need one entry per stage (4 stages)")
        if any(n < 1 for n in layers):
            raise ValueError(f"every stage needs at least one block, got layers={tuple(layers)}")
        if any(not 0 <= k <= n for k, n in zip(kernel3, layers)):
            raise ValueError(f"kernel3={tuple(kernel3)} must lie between 0 and the blocks per stage {tuple(layers)}")
        if num_classes < 0 or in_chans < 1 or width <= 0:
            raise ValueError("in_chans and width must be positive, num_classes positive or 0 (no classifier)")
        self.layers_cfg = tuple(int(n) for n in layers)
        self.kernel3_cfg = tuple(int(k) for k in kernel3)
        self.strides_cfg = tuple(int(s) for s in strides)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.width = width

        stem = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_chans, stem, kernel_size=1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        inplanes = stem
        for i, (n, k3, s) in enumerate(zip(self.layers_cfg, self.kernel3_cfg, self.strides_cfg)):
            planes = _scaled(64 * 2**i, width)
            stage, inplanes = _make_stage(inplanes, planes, n, s, k3)
            self.add_module(f"layer{i + 1}", stage)
        self.num_features = inplanes
        self.fc = _classifier(inplanes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # -- geometry (receptive_field, patch_stride, patch_grid: see BagNetBase) -----------

    def _trunk_convs(self) -> list[nn.Conv2d]:
        """Convolutions along the main path, in order (the residual path adds nothing)."""
        convs = [self.conv1, self.conv2]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                convs += [block.conv1, block.conv2, block.conv3]
        return convs

    # -- forward ----------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, num_features, H', W']``; location (i, j) sees pixels
        ``[s*i, s*i + q) x [s*j, s*j + q)`` with ``s = patch_stride``, ``q = receptive_field``."""
        x, _ = check_images(x, self.in_chans, receptive_field=self.receptive_field)
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class evidence of every patch, ``[B, num_classes, H', W']``."""
        return patch_head(self.fc, self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The classifier is linear, so averaging features first equals averaging patch logits.
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a new one with ``num_classes`` outputs (0: none).

        ``global_pool`` is accepted for timm's interface; a BagNet's pool is the mean of its
        patch evidence, so only ``"avg"`` (or ``None``) is valid.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"a BagNet averages its patch evidence; global_pool {global_pool!r} is not supported")
        if num_classes < 0:
            raise ValueError(f"num_classes must be positive or 0 (no classifier), got {num_classes}")
        w = self.fc.weight if isinstance(self.fc, nn.Linear) else self.conv1.weight
        self.fc = _classifier(self.num_features, num_classes).to(device=w.device, dtype=w.dtype)
        self.num_classes = num_classes
        if getattr(self, "model_args", None) is not None:
            self.model_args = {**self.model_args, "num_classes": num_classes}
        cfg = getattr(self, "pretrained_cfg", None)
        if cfg is not None:  # class names of the old head would now be wrong
            self.pretrained_cfg = {**cfg, "classes": None, "num_classes": num_classes}
            for key in ("class_names", "label_names"):
                self.pretrained_cfg.pop(key, None)

    def save_pretrained(self, directory: str | os.PathLike, meta: dict | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` (no pickle); load
        it with ``bagnet.create_model(directory)``. See :func:`bagnet.save_pretrained`."""
        from ._pretrained import save_pretrained

        return save_pretrained(self, directory, meta)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload this model as the Hugging Face model repo ``repo_id``; load it with
        ``bagnet.create_model("hf-hub:" + repo_id)``. See :func:`bagnet.push_to_hub`."""
        from ._pretrained import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def fuse(self) -> FusedBagNet:
        """An inference-only copy with BatchNorm folded and the stem merged into one conv.

        This model is left unchanged (its state dict stays the published format). See
        :func:`bagnet.models.fuse` and :func:`bagnet.models.prepare_for_inference`.
        """
        return fuse(self)

    def extra_repr(self) -> str:
        return f"receptive_field={self.receptive_field}, patch_stride={self.patch_stride}"


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _make_stage(inplanes: int, planes: int, blocks: int, stride: int, kernel3: int) -> tuple[nn.Sequential, int]:
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out),
        )
    blocks_ = [Bottleneck(inplanes, planes, stride, downsample, kernel_size=3 if kernel3 > 0 else 1)]
    for i in range(1, blocks):
        blocks_.append(Bottleneck(out, planes, kernel_size=3 if i < kernel3 else 1))
    return nn.Sequential(*blocks_), out


def _create_bagnet(**kwargs) -> BagNet:
    return BagNet(**kwargs)


def kernel3_for(receptive_field: int, layers: Sequence[int] = (3, 4, 6, 3)) -> tuple[int, ...]:
    """The ``kernel3`` setting that gives receptive field q with the published strides.

    Follows the published pattern: q = 3 (no 3x3 block), 5, 9, 17, 33 (a 3x3 first block
    in stages 1, 1-2, 1-3, 1-4). Each further 3x3 block in stage 4, then in stage 3, runs
    at stride 8 and adds 16: q = 49, 65, ...
    """
    firsts = {3: 0, 5: 1, 9: 2, 17: 3}
    if receptive_field in firsts:
        n = firsts[receptive_field]
        return tuple(1 if i < n else 0 for i in range(4))
    extra, rem = divmod(receptive_field - 33, 16)
    kernel3 = [1, 1, 1, 1]
    for stage in (3, 2):
        add = min(max(extra, 0), layers[stage] - 1)
        kernel3[stage] += add
        extra -= add
    if receptive_field < 33 or rem or extra:
        raise ValueError(
            f"receptive field {receptive_field} is not reachable with layers={tuple(layers)}; "
            "use 3, 5, 9, 17, 33, 49, 65, ... (33 + 16k)"
        )
    return tuple(kernel3)


# -- registered entry points -----------------------------------------------------------


@register_model()
def bagnet9(**kwargs: Any) -> BagNet:
    """BagNet-9 as published: 9x9 patches, stride 8 (the authors' ``bagnet8`` weights)."""
    return _create_bagnet(kernel3=(1, 1, 0, 0), **kwargs)


@register_model()
def bagnet17(**kwargs: Any) -> BagNet:
    """BagNet-17 as published: 17x17 patches, stride 8 (the authors' ``bagnet16`` weights)."""
    return _create_bagnet(kernel3=(1, 1, 1, 0), **kwargs)


@register_model()
def bagnet33(**kwargs: Any) -> BagNet:
    """BagNet-33 as published: 33x33 patches, stride 8 (the authors' ``bagnet32`` weights)."""
    return _create_bagnet(kernel3=(1, 1, 1, 1), **kwargs)


# Slim presets: one block per stage and a quarter of the channels (512 features), so an
# Imagenette epoch at 112 px takes minutes on a 2-core CPU. Receptive fields and the
# patch stride are those of the published models.
_SLIM = dict(layers=(1, 1, 1, 1), width=0.25)


@register_model()
def bagnet9_slim(**kwargs: Any) -> BagNet:
    """Slim BagNet-9 (one block per stage, width 0.25) for CPU experiments."""
    return _create_bagnet(**{**_SLIM, "kernel3": (1, 1, 0, 0), **kwargs})


@register_model()
def bagnet17_slim(**kwargs: Any) -> BagNet:
    """Slim BagNet-17 (one block per stage, width 0.25) for CPU experiments."""
    return _create_bagnet(**{**_SLIM, "kernel3": (1, 1, 1, 0), **kwargs})


@register_model()
def bagnet33_slim(**kwargs: Any) -> BagNet:
    """Slim BagNet-33 (one block per stage, width 0.25) for CPU experiments."""
    return _create_bagnet(**{**_SLIM, "kernel3": (1, 1, 1, 1), **kwargs})


# Quarter-width presets: all 16 blocks of the published models, a quarter of the channels
# (512 features). The q-family at one recipe: they differ from each other only in kernel3.
_W25 = dict(width=0.25)


@register_model()
def bagnet9_w25(**kwargs: Any) -> BagNet:
    """BagNet-9 at a quarter of the published width (all 16 blocks, 512 features)."""
    return _create_bagnet(**{**_W25, "kernel3": (1, 1, 0, 0), **kwargs})


@register_model()
def bagnet17_w25(**kwargs: Any) -> BagNet:
    """BagNet-17 at a quarter of the published width (all 16 blocks, 512 features)."""
    return _create_bagnet(**{**_W25, "kernel3": (1, 1, 1, 0), **kwargs})


@register_model()
def bagnet33_w25(**kwargs: Any) -> BagNet:
    """BagNet-33 at a quarter of the published width (all 16 blocks, 512 features, 1.03M
    parameters with 10 classes): the depth of the published model at a cost a CPU can train."""
    return _create_bagnet(**{**_W25, "kernel3": (1, 1, 1, 1), **kwargs})


@register_model()
def bagnet_tiny(**kwargs: Any) -> BagNet:
    """Tiny BagNet-9 (width 1/16) for tests and smoke runs; not meant to be accurate."""
    return _create_bagnet(**{"layers": (1, 1, 1, 1), "width": 0.0625, "kernel3": (1, 1, 0, 0), **kwargs})
