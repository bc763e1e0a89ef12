"""Class-evidence maps of a BagNet at full image resolution, computed in one pass.

The paper defines the heatmap patch by patch (Brendel & Bethge, ICLR 2019,
https://openreview.net/forum?id=SkfMWhAqYQ): pad the normalized image by (q-1)/2 on
every side; the value of class c at pixel (y, x) is logit c of the model applied to the
q x q crop centred at (y, x). :func:`evidence_map` computes exactly that without
evaluating any crop twice:

* Every strided convolution runs at stride 1 instead, and the feature map is then split
  into its ``s x s`` polyphase components, which are stacked along the batch ("space to
  batch", the algorithme a trous of dilated convolutions). Later layers therefore see,
  in each component, the same neighbours a dilated convolution would give them, but run
  as ordinary dense convolutions. At the end the components are interleaved again.
* BatchNorm is folded into the convolutions (inference statistics), the 1x1 stem
  convolution into the 3x3 one after it, and the classifier is applied as one matrix
  product for the requested classes only.
* Large inputs are cut into overlapping tiles; each tile yields an exact, disjoint block
  of the output, so the stitched map is the same as an untiled one.
* In bfloat16 or float16 (``dtype=``) the convolutions and the classifier's products run
  in that type (weights folded in float64, then rounded once), summed in float32 inside
  the kernels; the classifier's bias, the map and the logits' spatial mean are float32.
  See docs/precision.md.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._device import check_dtype
from .._text import plural
from ..models import fuse
from ..models._base import check_images, check_size
from ..models.bagnet import BagNet
from ._phases import interleave_index, space_to_batch

__all__ = ["EvidenceMapper", "MapGeometry", "evidence_map", "map_geometry", "resolve_classes"]

_log = logging.getLogger(__name__)

# Peak memory of the intermediate activations that one forward pass may use unless the
# caller sets ``max_memory``: 224 x 224 with BagNet-33 and all classes fits in one pass.
DEFAULT_MAX_MEMORY = 3 * 2**30


@dataclass(frozen=True)
class MapGeometry:
    """Where the values of an evidence map sit in the image.

    Map entry ``(i, j)`` is the evidence of the ``patch_size`` x ``patch_size`` image
    patch whose top-left corner is at pixel ``(stride * i - offset, stride * j - offset)``
    (``offset`` is ``(q - 1) // 2`` for padded maps, so the patch is centred on
    ``(stride * i, stride * j)``; 0 for unpadded ones).
    """

    patch_size: int
    stride: int
    offset: int
    image_size: tuple[int, int]

    @property
    def map_size(self) -> tuple[int, int]:
        h, w = self.image_size
        q, s, o = self.patch_size, self.stride, self.offset
        return (h + 2 * o - q) // s + 1, (w + 2 * o - q) // s + 1


def map_geometry(
    model: nn.Module, image_size: tuple[int, int], stride: int | str = 1, padded: bool = True
) -> MapGeometry:
    """Geometry of ``evidence_map(model, images, stride=stride)`` for images of ``image_size``."""
    return _geometry(int(model.receptive_field), _resolve_stride(model, stride), padded, image_size)


def _geometry(q: int, stride: int, padded: bool, image_size: tuple[int, int]) -> MapGeometry:
    if padded and q % 2 == 0:
        raise ValueError(f"receptive field {q} is even, so no pixel is a patch centre; use pad_value=None")
    return MapGeometry(q, stride, (q - 1) // 2 if padded else 0, (int(image_size[0]), int(image_size[1])))


def resolve_classes(classes: int | Sequence[int] | torch.Tensor | None, num_classes: int) -> list[int]:
    """Class indices as a list of ints, checked against ``num_classes``."""
    if classes is None:
        return list(range(num_classes))
    if isinstance(classes, torch.Tensor):
        classes = classes.reshape(-1).tolist()
    elif isinstance(classes, int):
        classes = [classes]
    out = []
    for c in classes:
        if isinstance(c, bool) or not hasattr(c, "__index__"):  # ints, numpy ints; not floats
            raise TypeError(f"class indices must be integers, got {c!r}")
        c = operator.index(c)
        if not 0 <= c < num_classes:
            raise ValueError(f"class index {c} is out of range for a model with {plural(num_classes, 'class')}")
        out.append(c)
    if not out:
        raise ValueError("classes is empty; pass None for all classes")
    return out


def _resolve_stride(model: nn.Module, stride: int | str) -> int:
    if stride == "native":
        return int(model.patch_stride)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer or 'native', got {stride!r}")
    return stride


# -- the folded, phase-decomposed network ------------------------------------------------


@dataclass
class _Conv:
    weight: torch.Tensor
    bias: torch.Tensor


@dataclass
class _Block:
    conv1: _Conv
    conv2: _Conv
    conv3: _Conv
    downsample: _Conv | None
    stride: int  # of the middle convolution and the downsample, in the original model


@dataclass(frozen=True)
class _Step:
    """How one block runs for a given output stride."""

    stride: int  # stride of its strided convolutions here (1 where the original is decomposed)
    dilation: int  # of its middle convolution (layout "dilated")
    split: int  # 1, or s: stack the s x s polyphase components after the block


def _take(conv: nn.Conv2d, where: str, dtype, device) -> _Conv:
    """Weights of a folded convolution, checked to be one this rewrite handles."""
    if conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f"{where}: only unpadded, undilated, ungrouped convolutions are supported")
    if conv.stride[0] != conv.stride[1] or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError(f"{where}: only square kernels and strides are supported")
    w = conv.weight.detach().to(device, dtype).contiguous(memory_format=torch.channels_last)
    return _Conv(w, conv.bias.detach().to(device, dtype).clone())


class _PhaseNet:
    """A read-only, BatchNorm-folded snapshot of a BagNet that evaluates patch logits at
    any output stride that is a product of the model's leading strides.

    The user's model is only read: every tensor here is a new one.
    """

    def __init__(self, model: BagNet, device=None, dtype=None):
        device = torch.device(device) if device is not None else model.fc.weight.device
        if dtype is None:
            dtype = torch.float64 if model.fc.weight.dtype == torch.float64 else torch.float32
        self.device, self.dtype = device, dtype
        # Maps, logits and their means stay float32 when the arithmetic is narrower.
        self.out_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        self.patch_size = model.receptive_field
        self.in_chans = model.in_chans

        # BatchNorm folded into the convolutions (in float64) and the stem's 1x1 conv merged
        # into its 3x3 one (no nonlinearity between them), so the 64 -> 64 3x3 at full
        # resolution disappears: bagnet.models.fuse does both.
        if dtype != self.out_dtype:
            model = copy.deepcopy(model).double()  # fold in float64, then round to dtype only once
        elif model.fc.weight.dtype not in (torch.float32, torch.float64):
            model = copy.deepcopy(model).float()  # fold half-precision weights at full precision
        fused = fuse(model)
        self.stem = _take(fused.stem, "stem", dtype, device)
        if fused.stem.stride != (1, 1):
            raise ValueError("only BagNets with stride-1 stem convolutions are supported")
        self.blocks: list[_Block] = []
        for i, block in enumerate(fused.blocks):
            where = f"block {i}"
            if block.conv1.stride != (1, 1) or block.conv3.stride != (1, 1):
                raise ValueError(f"{where}: only the middle convolution may be strided")
            s = block.conv2.stride[0]
            down = block.downsample
            if down is not None and (down.kernel_size != (1, 1) or down.stride[0] != s):
                raise ValueError(f"{where}: the downsample must be a 1x1 convolution with the block's stride")
            if down is None and s != 1:
                raise ValueError(f"{where}: a strided block needs a downsample")
            self.blocks.append(_Block(
                _take(block.conv1, f"{where}.conv1", dtype, device),
                _take(block.conv2, f"{where}.conv2", dtype, device),
                _take(block.conv3, f"{where}.conv3", dtype, device),
                None if down is None else _take(down, f"{where}.downsample", dtype, device),
                s,
            ))
        self.fc_weight = model.fc.weight.detach().to(device, dtype).clone()
        bias = model.fc.bias
        self.fc_bias = bias.detach().to(device, self.out_dtype).clone() if bias is not None else None

    def leading_stride(self, stride: int) -> int:
        """The largest product of leading strides that divides ``stride``."""
        kept = 1
        for blk in self.blocks:
            if blk.stride > 1:
                if stride % (kept * blk.stride):
                    break
                kept *= blk.stride
        return kept

    def _plan(self, out_stride: int, layout: str) -> list[_Step]:
        """Keep the leading strides whose product is ``out_stride``; decompose the rest."""
        if layout not in ("phases", "dilated"):
            raise ValueError(f"layout must be 'phases' or 'dilated', got {layout!r}")
        kept, dilation, decomposed, steps = 1, 1, False, []
        for blk in self.blocks:
            s = blk.stride
            if s == 1:
                steps.append(_Step(1, dilation, 1))
            elif out_stride % (kept * s) == 0 and not decomposed:
                kept *= s
                steps.append(_Step(s, 1, 1))
            elif layout == "dilated":
                steps.append(_Step(1, dilation, 1))
                dilation, decomposed = dilation * s, True
            else:
                steps.append(_Step(1, 1, s))
                decomposed = True
        if kept != out_stride:
            raise ValueError(f"internal: output stride {out_stride} is not a product of the leading strides")
        return steps

    def bytes_per_output_pixel(self, num_classes: int, out_stride: int) -> int:
        """Rough peak activation memory of one forward pass per output entry of one image: a
        few live copies of the largest feature map (layers before the kept strides run at up
        to ``out_stride**2`` positions per entry), plus the logits before and after reordering."""
        r = out_stride  # positions per side per output entry
        widest = self.stem.weight.shape[0] * r * r
        for blk, step in zip(self.blocks, self._plan(out_stride, "phases")):
            widest = max(widest, max(blk.conv1.weight.shape[:2]) * r * r)
            r //= step.stride
            widest = max(widest, blk.conv3.weight.shape[0] * r * r)
        size, out_size = torch.finfo(self.dtype).bits // 8, torch.finfo(self.out_dtype).bits // 8
        return size * (4 * widest + num_classes) + 2 * out_size * num_classes

    @torch.inference_mode()
    def __call__(self, padded: torch.Tensor, classes: torch.Tensor | None, out_stride: int,
                 layout: str = "phases") -> torch.Tensor:
        """Map ``[B, K, h, w]`` of a (padded) batch for the class indices ``classes``; entry
        (i, j) is the crop at ``(out_stride * i, out_stride * j)``, h = (H - q) // out_stride + 1.
        ``classes=None``: the features before the classifier instead, ``[B, F, h, w]`` (channels-last)."""
        b, _, hp, wp = padded.shape
        q, g = self.patch_size, out_stride
        h, w = (hp - q) // g + 1, (wp - q) // g + 1
        steps = self._plan(out_stride, layout)
        x = padded.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        x = F.relu_(F.conv2d(x, self.stem.weight, self.stem.bias))
        for blk, step in zip(self.blocks, steps):
            x = _run_block(x, blk, step)
        n, f, hh, ww = x.shape
        # The classifier as one matrix product, straight into [K, pixels] (channels-last
        # features are a [pixels, F] matrix already), so no transpose of the logits is needed.
        feats = x.permute(0, 2, 3, 1).reshape(n * hh * ww, f)
        order = interleave_index([s.split for s in steps if s.split > 1], b, hh, ww, h, w, feats.device)
        if classes is None:
            return feats.index_select(0, order.reshape(-1)).view(b, h, w, f).permute(0, 3, 1, 2)
        logits = self.classifier(feats, classes)
        out = torch.empty((b, logits.shape[0], h, w), device=logits.device, dtype=logits.dtype)
        for i in range(b):
            torch.index_select(logits, 1, order[i], out=out[i].view(logits.shape[0], h * w))
        if self.dtype == torch.float16 and not torch.isfinite(out).all():
            raise ValueError("the float16 evidence map overflowed (values beyond 65504); use bfloat16 or float32")
        return out

    def classifier(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, pixels]`` of features ``[pixels, F]``, in ``out_dtype``.

        In bfloat16/float16 the kernels sum the products in float32 either way; on CUDA the
        sums come out in float32, on the CPU (no such kernel) they are rounded to the
        operands' type once. A float32 product instead would cost 5-7x the bfloat16 one
        on CPUs with bfloat16 units: for all classes, about as much as the rest of the map.
        """
        fc_w = self.fc_weight.index_select(0, classes)
        bias = None if self.fc_bias is None else self.fc_bias.index_select(0, classes)[:, None]
        if self.dtype == self.out_dtype:
            return torch.mm(fc_w, feats.T) if bias is None else torch.addmm(bias, fc_w, feats.T)
        if feats.device.type == "cuda":
            logits = torch.mm(fc_w, feats.T, out_dtype=torch.float32)
        else:
            logits = torch.mm(fc_w, feats.T).float()
        return logits if bias is None else logits.add_(bias)


