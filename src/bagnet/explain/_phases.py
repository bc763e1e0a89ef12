"""The space-to-batch ("phase") rewrite of strided layers that :mod:`._maps` runs on.

A stride-s layer run at stride 1 computes s*s interleaved copies of its strided output;
:func:`space_to_batch` stacks them along the batch, so later layers see each copy as an
ordinary dense image, and :func:`interleave_index` says where every entry goes at the end.
``PhaseNet`` is the BatchNorm-folded BagNet that runs this way at any output stride.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import fuse
from ..models.bagnet import BagNet

__all__ = ["PhaseNet", "interleave_index", "space_to_batch"]


def space_to_batch(x: torch.Tensor, s: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[s*s*N, C, ceil(H/s), ceil(W/s)]``, component (a, b) first.

    Odd sizes are padded at bottom/right; the padded values only reach map entries past
    the image, which are cut off at the end.
    """
    n, c, h, w = x.shape
    h2, w2 = -(-h // s), -(-w // s)
    if (h2 * s, w2 * s) != (h, w):
        x = F.pad(x, (0, w2 * s - w, 0, h2 * s - h))
    out = torch.empty((s * s * n, c, h2, w2), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    out.view(s, s, n, c, h2, w2).copy_(x.reshape(n, c, h2, s, w2, s).permute(3, 5, 0, 1, 2, 4))
    return out


def interleave_index(splits: list[int], batch: int, hh: int, ww: int, h: int, w: int,
                     device: torch.device | str) -> torch.Tensor:
    """For each image, the columns of the ``[K, P*B*hh*ww]`` logits in dense row-major order.

    After splits s_1 .. s_m the batch index is (a_m, b_m, ..., a_1, b_1, image), and dense
    row ``S * i + s_1 ... s_{m-1} a_m + ... + s_1 a_2 + a_1`` (columns alike) holds the
    value of component row i. Returns ``[B, h*w]`` indices, already cropped to ``h x w``.
    """
    m = len(splits)
    shape = []
    for s in reversed(splits):
        shape += [s, s]
    idx = torch.arange(math.prod(shape) * batch * hh * ww, device=device).view(*shape, batch, hh, ww)
    rows = [2 * i for i in range(m)]  # a_m .. a_1
    cols = [2 * i + 1 for i in range(m)]  # b_m .. b_1
    total = math.prod(splits)
    idx = idx.permute(2 * m, 2 * m + 1, *rows, 2 * m + 2, *cols).reshape(batch, hh * total, ww * total)
    return idx[:, :h, :w].reshape(batch, h * w)


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


class PhaseNet:
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

    def macs(self, batch: int, height: int, width: int, num_classes: int, out_stride: int,
             layout: str = "phases") -> int:
        """Multiply-adds of the convolutions and the classifier in one call on a (padded)
        ``[batch, C, height, width]`` input, counted from the shapes each layer works on
        (the phase components' padding at bottom/right included), without running it."""
        steps = self._plan(out_stride, layout)
        n, h, w = batch, height, width

        def conv(c: _Conv, h: int, w: int, stride: int = 1, dilation: int = 1) -> tuple[int, int, int]:
            cout, cin, kh, kw = c.weight.shape
            ho, wo = (h - dilation * (kh - 1) - 1) // stride + 1, (w - dilation * (kw - 1) - 1) // stride + 1
            return n * ho * wo * cout * cin * kh * kw, ho, wo

        total, h, w = conv(self.stem, h, w)
        for blk, step in zip(self.blocks, steps):
            m1, _, _ = conv(blk.conv1, h, w)
            m2, ho, wo = conv(blk.conv2, h, w, step.stride, step.dilation)
            m3, _, _ = conv(blk.conv3, ho, wo)
            total += m1 + m2 + m3
            if blk.downsample is not None:
                total += conv(blk.downsample, ho, wo)[0]  # 1x1 on the rows the block keeps
            if step.split > 1:
                n, h, w = n * step.split**2, -(-ho // step.split), -(-wo // step.split)
            else:
                h, w = ho, wo
        return total + n * h * w * self.fc_weight.shape[1] * num_classes

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
