"""Inference-only BagNets: BatchNorm folded into the convolutions, the stem merged.

``fuse(model)`` returns a new :class:`FusedBagNet` that computes the same function as
``model.eval()`` up to float rounding, with fewer passes over memory and fewer
multiply-adds:

- every BatchNorm (with its running statistics) is folded into the convolution before it
  (``W' = W * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``);
- the stem's 1x1 ``conv1`` (3 -> 64) and 3x3 ``conv2`` (64 -> 64) have no non-linearity
  between them, so they compose to one 3x3 convolution from the input channels. This
  removes 1.74 of BagNet-33's 16.26 GMACs at 224 px;
- where the residual crop throws away much of a downsample's output, the input of the
  1x1 downsample convolution is cropped instead (the two commute), so the dropped rows
  and columns are never computed (0.21 GMACs in BagNet-33's last stage).

The original model is left untouched, so its state dict stays the published format.
"""

from __future__ import annotations

import copy
import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .._device import fast_bfloat16
from ._base import BagNetBase, check_images, patch_head
from ._packed import PackedConv, packable

__all__ = [
    "INFERENCE_MODES",
    "FusedBagNet",
    "FusedBottleneck",
    "fold_batchnorm",
    "fuse",
    "prepare_for_inference",
    "top1_agreement",
]

log = logging.getLogger(__name__)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    The arithmetic runs in float64 so that folding adds no rounding beyond the final cast.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    w = conv.weight.detach().double()
    scale = bn.running_var.detach().double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    if conv.bias is not None:
        shift = shift + conv.bias.detach().double() * scale
    fused = _new_conv(conv, conv.in_channels, conv.kernel_size)
    with torch.no_grad():
        fused.weight.copy_(w * scale[:, None, None, None])
        fused.bias.copy_(shift)
    return fused


def _new_conv(like: nn.Conv2d, in_channels: int, kernel_size: tuple[int, int]) -> nn.Conv2d:
    if like.groups != 1 or like.padding_mode != "zeros" or like.dilation != (1, 1):
        raise ValueError(f"only plain convolutions can be fused, got {like}")
    return nn.Conv2d(
        in_channels,
        like.out_channels,
        kernel_size,
        stride=like.stride,
        padding=like.padding,
        bias=True,
        device=like.weight.device,
        dtype=like.weight.dtype,
    )


def _merge_stem(conv1: nn.Conv2d, conv2: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution equal to ``bn(conv2(conv1(x)))`` for an unpadded, stride-1 1x1 ``conv1``."""
    if conv1.kernel_size != (1, 1) or conv1.stride != (1, 1) or conv1.padding != (0, 0):
        raise ValueError(f"the stem's conv1 must be an unpadded stride-1 1x1 convolution to merge, got {conv1}")
    if conv2.padding != (0, 0):
        # With zero padding, conv1's bias would leak into the border; BagNets pad nothing.
        raise ValueError(f"the stem's conv2 must be unpadded to merge, got {conv2}")
    w1 = conv1.weight.detach().double()[:, :, 0, 0]  # [mid, in]
    w2 = conv2.weight.detach().double()  # [out, mid, k, k]
    merged = _new_conv(conv2, conv1.in_channels, conv2.kernel_size)
    b1 = conv1.bias.detach().double() if conv1.bias is not None else None
    b2 = conv2.bias.detach().double() if conv2.bias is not None else torch.zeros_like(w2[:, 0, 0, 0])
    if b1 is not None:
        b2 = b2 + torch.einsum("omhw,m->o", w2, b1)
    with torch.no_grad():
        merged.weight.copy_(torch.einsum("omhw,mi->oihw", w2, w1))
        merged.bias.copy_(b2)
    return fold_batchnorm(merged, bn)


class FusedBottleneck(nn.Module):
    """A :class:`~bagnet.models.bagnet.Bottleneck` with BatchNorm folded away."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1 = fold_batchnorm(block.conv1, block.bn1)
        self.conv2 = fold_batchnorm(block.conv2, block.bn2)
        self.conv3 = fold_batchnorm(block.conv3, block.bn3)
        self.downsample = None
        if block.downsample is not None:
            conv, bn = _conv_bn(block.downsample)
            if conv.kernel_size != (1, 1) or conv.padding != (0, 0):
                raise ValueError(f"only 1x1 unpadded downsample convolutions can be fused, got {conv}")
            self.downsample = fold_batchnorm(conv, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x), inplace=True)
        out = F.relu(self.conv2(out), inplace=True)
        out = self.conv3(out)
        h, w = out.shape[-2:]
        if self.downsample is None:
            identity = x
        else:
            # A 1x1 convolution commutes with cropping: output (i, j) reads only input
            # (s*i, s*j). Where the residual crop drops much (the stride-1 last stage loses
            # 2 of 26 rows and columns), crop the input and never compute those outputs; where
            # it drops one row, the copy that cropping the input costs is slower than the
            # multiply-adds it saves. An exported graph always crops: with a symbolic image
            # size the choice could not be made once for every size (both are exact).
            s = self.downsample.stride[0]
            full_h, full_w = (x.shape[-2] - 1) // s + 1, (x.shape[-1] - 1) // s + 1
            if torch.compiler.is_exporting() or full_h * full_w > 1.1 * h * w:
                x = x[..., : s * (h - 1) + 1, : s * (w - 1) + 1]
            identity = self.downsample(x)
        return F.relu(out.add_(identity[..., :h, :w]), inplace=True)


