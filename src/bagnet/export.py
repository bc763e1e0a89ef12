"""Deployment: a fused BagNet as an ONNX file or a ``torch.export`` ExportedProgram.

The exported model is the fused inference copy (:func:`bagnet.models.fuse`: BatchNorm
folded, the stem one convolution), takes normalized images ``[B, C, H, W]`` of any batch
size and any height and width of at least the receptive field, and returns the logits
and, optionally, the class evidence of every patch::

    from bagnet.export import export_onnx
    export_onnx(model, "bagnet.onnx", patch_logits=True)

The file carries what a deployment needs to prepare its input (model name, mean, std,
image size, class names, receptive field, patch stride) as JSON: in the ONNX metadata
under ``"bagnet"``, and in the ExportedProgram's archive as ``bagnet.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_path
from .data.transforms import Preprocessing
from .models import FusedBagNet, fuse
from .models._base import patch_head
from .models.bagnet import BagNet

__all__ = ["FORMATS", "OPSET", "export_metadata", "export_onnx", "export_program", "save_exported_program"]

FORMATS = ("onnx", "exported-program")
"""The formats of ``bagnet export --format``."""
# ONNX opset of the exported files: 18 is the torch exporter's own and runs on
# onnxruntime >= 1.14; newer runtimes read it too.
OPSET = 18
"""The ONNX opset of the exported files."""


class _Outputs(nn.Module):
    """A fused BagNet whose forward returns ``logits`` or ``(logits, patch_logits)``."""

    def __init__(self, fused: FusedBagNet, patch_logits: bool):
        super().__init__()
        self.model = fused
        self.patch_logits = patch_logits

    def forward(self, image: torch.Tensor):
        features = self.model.forward_features(image)
        logits = self.model.forward_head(features)
        if not self.patch_logits:
            return logits
        return logits, patch_head(self.model.fc, features)


def _prepare(model: nn.Module, patch_logits: bool) -> _Outputs:
    if isinstance(model, BagNet):
        fused = fuse(model)
    elif isinstance(model, FusedBagNet):
        fused = copy.deepcopy(model)
    else:
        raise TypeError(f"export takes a BagNet (or a fused one), got {type(model).__name__}")
    if model.num_classes < 1:
        raise ValueError("this BagNet has no classifier (num_classes=0); nothing to export")
    fused = fused.float().eval()
    fused.micro_batch = None  # a batch-size branch would be baked into the graph
    fused.memory_format = torch.contiguous_format
    return _Outputs(fused, patch_logits).eval()


def export_metadata(model: nn.Module, patch_logits: bool) -> dict[str, Any]:
    """What a deployment needs to prepare inputs and read outputs, JSON-serializable."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    names = cfg.get("class_names") or cfg.get("classes")
    pre = Preprocessing.from_cfg(cfg)  # the one preprocessing every bagnet path gives this model
    return {
        "format": "bagnet-export/1",
        "model": getattr(model, "model_name", None),
        "model_args": dict(getattr(model, "model_args", None) or {}),
        "receptive_field": int(model.receptive_field),
        "patch_stride": int(model.patch_stride),
        "num_classes": int(model.num_classes),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "img_size": pre.img_size,
        "crop_pct": pre.crop_pct,
        # how to prepare an image: bagnet.data.transforms.Preprocessing(img_size, crop_pct, mean, std)
        "preprocessing": pre.describe(),
        "classes": list(cfg["classes"]) if cfg.get("classes") else None,
        "class_names": [str(n) for n in names] if names else None,
        "inputs": {"image": "normalized images [batch, channels, height, width], float32"},
        "outputs": {
            "logits": "[batch, num_classes]",
            **({"patch_logits": "[batch, num_classes, (height - q) // s + 1, (width - q) // s + 1]: class "
                                "evidence of the q x q patch at (s*i, s*j); its mean over i, j is the logits"}
               if patch_logits else {}),
        },
    }


