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
* What a map costs is counted from the layer shapes before anything runs
  (:meth:`EvidenceMapper.macs`): at stride 1 every layer runs at every pixel, which is
  where the time of a full-resolution map goes (40-60x the model's own pass), so callers
  can refuse or warn first, and a ``progress`` callback hears of every pass.
* In bfloat16 or float16 (``dtype=``) the convolutions and the classifier's products run
  in that type (weights folded in float64, then rounded once), summed in float32 inside
  the kernels; the classifier's bias, the map and the logits' spatial mean are float32.
  See docs/precision.md.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._device import check_dtype
from .._text import plural
from ..models._base import check_images, check_size
from ..models.bagnet import BagNet
from ._phases import PhaseNet

__all__ = ["EvidenceMapper", "MapGeometry", "evidence_map", "map_geometry", "resolve_classes"]

_log = logging.getLogger(__name__)

# Peak memory of the intermediate activations that one forward pass may use unless the
# caller sets ``max_memory``: 224 x 224 with BagNet-33 and all classes fits in one pass.
DEFAULT_MAX_MEMORY = 3 * 2**30
# With progress reported, a large map runs in about ten passes of at least this much memory:
# a few percent more arithmetic (the tiles overlap), for a report every few seconds.
PROGRESS_PASS_MEMORY = 2**28

#: ``progress(done, total)``: multiply-adds done so far and in all (see :meth:`EvidenceMapper.macs`).
Progress = Callable[[int, int], None]


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
    return _resolve_stride_of(int(model.patch_stride), stride)


def _resolve_stride_of(native: int, stride: int | str) -> int:
    if stride == "native":
        return native
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer or 'native', got {stride!r}")
    return stride


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
        self._net = PhaseNet(model, device=device, dtype=None if dtype is None else check_dtype(dtype))
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

    def logits(self, images: torch.Tensor, *, progress: Progress | None = None) -> torch.Tensor:
        """The model's inference-mode logits ``[B, num_classes]`` (``[num_classes]`` for one
        image): the mean of the unpadded native patch logits, like ``model.eval()(images)``."""
        return self.patch_logits(images, progress=progress).mean(dim=(-2, -1))

    def patch_logits(self, images: torch.Tensor, classes: int | Sequence[int] | torch.Tensor | None = None, *,
                     progress: Progress | None = None) -> torch.Tensor:
        """The model's own patch logits ``[B, K, h', w']`` (``[K, h', w']`` for one image),
        like ``model.eval().patch_logits(images)``: unpadded, at the model's patch stride, so
        every patch lies wholly inside the image and the logits are their mean. Whatever
        the mapper's stride and padding."""
        images, single = check_images(images, self.in_chans, allow_single=True, floating=True,
                                      receptive_field=self.patch_size)
        class_idx = torch.as_tensor(resolve_classes(classes, self.num_classes), device=self.device)
        out = self._tiled(images, class_idx, self._native, progress)
        return out[0] if single else out

    def __call__(self, images: torch.Tensor, classes: int | Sequence[int] | torch.Tensor | None = None, *,
                 progress: Progress | None = None) -> torch.Tensor:
        """Evidence maps ``[B, K, h, w]`` (``[K, h, w]`` for one ``[C, H, W]`` image).

        ``progress``, if given, is called as ``progress(done, total)`` in multiply-adds
        before the first pass and after every pass (tile); a large map then runs in about
        ten passes (a few percent more work than :meth:`macs`, as the tiles overlap)."""
        images, single = check_images(images, self.in_chans, allow_single=True, floating=True)
        q = self.patch_size
        class_idx = torch.as_tensor(resolve_classes(classes, self.num_classes), device=self.device)
        if self.pad_value is not None:
            p = (q - 1) // 2
            images = F.pad(images, (p, p, p, p), value=self.pad_value)
        else:
            check_size(images.shape[-2], images.shape[-1], q, "pad it or use a larger image")
        out = self._tiled(images, class_idx, self._run_stride, progress)
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

    def _passes(self, b: int, hp: int, wp: int, k: int, g: int, fine: bool = False) -> list[tuple[slice, slice, slice]]:
        """How :meth:`_tiled` cuts the work on a (padded) ``[b, C, hp, wp]`` batch at output
        stride ``g`` with ``k`` outputs per entry: per pass the images and the map rows and
        columns it computes. One pass when everything fits the memory bound; ``fine``: about
        ten passes where each still holds at least :data:`PROGRESS_PASS_MEMORY`."""
        net, q = self._net, self._net.patch_size
        h, w = (hp - q) // g + 1, (wp - q) // g + 1
        per_pixel = net.bytes_per_output_pixel(k, g)
        memory = self.max_memory
        if fine:
            memory = min(memory, max(per_pixel * h * w * b // 10, PROGRESS_PASS_MEMORY))
        tile = self.tile_size
        everything = (slice(0, h), slice(0, w))
        if tile is None and per_pixel * h * w * b <= memory:
            return [(slice(0, b), *everything)]
        if tile is None and per_pixel * h * w <= memory:
            chunk = max(1, memory // (per_pixel * h * w))
            return [(slice(i, min(b, i + chunk)), *everything) for i in range(0, b, chunk)]
        if tile is None:
            # The largest square tile the bound allows, then evened out so that the last
            # tile in a row or column is not a thin (and, per entry, costly) sliver.
            side = max(8, int(math.sqrt(memory / per_pixel)))
            th, tw = (-(-n // -(-n // side)) for n in (h, w))
        else:
            th, tw = min(tile, h), min(tile, w)
        return [(slice(i, i + 1), slice(y0, min(h, y0 + th)), slice(x0, min(w, x0 + tw)))
                for i in range(b) for y0 in range(0, h, th) for x0 in range(0, w, tw)]

    def _cost(self, b: int, hp: int, wp: int, k: int, g: int, fine: bool = False) -> list[int]:
        """Multiply-adds of each pass of :meth:`_passes`."""
        net, q = self._net, self._net.patch_size
        return [net.macs(imgs.stop - imgs.start, g * (rows.stop - rows.start - 1) + q,
                         g * (cols.stop - cols.start - 1) + q, k, g, self._layout)
                for imgs, rows, cols in self._passes(b, hp, wp, k, g, fine)]

    def macs(self, image_size: tuple[int, int], num_classes: int | None = None, *,
             stride: int | str | None = None) -> int:
        """Multiply-adds (MACs) that ``self(image, classes)`` spends on one image of
        ``image_size`` (H, W) with ``num_classes`` classes (default: all), tiles and their
        overlap included; counted from the layer shapes, nothing is run. ``stride``: the
        cost at another map stride instead (1, ``"native"`` or N), as if this mapper had it.

        At stride 1 every layer runs at every pixel, so a full-resolution map costs about
        ``patch_stride**2`` times the model's own pass in the late layers (where most of
        the arithmetic is): 40-60x the native map for the registered models."""
        k = self.num_classes if num_classes is None else int(num_classes)
        g = self._run_stride if stride is None else self._net.leading_stride(_resolve_stride_of(self._native, stride))
        hp, wp = self._padded_size(image_size)
        return sum(self._cost(1, hp, wp, k, g))

    def logits_macs(self, image_size: tuple[int, int]) -> int:
        """Multiply-adds of :meth:`logits` (and :meth:`patch_logits`, all classes) for one image."""
        h, w = int(image_size[0]), int(image_size[1])
        return sum(self._cost(1, h, w, self.num_classes, self._native))

    def _padded_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        p = 0 if self.pad_value is None else 2 * ((self.patch_size - 1) // 2)
        return int(image_size[0]) + p, int(image_size[1]) + p

    def _tiled(self, padded: torch.Tensor, classes: torch.Tensor | None, g: int,
               progress: Progress | None = None) -> torch.Tensor:
        """Run at output stride ``g`` over a (padded) batch, in chunks of images and
        overlapping tiles as memory requires (``classes=None``: the features); ``progress``
        is called with (multiply-adds done, total) before the first pass and after each,
        and large maps then run in about ten passes, so that there is progress to report."""
        net, layout = self._net, self._layout
        b, _, hp, wp = padded.shape
        q = net.patch_size
        h, w = (hp - q) // g + 1, (wp - q) // g + 1
        k = net.fc_weight.shape[1] if classes is None else len(classes)
        fine = progress is not None
        passes = self._passes(b, hp, wp, k, g, fine)
        costs = self._cost(b, hp, wp, k, g, fine) if fine else [0] * len(passes)
        done, total = 0, sum(costs)
        if progress is not None:
            progress(0, total)
        if len(passes) == 1:
            # Rows and columns past the last entry's patch would only feed entries that are cut off.
            out = net(padded[..., : g * (h - 1) + q, : g * (w - 1) + q], classes, g, layout)
            if progress is not None:
                progress(total, total)
            return out
        out = torch.empty((b, k, h, w), device=net.device, dtype=net.dtype if classes is None else net.out_dtype,
                          memory_format=torch.channels_last if classes is None else torch.contiguous_format)
        if passes[0][1] != slice(0, h) or passes[0][2] != slice(0, w):
            _log.debug("evidence map %dx%d in %d tiles", h, w, len(passes))
        for (imgs, rows, cols), cost in zip(passes, costs):
            # Entries [y0, y1) need padded rows [g*y0, g*(y1-1) + q): tiles overlap by q - g.
            part = padded[imgs, :, g * rows.start : g * (rows.stop - 1) + q, g * cols.start : g * (cols.stop - 1) + q]
            out[imgs, :, rows, cols] = net(part, classes, g, layout)
            if progress is not None:
                done += cost
                progress(done, total)
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
