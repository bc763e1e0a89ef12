"""oneDNN convolutions with pre-packed weights and the ReLU and residual add fused in (CPU).

``F.conv2d`` on the CPU re-lays every weight into oneDNN's blocked format on every call,
and a ReLU or a residual add after it is another pass over the feature map. For a
BagNet run one image per pass (see :class:`~bagnet.models.FusedBagNet`) the re-layout is
paid per image, and its first stage keeps 64-256 channels at 110-222 px, where those
extra passes cost as much as the convolutions' arithmetic (measured in
``benchmarks/README.md``). The ops used here are the ones ``torch.compile`` emits for
oneDNN (``torch.ops.mkldnn._convolution_pointwise``); they compute the same convolution,
with the add done before the result is rounded to the output type.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["PackedConv", "packable", "packable_bfloat16"]

log = logging.getLogger(__name__)


def packable_bfloat16() -> bool:
    """Whether this CPU can pre-pack bfloat16 weights: oneDNN refuses it without AVX-512
    (BW, VL, DQ) or AVX-NE-CONVERT, e.g. on AVX2-only CPUs."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe is not None and probe())


def packable(x: torch.Tensor) -> bool:
    """Whether ``x`` can run through :class:`PackedConv`: a float32 CPU tensor, or a
    bfloat16 one where :func:`packable_bfloat16`, with PyTorch built with oneDNN, outside
    ``torch.compile`` and ``torch.export``."""
    return (
        x.device.type == "cpu"
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and packable_bfloat16()))
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
    )


class PackedConv:
    """An unpadded, ungrouped convolution whose weight is held in oneDNN's blocked layout.

    Args:
        weight, bias: of the convolution (bias required), in the dtype it will run in.
        stride, dilation: of the convolution.
        input_shape: a typical input's shape; oneDNN picks the weight layout for it, and
            re-lays it per call for inputs it does not suit (still correct).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, dilation: int,
                 input_shape: tuple[int, ...]):
        self.stride, self.dilation = [stride, stride], [dilation, dilation]
        self.bias = bias.detach().contiguous()
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().contiguous().to_mkldnn(), [0, 0], self.stride, self.dilation, 1, list(input_shape))

    def __call__(self, x: torch.Tensor, relu: bool, add: torch.Tensor | None = None) -> torch.Tensor:
        """``conv(x)``, plus ``add`` (a tensor of the output's shape) if given, then ReLU if ``relu``."""
        op = torch.ops.mkldnn._convolution_pointwise
        if add is None:
            return op(x, self.weight, self.bias, [0, 0], self.stride, self.dilation, 1, "relu" if relu else "none",
                      [None], "")
        add = add.contiguous(memory_format=torch.channels_last)  # the fused add reads a dense tensor
        return op.binary(x, add, self.weight, self.bias, [0, 0], self.stride, self.dilation, 1, "add", 1.0,
                         "relu" if relu else None, [None], "")
