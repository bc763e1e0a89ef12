import json
import logging

import numpy as np
import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.export import OPSET, export_program
from bagnet.models import save_model_file
from bagnet.testing.models import randomize_batchnorm

# (batch, height, width): two image sizes (neither is the export example's), two batch
# sizes, and the smallest image the model takes (its receptive field, 9)
SIZES = [(1, 40, 40), (3, 67, 91), (2, 9, 9)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=5), seed=3)
    m.pretrained_cfg = {**m.pretrained_cfg, "classes": list("abcde"), "img_size": 48}
    return m


def _reference(model, x):
    """Logits and patch logits of the unfused model (BatchNorm not folded)."""
    with torch.no_grad():
        return model.eval()(x).numpy(), model.patch_logits(x).numpy()


def _assert_rel_close(got, expected, rtol=1e-4):
    assert got.shape == expected.shape
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err < rtol, f"relative error {err:.2e}"


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    """``bagnet export --format onnx --patch-logits`` of ``model``, with INFO logging on, as
    the CLI runs it."""
    pytest.importorskip("onnxscript")
    tmp = tmp_path_factory.mktemp("onnx")
    weights = save_model_file(tmp / "m.pt", model)
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        argv = ["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp / "tiny.onnx"), "--patch-logits"]
        assert main(argv) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    # the exporter's libraries log every graph rewrite at INFO; none of it reaches the user
    chatter = [r.getMessage() for r in records if r.name.startswith(("onnxscript", "onnx_ir")) and r.levelno < logging.WARNING]
    assert not chatter, chatter[:3]
    return tmp / "tiny.onnx"


@pytest.mark.slow  # the ONNX exporter takes 10-40 s on a shared 2-core CPU
def test_onnx_runs_in_onnxruntime_at_two_sizes(model, onnx_file):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_file))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["bagnet"])
    assert meta["receptive_field"] == model.receptive_field and meta["classes"] == list("abcde")
    assert meta["mean"] == list(model.pretrained_cfg["mean"]) and meta["img_size"] == 48

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "patch_logits"]
    for b, h, w in SIZES:
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h))
        logits, patches = session.run(None, {"image": x.numpy()})
        ref_logits, ref_patches = _reference(model, x)
        _assert_rel_close(logits, ref_logits)
        _assert_rel_close(patches, ref_patches)
        assert patches.shape[-2:] == ((h - 9) // 8 + 1, (w - 9) // 8 + 1)


@pytest.mark.slow
def test_cli_exported_program_saves_loads_and_runs_at_two_sizes(model, tmp_path, capsys):
    weights = save_model_file(tmp_path / "m.pt", model)
    path = tmp_path / "tiny.pt2"
    argv = ["export", "--weights", str(weights), "--format", "exported-program", "--out", str(path), "--patch-logits"]
    assert main(argv) == 0
    assert str(path) in capsys.readouterr().out
    extra = {"bagnet.json": ""}
    loaded = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra["bagnet.json"])
    assert meta["patch_stride"] == model.patch_stride and meta["model"] == "bagnet_tiny"
    module = loaded.module()
    for b, h, w in SIZES:
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(w))
        with torch.no_grad():
            logits, patches = module(x)
        ref_logits, ref_patches = _reference(model, x)
        _assert_rel_close(logits.numpy(), ref_logits)
        _assert_rel_close(patches.numpy(), ref_patches)
    with pytest.raises(Exception, match="image"):  # the program checks H, W >= q itself
        module(torch.zeros(1, 3, 8, 20))


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    other = save_model_file(tmp_path / "squeezenet.pt", bagnet.create_model("squeezenet1_1", num_classes=3))
    out = tmp_path / "r.onnx"
    assert main(["export", "--weights", str(other), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BagNet" in err
    assert not out.exists()
    # an ONNX opset given for a format that has none would be silently ignored
    tiny = save_model_file(tmp_path / "tiny.pt", bagnet.create_model("bagnet_tiny", num_classes=3))
    assert main(["export", "--weights", str(tiny), "--format", "exported-program", "--opset", "17",
                 "--out", str(tmp_path / "t.pt2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--opset is the ONNX opset; --format exported-program has none" in err
    assert not (tmp_path / "t.pt2").exists()
    with pytest.raises(TypeError, match="BagNet"):
        export_program(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="no classifier"):
        export_program(bagnet.create_model("bagnet_tiny", num_classes=0))


def test_metadata_rebuilds_the_preprocessing_bagnet_gives_a_model_without_a_size():
    """A model that names no size is served at 224 px by every bagnet path; the exported
    metadata must say so (it said img_size None, which Preprocessing reads as 'keep the size')."""
    from bagnet.data.transforms import DEFAULT_IMG_SIZE, Preprocessing
    from bagnet.export import export_metadata

    model = bagnet.create_model("bagnet_tiny", num_classes=3)
    assert not model.pretrained_cfg.get("img_size")
    meta = export_metadata(model, patch_logits=False)
    assert meta["img_size"] == DEFAULT_IMG_SIZE == 224
    rebuilt = Preprocessing(meta["img_size"], meta["crop_pct"], meta["mean"], meta["std"])
    assert rebuilt == Preprocessing.from_cfg(model.pretrained_cfg)