def _run_block(x: torch.Tensor, blk: _Block, step: _Step) -> torch.Tensor:
    out = F.relu_(F.conv2d(x, blk.conv1.weight, blk.conv1.bias))
    out = F.relu_(F.conv2d(out, blk.conv2.weight, blk.conv2.bias, stride=step.stride, dilation=step.dilation))
    out = F.conv2d(out, blk.conv3.weight, blk.conv3.bias)
    # The residual is cropped at bottom/right as in the model: location p of both paths
    # starts at the same input pixel, in the dense domain just as in the strided one.
    # Cropping before the (1x1) downsample skips the rows it would compute for nothing.
    oh, ow = out.shape[-2:]
    if blk.downsample is None:
        identity = x[..., :oh, :ow]
    else:
        d, s = blk.downsample, step.stride
        identity = F.conv2d(x[..., : (oh - 1) * s + 1, : (ow - 1) * s + 1], d.weight, d.bias, stride=s)
    out += identity
    F.relu_(out)
    return space_to_batch(out, step.split) if step.split > 1 else out


# -- public entry points -----------------------------------------------------------------


class EvidenceMapper:
    """:func:`evidence_map` with the model prepared once, for many calls (data sets, servers).

    Holds a BatchNorm-folded snapshot of the model's weights taken at construction: later
    changes to the model are not seen, and the model itself is never modified.

    Args:
        model: a :class:`~bagnet.models.BagNet`.
        stride: 1, ``"native"`` or a positive integer (see :func:`evidence_map`).
        pad_value: padding value of the normalized image; ``None`` for no padding.
        max_memory: rough bound in bytes on the activations of one pass (default 3 GiB).
        tile_size: force tiles of this many map entries per side.
        device: where to compute (default: the model's device).
        dtype: arithmetic of the map (see :func:`evidence_map`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        stride: int | str = 1,
        pad_value: float | None = 0.0,
        max_memory: int | None = None,
        tile_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        _layout: str = "phases",
    ):
        if not isinstance(model, BagNet):
            raise TypeError(
                f"evidence_map needs a bagnet.models.BagNet, got {type(model).__name__}; "
                "evidence_map_reference works for any model with a receptive_field"
            )
        if model.num_classes < 1:
            raise ValueError("this BagNet has no classifier (num_classes=0), so it has no class evidence")
        self.stride = _resolve_stride(model, stride)
        _geometry(model.receptive_field, self.stride, pad_value is not None, (0, 0))  # checks q against padding
        if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1):
            raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
        if max_memory is not None and max_memory < 1:
            raise ValueError(f"max_memory must be positive, got {max_memory}")
        self.pad_value = None if pad_value is None else float(pad_value)
        self.max_memory = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
        self.tile_size = tile_size
        self.num_classes = model.num_classes
        self.in_chans = model.in_chans
        self.patch_size = model.receptive_field
        self._net = _PhaseNet(model, device=device, dtype=None if dtype is None else check_dtype(dtype))
        self._layout = _layout
        self._native = int(model.patch_stride)
        # Run at the coarsest stride that is a product of leading strides and divides the
        # requested one; the rest is subsampling.
        self._run_stride = self._net.leading_stride(self.stride)
        self._subsample = self.stride // self._run_stride

    @property
    def device(self) -> torch.device:
        return self._net.device

    @property
    def dtype(self) -> torch.dtype:
        """The arithmetic of the convolutions; maps and logits are float32 when it is narrower."""
        return self._net.dtype

    def geometry(self, image_size: tuple[int, int]) -> MapGeometry:
        """Where the entries of the map of an image of ``image_size`` (H, W) sit."""
        return _geometry(self.patch_size, self.stride, self.pad_value is not None, image_size)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's inference-mode logits ``[B, num_classes]`` (``[num_classes]`` for one
        image): the mean of the unpadded native patch logits, like ``model.eval()(images)``."""
        images, single = check_images(images, self.in_chans, allow_single=True, floating=True,
                                      receptive_field=self.patch_size)
        all_classes = torch.arange(self.num_classes, device=self.device)
        out = self._tiled(images, all_classes, self._native).mean(dim=(-2, -1))
        return out[0] if single else out

    def __call__(self, images: torch.Tensor, classes: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Evidence maps ``[B, K, h, w]`` (``[K, h, w]`` for one ``[C, H, W]`` image)."""
        images, single = check_images(images, self.in_chans, allow_single=True, floating=True)
        q = self.patch_size
        class_idx = torch.as_tensor(resolve_classes(classes, self.num_classes), device=self.device)
        if self.pad_value is not None:
            p = (q - 1) // 2
            images = F.pad(images, (p, p, p, p), value=self.pad_value)
        else:
            check_size(images.shape[-2], images.shape[-1], q, "pad it or use a larger image")
        out = self._tiled(images, class_idx, self._run_stride)
        if self._subsample > 1:
            out = out[:, :, :: self._subsample, :: self._subsample].contiguous()
        return out[0] if single else out

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """What all classes' maps of one normalized ``[C, H, W]`` image share: the features
        before the classifier, ``[F, h, w]`` (channels-last in memory, in the mapper's
        :attr:`dtype`, on its device), such that ``classify(features, classes)`` equals
        ``self(image, classes)``. Worth keeping when many classes will be looked at:
        each further class then costs one ``F``-long dot product per map entry."""
        images, _ = check_images(image, self.in_chans, allow_single=True, floating=True)
        if images.shape[0] != 1:
            raise ValueError(f"features takes one image, got a batch of {images.shape[0]}")
        if self.pad_value is not None:
            p = (self.patch_size - 1) // 2
            images = F.pad(images, (p, p, p, p), value=self.pad_value)
        out = self._tiled(images, None, self._run_stride)[0]
        return out[:, :: self._subsample, :: self._subsample] if self._subsample > 1 else out

    @torch.inference_mode()
    def classify(self, features: torch.Tensor, classes: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Evidence maps ``[K, h, w]`` from :meth:`features`: the classifier at every entry."""
        idx = torch.as_tensor(resolve_classes(classes, self.num_classes), device=self.device)
        f, h, w = features.shape
        feats = features.to(self.device, self._net.dtype).permute(1, 2, 0).reshape(h * w, f)
        return self._net.classifier(feats, idx).view(len(idx), h, w)

    def _tiled(self, padded: torch.Tensor, classes: torch.Tensor | None, g: int) -> torch.Tensor:
        """Run at output stride ``g`` over a (padded) batch, in chunks of images and
        overlapping tiles as memory requires (``classes=None``: the features)."""
        net, layout = self._net, self._layout
        b, _, hp, wp = padded.shape
        q = net.patch_size
        h, w = (hp - q) // g + 1, (wp - q) // g + 1
        k = net.fc_weight.shape[1] if classes is None else len(classes)
        per_pixel = net.bytes_per_output_pixel(k, g)
        tile = self.tile_size
        if tile is None and per_pixel * h * w * b <= self.max_memory:
            return net(padded, classes, g, layout)
        out = torch.empty((b, k, h, w), device=net.device, dtype=net.dtype if classes is None else net.out_dtype,
                          memory_format=torch.channels_last if classes is None else torch.contiguous_format)
        if tile is None and per_pixel * h * w <= self.max_memory:
            chunk = max(1, self.max_memory // (per_pixel * h * w))
            for i in range(0, b, chunk):
                out[i : i + chunk] = net(padded[i : i + chunk], classes, g, layout)
            return out
        if tile is None:
            # The largest square tile the bound allows, then evened out so that the last
            # tile in a row or column is not a thin (and, per entry, costly) sliver.
            side = max(8, int(math.sqrt(self.max_memory / per_pixel)))
            th, tw = (-(-n // -(-n // side)) for n in (h, w))
        else:
            th, tw = min(tile, h), min(tile, w)
        _log.debug("evidence map %dx%d in tiles of %dx%d", h, w, th, tw)
        for i in range(b):
            for y0 in range(0, h, th):
                y1 = min(h, y0 + th)
                for x0 in range(0, w, tw):
                    x1 = min(w, x0 + tw)
                    # Entries [y0, y1) need padded rows [g*y0, g*(y1-1) + q): tiles overlap by q - g.
                    part = padded[i : i + 1, :, g * y0 : g * (y1 - 1) + q, g * x0 : g * (x1 - 1) + q]
                    out[i : i + 1, :, y0:y1, x0:x1] = net(part, classes, g, layout)
        return out


def evidence_map(
    model: nn.Module,
    images: torch.Tensor,
    *,
    classes: int | Sequence[int] | torch.Tensor | None = None,
    stride: int | str = 1,
    pad_value: float | None = 0.0,
    max_memory: int | None = None,
    tile_size: int | None = None,
    dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Class evidence of every q x q patch of normalized images, exactly as the paper defines it.

    With ``pad_value`` a number (the paper's definition: zero padding), the images are padded
    by ``(q - 1) // 2`` on every side and entry ``(y, x)`` of the map is logit c of the model
    on the q x q crop centred at pixel ``(stride * y, stride * x)``: the map is ``H x W`` at
    stride 1. With ``pad_value=None`` nothing is padded and entry ``(i, j)`` is the crop whose
    top-left corner is ``(stride * i, stride * j)`` (``(H - q) // stride + 1`` rows), so
    ``stride="native", pad_value=None`` equals ``model.patch_logits(images)``.

    The whole map is computed in one pass over the image, without evaluating any crop twice
    (see the module docstring); it equals the crop-by-crop definition
    (:func:`evidence_map_reference`) up to float rounding. For many calls with one model,
    :class:`EvidenceMapper` prepares the model once.

    Args:
        model: a :class:`~bagnet.models.BagNet`; it is not modified (BatchNorm is folded
            into a copy of the weights, with the running statistics, as in ``eval()``).
        images: normalized images ``[B, C, H, W]`` (or one ``[C, H, W]``), as the model takes them.
        classes: class indices to compute, in this order; ``None`` for all.
        stride: 1 for the full-resolution map, ``"native"`` for the model's patch stride
            (cheapest), or any positive integer; strides that are a product of the model's
            leading strides (1, 2, 4, 8 for published BagNets) cost less, others are
            computed at the finest such stride that divides them and subsampled.
        pad_value: value the normalized image is padded with; ``None`` for no padding.
        max_memory: rough bound in bytes on the intermediate activations of one pass;
            larger inputs are cut into overlapping tiles whose outputs are stitched
            exactly (default 3 GiB).
        tile_size: force tiles of this many map entries per side (mainly for tests).
        dtype: arithmetic of the convolutions: ``None`` (float32, float64 for a float64
            model; exact to float rounding), ``torch.bfloat16`` (or ``"bf16"``: about 2x
            faster on CPUs with bfloat16 units and on recent GPUs, about 1-2% of the largest
            value off, see docs/precision.md) or ``torch.float16`` (raises on overflow).

    Returns:
        Float tensor ``[B, len(classes), h, w]`` (``[len(classes), h, w]`` for one image)
        on the model's device, float32 for bfloat16/float16 arithmetic;
        :func:`map_geometry` says where its entries sit.

    Raises:
        TypeError: the model is not a BagNet.
        ValueError: images of the wrong shape or channels, smaller than the receptive
            field (unpadded), bad class indices, stride or dtype.
    """
    mapper = EvidenceMapper(model, stride=stride, pad_value=pad_value, max_memory=max_memory, tile_size=tile_size,
                            dtype=dtype)
    return mapper(images, classes)
