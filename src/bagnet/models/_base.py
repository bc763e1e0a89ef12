"""What a BagNet and its fused inference form share, and the one check of image input.

:class:`BagNetBase` computes the receptive field and patch stride from the modules of a
network whose trunk is a chain of convolutions, and holds the classifier head (applied
per patch, or to the pooled features); :class:`~bagnet.models.BagNet` and
:class:`~bagnet.models.FusedBagNet` derive from it. :func:`check_images` is the input
check of both models and of :class:`~bagnet.explain.EvidenceMapper`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BagNetBase", "check_images", "check_size", "patch_head"]


class BagNetBase(nn.Module):
    """Geometry and head of a bag-of-local-features network.

    Subclasses define ``_trunk_convs()`` (the convolutions along the main path, in order;
    residual paths add nothing to the receptive field of a BagNet) and ``fc``, the linear
    classifier of the patch features (``nn.Identity`` without one).
    """

    fc: nn.Module

    def _trunk_convs(self) -> list[nn.Conv2d]:
        raise NotImplementedError

    @property
    def receptive_field(self) -> int:
        """Side q of the input patch that one output location sees, from the modules."""
        rf, jump = 1, 1
        for conv in self._trunk_convs():
            rf += (conv.kernel_size[0] - 1) * conv.dilation[0] * jump
            jump *= conv.stride[0]
        return rf

    @property
    def patch_stride(self) -> int:
        """Distance in input pixels between neighbouring output locations."""
        jump = 1
        for conv in self._trunk_convs():
            jump *= conv.stride[0]
        return jump

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Output locations (H', W') for an input of the given size."""
        q, s = self.receptive_field, self.patch_stride
        check_size(height, width, q)
        return (height - q) // s + 1, (width - q) // s + 1

    # -- head -------------------------------------------------------------------------

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of a feature map; with ``pre_logits`` the pooled
        features ``[B, num_features]`` (timm's head interface)."""
        x = x.mean(dim=(-2, -1))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The linear classifier applied to every patch feature (``nn.Identity`` without one)."""
        return self.fc


def patch_head(fc: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The linear classifier ``fc`` applied at every location of ``features``."""
    if getattr(fc, "weight", None) is None:
        raise ValueError("this BagNet has no classifier (num_classes=0), so it has no patch evidence; "
                         "use reset_classifier(num_classes)")
    return F.conv2d(features, fc.weight[:, :, None, None], fc.bias)


def check_size(height: int, width: int, receptive_field: int, advice: str | None = None) -> None:
    """Raise a ``ValueError`` if an image of ``height`` x ``width`` is smaller than one patch."""
    q = receptive_field
    if height < q or width < q:
        advice = advice or f"use images of at least {q}x{q}"
        raise ValueError(f"input is {height}x{width} pixels, smaller than the receptive field {q}x{q}; {advice}")


def check_images(
    images: torch.Tensor,
    in_chans: int,
    *,
    allow_single: bool = False,
    floating: bool = False,
    receptive_field: int | None = None,
) -> tuple[torch.Tensor, bool]:
    """Check image input; returns it as a batch ``[B, C, H, W]`` and whether one image was given.

    Args:
        images: ``[B, C, H, W]``, or ``[C, H, W]`` where ``allow_single``.
        in_chans: channels the model takes.
        allow_single: accept one ``[C, H, W]`` image (it gets a batch dimension).
        floating: require a floating-point tensor (normalized images).
        receptive_field: if given, refuse images smaller than one patch.

    Raises:
        ValueError: naming what is wrong with the input.
    """
    single = allow_single and images.dim() == 3
    if single:
        images = images[None]
    if images.dim() != 4:
        expected = "images [B, C, H, W] or [C, H, W]" if allow_single else "a batch of images [B, C, H, W]"
        raise ValueError(f"expected {expected}, got shape {tuple(images.shape)}")
    if images.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {images.shape[1]}")
    if floating and not images.is_floating_point():
        raise ValueError(f"images must be normalized float tensors, got {images.dtype}")
    if receptive_field is not None:
        check_size(images.shape[-2], images.shape[-1], receptive_field)
    return images, single