def export_program(model: nn.Module, *, patch_logits: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` the fused model with dynamic batch size, height and width.

    Args:
        model: a :class:`~bagnet.models.BagNet` (fused here; it is not changed) or a
            :class:`~bagnet.models.FusedBagNet`.
        patch_logits: also return the class evidence of every patch.

    Returns:
        An ExportedProgram whose input is ``image`` ``[B, C, H, W]``; it checks
        ``H, W >= q`` (the receptive field) when it runs.
    """
    wrapped = _prepare(model, patch_logits)
    fused = wrapped.model
    q, s = fused.receptive_field, fused.patch_stride
    # Example sizes other than 0 and 1, so that no dimension is specialized to them.
    example = torch.zeros(2, fused.in_chans, q + 2 * s, q + 3 * s)
    auto = torch.export.Dim.AUTO
    with torch.no_grad(), _size_oblivious():
        return torch.export.export(wrapped, (example,), dynamic_shapes={"image": {0: auto, 2: auto, 3: auto}},
                                   strict=False)


def _size_oblivious():
    """Trace as if no size were 1. Otherwise torch.export's contiguity checks guard on
    "this feature map is not 1 pixel wide" and the program refuses images up to q + s - 1
    pixels; the operations (convolutions, crops, same-shape additions) mean the same for
    size 1. Named Dims instead of Dim.AUTO fail on slice bounds sympy cannot prove."""
    from torch.fx.experimental import _config

    if not hasattr(_config, "backed_size_oblivious"):  # older torch: export still works, from q + s
        return contextlib.nullcontext()
    return _config.patch(backed_size_oblivious=True)


def _name_dims(onnx_program, program: torch.export.ExportedProgram) -> None:
    """Call the symbolic input sizes batch, height and width everywhere in the ONNX graph
    (torch.export numbers them s0, s1, ...)."""
    import onnx_ir as ir

    image = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "image")
    names = dict(zip((str(image.meta["val"].shape[i]) for i in (0, 2, 3)), ("batch", "height", "width")))
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def rename(dim):
        if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
            return ir.SymbolicDim(pattern.sub(lambda m: names[m.group(1)], dim.value))
        return dim

    graph = onnx_program.model.graph
    values = [*graph.inputs, *graph.outputs, *(o for node in graph.all_nodes() for o in node.outputs)]
    for v in values:
        if v.shape is not None:
            v.shape = ir.Shape([rename(d) for d in v.shape])


@contextlib.contextmanager
def _quiet(*loggers: str):
    """The exporter's libraries log every graph rewrite at INFO (hundreds of lines under
    the CLI's INFO logging); keep their warnings and errors only."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, *, patch_logits: bool = False, opset: int = OPSET
) -> Path:
    """Write the fused model as an ONNX file with dynamic batch size, height and width.

    Inputs: ``image`` (normalized, float32, ``[batch, C, height, width]``, height and width
    at least the receptive field). Outputs: ``logits`` and, with ``patch_logits``,
    ``patch_logits``. Needs the ``onnx`` extra (onnx, onnxscript).

    Returns:
        ``path``, written atomically.
    """
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'bagnet[onnx]'") from None
    program = export_program(model, patch_logits=patch_logits)
    names = ["logits", "patch_logits"] if patch_logits else ["logits"]
    with _quiet("onnxscript", "onnx_ir", "torch.onnx"):
        onnx_program = torch.onnx.export(
            program, input_names=["image"], output_names=names, opset_version=opset, dynamo=True,
            external_data=False, verbose=False,
        )
    _name_dims(onnx_program, program)
    onnx_program.model.metadata_props["bagnet"] = json.dumps(export_metadata(model, patch_logits))
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx_program.save(str(tmp), external_data=False)
    return path


def save_exported_program(model: nn.Module, path: str | os.PathLike, *, patch_logits: bool = False) -> Path:
    """Write :func:`export_program`'s result with ``torch.export.save`` (load it with
    ``torch.export.load(path).module()``); ``bagnet.json`` in the archive holds the metadata.

    Returns:
        ``path``, written atomically.
    """
    program = export_program(model, patch_logits=patch_logits)
    meta = json.dumps(export_metadata(model, patch_logits))
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp), extra_files={"bagnet.json": meta})
    return path