def _conv_bn(downsample: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    parts = list(downsample.children()) if isinstance(downsample, nn.Sequential) else []
    if len(parts) != 2 or not isinstance(parts[0], nn.Conv2d) or not isinstance(parts[1], nn.BatchNorm2d):
        raise ValueError(f"expected the downsample to be Sequential(Conv2d, BatchNorm2d), got {downsample}")
    return parts[0], parts[1]


class FusedBagNet(BagNetBase):
    """Inference-only BagNet: the stem is one convolution, BatchNorm is folded everywhere.

    Built by :func:`fuse` (or ``BagNet.fuse()``). It offers the same ``forward``, ``forward_head``,
    ``forward_features``, ``patch_logits``, ``receptive_field``, ``patch_stride`` and
    ``patch_grid`` as :class:`~bagnet.models.BagNet`, and keeps ``model_name``,
    ``model_args`` and ``pretrained_cfg`` of the model it came from. It cannot be trained
    (there are no BatchNorm layers left to update): ``train()`` raises.

    Outputs have the input's dtype; the arithmetic runs in the parameters' dtype, so
    ``fused.to(torch.bfloat16)`` computes in bfloat16 and still returns float32 for float32
    images. ``memory_format`` is the layout the input is converted to before the first
    convolution (``torch.channels_last`` is faster on CPUs with oneDNN).

    ``micro_batch`` (``None``: off) runs CPU batches through the network that many images
    at a time. BagNets keep 64- to 256-channel feature maps at nearly full resolution in
    their first stage; for one 224 px image these take about 12 MB each and stay in the
    CPU's last-level cache between layers, while a batch of 16 streams every one of them
    through main memory (see ``benchmarks/README.md``). CUDA batches are never split.

    ``prepack`` (off by default) runs float32 and bfloat16 CPU passes through oneDNN with
    the weights laid out once, and each ReLU and residual add fused into the convolution
    before it (:mod:`bagnet.models._packed`); the weights are read again after ``.to()``.
    Results equal the unpacked path to float rounding (the fused add happens before the
    sum is rounded, so bfloat16 results differ slightly).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.stem = _merge_stem(model.conv1, model.conv2, model.bn1)
        self.blocks = nn.Sequential(
            *[FusedBottleneck(b) for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
        )
        self.fc = copy.deepcopy(model.fc)
        self.in_chans = model.in_chans
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.memory_format = torch.contiguous_format
        self.micro_batch: int | None = None
        self.prepack = False
        self._packed: tuple | None = None  # (key, stem, [(conv1, conv2, conv3, downsample)])
        for attr in ("model_name", "model_args", "pretrained_cfg"):
            if hasattr(model, attr):
                setattr(self, attr, copy.deepcopy(getattr(model, attr)))
        self.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True) -> FusedBagNet:
        if mode:
            raise RuntimeError(
                "a fused BagNet is inference-only (its BatchNorm layers are folded away); "
                "train the original model and call fuse() again"
            )
        return super().train(False)

    # -- geometry (receptive_field, patch_stride, patch_grid: see BagNetBase) -------------

    def _trunk_convs(self) -> list[nn.Conv2d]:
        return [self.stem] + [c for b in self.blocks for c in (b.conv1, b.conv2, b.conv3)]

    # -- forward ------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, head) -> torch.Tensor:
        """``head(features)`` for the batch ``x``, micro-batched on the CPU; in ``x``'s dtype."""
        x, _ = check_images(x, self.in_chans, receptive_field=self.receptive_field)
        out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        x = x.to(dtype=self.stem.weight.dtype).contiguous(memory_format=self.memory_format)
        step = self.micro_batch
        if step is not None and step < 1:
            raise ValueError(f"micro_batch must be a positive number of images or None, got {step}")
        if step is None or x.device.type != "cpu" or x.shape[0] <= step:
            return head(self._trunk(x)).to(out_dtype)
        return torch.cat([head(self._trunk(part)) for part in x.split(step)]).to(out_dtype)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepack and packable(x) and x.dtype == self.stem.weight.dtype:
            return self._packed_trunk(x)
        return self.blocks(F.relu(self.stem(x), inplace=True))

    def _packed_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_trunk` through :class:`PackedConv` (see ``prepack``); the same crops."""
        key = (self.stem.weight.dtype, self.stem.weight.data_ptr(), tuple(x.shape[1:]))
        if self._packed is None or self._packed[0][:2] != key[:2]:
            self._packed = (key, *self._pack(x))
        _, stem, blocks = self._packed
        x = stem(x, relu=True)
        for (c1, c2, c3, down), block in zip(blocks, self.blocks):
            out = c2(c1(x, relu=True), relu=True)
            h, w = out.shape[-2:]
            if down is None:
                identity = x[..., :h, :w]
            else:
                s = block.downsample.stride[0]
                if (x.shape[-2] - 1) // s + 1 > 1.1 * h * w / ((x.shape[-1] - 1) // s + 1):
                    x = x[..., : s * (h - 1) + 1, : s * (w - 1) + 1]  # as FusedBottleneck decides
                identity = down(x, relu=False)[..., :h, :w]
            x = c3(out, relu=True, add=identity)
        return x

    def _pack(self, x: torch.Tensor) -> tuple[PackedConv, list]:
        """The packed convolutions, laid out for inputs like ``x`` (one pass of the normal path
        finds every layer's input shape)."""
        def pack(conv: nn.Conv2d, inp: torch.Tensor) -> PackedConv:
            return PackedConv(conv.weight, conv.bias, conv.stride[0], 1, tuple(inp.shape))

        stem = pack(self.stem, x)
        x = F.relu(self.stem(x))
        blocks = []
        for block in self.blocks:
            mid = F.relu(block.conv1(x))
            out = F.relu(block.conv2(mid))
            down = None if block.downsample is None else pack(block.downsample, x)
            blocks.append((pack(block.conv1, x), pack(block.conv2, mid), pack(block.conv3, out), down))
            x = block(x)
        return stem, blocks

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # .to(), .float(), ...: lay the new weights out again
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_packed"] = None  # oneDNN tensors neither pickle nor deep-copy
        return state

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, num_features, H', W']``, as :meth:`BagNet.forward_features`."""
        return self._run(x, lambda features: features)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class evidence of every patch, ``[B, num_classes, H', W']``."""
        return self._run(x, lambda features: patch_head(self.fc, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The classifier is linear, so averaging features first equals averaging patch logits.
        return self._run(x, self.forward_head)

    def extra_repr(self) -> str:
        return f"receptive_field={self.receptive_field}, patch_stride={self.patch_stride}"


def _is_bagnet(model: nn.Module) -> bool:
    """A trainable BagNet (this module sits below ``bagnet.py``, which imports it, so it
    recognises a BagNet by its base class instead of importing it)."""
    return isinstance(model, BagNetBase) and not isinstance(model, FusedBagNet)


def fuse(model: nn.Module) -> FusedBagNet:
    """An inference-only copy of ``model`` with BatchNorm folded and the stem merged.

    ``model`` itself is not changed (its state dict stays the published format); the copy
    matches ``model.eval()`` to float rounding (checked to 1e-4 relative in the tests).

    Raises:
        TypeError: ``model`` is not a :class:`~bagnet.models.BagNet`.
    """
    if not _is_bagnet(model):
        raise TypeError(f"fuse() takes a BagNet, got {type(model).__name__}")
    return FusedBagNet(model).eval()


# Named settings of prepare_for_inference(), shared by `bagnet bench` and `bagnet eval --fast`.
# "fused" is the fastest exact mode on CPUs with oneDNN; "bf16" is faster still where the
# CPU has bfloat16 instructions, but not exact (see top1_agreement).
INFERENCE_MODES: dict[str, dict] = {
    "plain": dict(fuse=False, channels_last=False, dtype=torch.float32, micro_batch=None, prepack=False),
    "fused": dict(fuse=True, channels_last=True, dtype=torch.float32, micro_batch=1, prepack=True),
    "bf16": dict(fuse=True, channels_last=True, dtype=torch.bfloat16, micro_batch=1, prepack=True),
}


def prepare_for_inference(
    model: nn.Module,
    *,
    fuse: bool = True,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    micro_batch: int | None = 1,
    prepack: bool = False,
) -> nn.Module:
    """A copy of ``model`` set up for fast inference; ``model`` itself is not changed.

    Args:
        model: a :class:`~bagnet.models.BagNet`, a :class:`FusedBagNet`, or any other
            classifier (e.g. a torchvision ResNet-50).
        fuse: fold BatchNorm into the convolutions (for a BagNet also merge the stem: see
            :func:`fuse`). Other models are folded through ``torch.fx`` where they can be
            traced; where not, they keep their BatchNorm layers and a warning is logged.
        channels_last: store 4-d weights (and, for a fused BagNet, convert inputs)
            channels-last, the layout oneDNN's CPU convolutions run fastest on.
        dtype: parameter dtype. ``torch.bfloat16`` is roughly twice as fast on CPUs with
            AVX-512 BF16 or AMX but not exact; check the drift with :func:`top1_agreement`.
            On CPUs without them it is emulated and slower than float32 (a warning says so).
        micro_batch: for a fused BagNet, images per pass through the network on the CPU
            (``None``: the whole batch at once); see :class:`FusedBagNet`. Other models
            ignore it (ResNet-50 runs fastest on whole batches).
        prepack: for a fused BagNet, run float32/bfloat16 CPU passes through oneDNN with
            pre-laid-out weights and fused ReLU/residual adds (see :class:`FusedBagNet`).
            Other models ignore it.

    Returns:
        An eval-mode module that takes float32 images. A fused BagNet converts them to
        ``dtype`` and the layout itself and returns outputs in the input's dtype; other
        models in a reduced ``dtype`` convert their input and return float32 logits.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive number of images or None, got {micro_batch}")
    if _is_bagnet(model) and fuse:
        prepared: nn.Module = FusedBagNet(model).eval()
    elif isinstance(model, BagNetBase) or not fuse:
        prepared = copy.deepcopy(model).eval()
    else:
        prepared = _fold_traced(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    device = next(iter(model.parameters()), torch.empty(0)).device
    if dtype == torch.bfloat16 and device.type == "cpu" and not fast_bfloat16(device):
        log.warning("bfloat16 on this CPU is emulated (no AMX or AVX-512 BF16): it runs slower than float32, "
                    "not faster")
    prepared = prepared.to(dtype=dtype, memory_format=memory_format)
    if isinstance(prepared, FusedBagNet):
        prepared.memory_format = memory_format
        prepared.micro_batch = micro_batch
        prepared.prepack = prepack
    elif dtype != torch.float32:
        prepared.register_forward_pre_hook(functools.partial(_cast_input, dtype=dtype))
        prepared.register_forward_hook(_output_to_float32)
    return prepared


def _cast_input(module: nn.Module, args: tuple, *, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to_float32(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def _fold_traced(model: nn.Module) -> nn.Module:
    """Conv + BatchNorm pairs of any traceable model folded (a copy; eval mode)."""
    from torch.fx.experimental.optimization import fuse as fx_fuse

    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        folded = fx_fuse(model, inplace=True)
    except Exception as e:  # torch.fx cannot trace data-dependent control flow
        log.warning("could not fold BatchNorm of %s (torch.fx: %s); leaving it unfolded", type(model).__name__, e)
        return model
    for attr in ("model_name", "model_args", "pretrained_cfg", "num_classes"):
        if hasattr(model, attr) and not hasattr(folded, attr):
            setattr(folded, attr, getattr(model, attr))
    return folded


def top1_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of rows whose arg-max (top-1 class) is the same in both logit tensors.

    Use it to check what a faster, inexact mode (e.g. bfloat16) changes: the logits of the
    float32 model are ``reference``.

    Raises:
        ValueError: the shapes differ or the tensors are empty.
    """
    if reference.shape != other.shape or reference.dim() != 2:
        raise ValueError(f"expected two [N, classes] logit tensors of one shape, got {tuple(reference.shape)} "
                         f"and {tuple(other.shape)}")
    if reference.shape[0] == 0:
        raise ValueError("no logits to compare")
    same = reference.argmax(dim=1) == other.argmax(dim=1)
    return same.float().mean().item()
