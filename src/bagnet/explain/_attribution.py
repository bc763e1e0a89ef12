"""BagNet class evidence as a captum attribution method: ``attribute(inputs, target=...)``.

captum's methods (saliency, integrated gradients, DeepLift, occlusion, ...) share one
verb that returns an attribution of the input's shape. :class:`PatchEvidence` gives a
BagNet's class evidence the same interface, so it drops into code written for captum
(comparisons, masking benchmarks, ``visualize_image_attr``) next to those methods.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import nn

from ..models.bagnet import BagNet
from ._maps import EvidenceMapper

__all__ = ["PatchEvidence"]


class PatchEvidence(Attribution):
    """The class-evidence map of a BagNet as a per-pixel attribution.

    ``attribute(inputs, target=c)`` returns ``[B, C, H, W]`` like ``inputs``; its sum over
    channels is the evidence map (each channel holds ``map / C``):

    * ``stride=1`` (the paper's heatmap): pixel (y, x) holds the logit of class c for the
      q x q patch centred on it, with the normalized image padded by ``pad_value``;
    * ``stride=k``: the same for the patches centred on every k-th pixel, 0 elsewhere;
    * ``stride="native"`` (cheapest): the model's own, unpadded patch logits, each at the
      centre pixel of its patch, 0 elsewhere.

    Every value sits on the centre pixel of its patch, so summing the attribution over a
    region adds up the evidence of the patches centred in it.

    The self-check, like captum's convergence delta, compares the map with the model's
    logits: the patches on the model's native grid lie inside the image, so the map holds
    exactly their evidence on their centres, and the model's logit is their mean. ``delta``
    is that mean, read back from the attribution, minus the logit of the model's own
    forward pass; it is float rounding for a correct map. (At a stride that skips those
    centres there is nothing to compare, and asking for the delta is an error.)

    Args:
        model: a :class:`~bagnet.models.BagNet`; not modified (inference statistics, as in
            ``eval()``, are used even in training mode). Inputs are normalized images.
        stride: 1, another positive integer, or ``"native"``.
        pad_value: padding of the normalized image (not used with ``"native"``).
        dtype: arithmetic of the map (see :func:`~bagnet.explain.evidence_map`); bfloat16
            maps are approximate, and so is then the convergence delta.

    Brendel & Bethge, ICLR 2019, https://openreview.net/forum?id=SkfMWhAqYQ
    """

    def __init__(self, model: nn.Module, *, stride: int | str = 1, pad_value: float = 0.0,
                 dtype: torch.dtype | str | None = None):
        if not isinstance(model, BagNet):
            raise TypeError(f"PatchEvidence needs a bagnet.models.BagNet, got {type(model).__name__}")
        if stride != "native" and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride must be a positive integer or 'native', got {stride!r}")
        if model.receptive_field % 2 == 0:
            raise ValueError(f"receptive field {model.receptive_field} is even, so no pixel is a patch centre")
        super().__init__(model)
        self.model = model
        self.stride = stride
        self.pad_value = pad_value
        self.dtype = dtype

    def has_convergence_delta(self) -> bool:
        return True

    @log_usage()
    def attribute(
        self,
        inputs: torch.Tensor | tuple[torch.Tensor],
        target: int | Sequence[int] | torch.Tensor | None = None,
        return_convergence_delta: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Evidence of class ``target`` at every pixel, ``[B, C, H, W]``.

        Args:
            inputs: normalized images ``[B, C, H, W]`` (or a 1-tuple of them).
            target: one class for all images, or one per image (list or ``[B]`` tensor).
            return_convergence_delta: also return the self-check ``delta`` ``[B]``.

        Returns:
            The attribution, and with ``return_convergence_delta`` the tuple
            ``(attribution, delta)``.
        """
        x = _single_input(inputs)
        targets = _targets(target, x.shape[0], self.model.num_classes, x.device)
        # Folded anew on every call, so a model trained in between is never explained stale.
        pad = None if self.stride == "native" else self.pad_value
        mapper = EvidenceMapper(self.model, stride=self.stride, pad_value=pad, dtype=self.dtype)
        classes, position = targets.unique(return_inverse=True)
        with torch.no_grad():
            maps = mapper(x.detach(), classes.to(mapper.device))  # [B, K, h, w]
            chosen = maps[torch.arange(len(targets), device=maps.device), position.to(maps.device)]
            pixels = self._on_pixels(chosen, x.shape[-2:])
        attribution = (pixels.to(x.device, x.dtype) / x.shape[1])[:, None].expand_as(x).clone()
        if return_convergence_delta:
            return attribution, self.compute_convergence_delta(attribution, x, targets)
        return attribution

    def compute_convergence_delta(
        self, attributions: torch.Tensor, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor
    ) -> torch.Tensor:
        """Mean evidence of the native patches, read from ``attributions``, minus the model's
        logit of ``target`` (from its ordinary forward pass in inference mode), ``[B]``."""
        x = _single_input(inputs)
        targets = _targets(target, x.shape[0], self.model.num_classes, x.device)
        q, s = self.model.receptive_field, self.model.patch_stride
        gh, gw = self.model.patch_grid(*x.shape[-2:])
        o = (q - 1) // 2
        if self.stride != "native" and (o % self.stride or s % self.stride):
            raise ValueError(f"a map at stride {self.stride} skips the centres of the model's native patches "
                             f"(every {s} px from {o}), so it cannot be checked; use stride 1 or 'native'")
        centres = attributions.sum(1)[:, o : o + s * (gh - 1) + 1 : s, o : o + s * (gw - 1) + 1 : s]
        logits = _inference_logits(self.model, x.detach())
        return centres.mean((-2, -1)) - logits.gather(1, targets[:, None].to(logits.device))[:, 0].to(centres)

    def _on_pixels(self, maps: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """``[B, h, w]`` maps placed on the ``[B, H, W]`` pixel grid, each value on the
        centre pixel of its patch."""
        if self.stride == 1:
            return maps  # padded stride-1 maps are the pixel grid
        if self.stride == "native":
            step, first = self.model.patch_stride, (self.model.receptive_field - 1) // 2
        else:
            step, first = self.stride, 0  # padded: entry (i, j) is centred on (k*i, k*j)
        b, h, w = maps.shape
        out = maps.new_zeros(b, *size)
        out[:, first : first + step * (h - 1) + 1 : step, first : first + step * (w - 1) + 1 : step] = maps
        return out


def _single_input(inputs) -> torch.Tensor:
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ValueError(f"PatchEvidence takes one input tensor (the images), got {len(inputs)}")
        inputs = inputs[0]
    if not torch.is_tensor(inputs) or inputs.dim() != 4:
        raise ValueError(f"inputs must be normalized images [B, C, H, W], got {getattr(inputs, 'shape', type(inputs))}")
    return inputs


def _targets(target, batch: int, num_classes: int, device) -> torch.Tensor:
    if target is None:
        raise ValueError("target is required: the class whose evidence to attribute (one, or one per image)")
    if isinstance(target, int) or (torch.is_tensor(target) and target.dim() == 0):
        t = torch.full((batch,), operator.index(target), dtype=torch.long)
    else:
        t = torch.as_tensor(target).reshape(-1)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"target must hold class indices (integers), got {t.dtype}")
        if t.numel() != batch:
            raise ValueError(f"target has {t.numel()} entries for {batch} images; give one class or one per image")
        t = t.long()
    if t.numel() and not bool(((t >= 0) & (t < num_classes)).all()):
        raise ValueError(f"target {t.tolist()} is out of range for a model with {num_classes} classes")
    return t.to(device)


def _inference_logits(model: BagNet, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with inference statistics, leaving the model's mode as it was."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)
