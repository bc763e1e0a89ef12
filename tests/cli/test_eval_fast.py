"""`bagnet eval --fast`: speed and top-1 agreement of a faster inference mode with float32."""

import json

import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.data.folder import ImageFolder, eval_transform
from bagnet.models import prepare_for_inference
from bagnet.testing import make_image_folder

from ..models.test_bagnet import _randomize


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    """A 3-class bagnet_tiny whose classes 0 and 1 nearly tie on every test image (logits
    near 1, apart by 1e-3, finer than bfloat16 resolves), so bfloat16 changes predictions."""
    root = tmp_path_factory.mktemp("fast")
    make_image_folder(root, per_class=4, size=40, splits=("val",))
    model = _randomize(bagnet.create_model("bagnet_tiny", num_classes=3), seed=7).eval()
    cfg = model.pretrained_cfg
    ds = ImageFolder(root / "val", transform=eval_transform(40, cfg["mean"], cfg["std"]))
    with torch.no_grad():
        feats = model.forward_features(torch.stack([ds[i][0] for i in range(len(ds))])).mean((2, 3)).double()
        mean = feats.mean(0)
        common = mean / (mean @ mean)  # about 1 for every image
        margins = torch.tensor([(-1) ** i * 1e-3 for i in range(len(ds))], dtype=torch.float64)
        d = torch.linalg.lstsq(feats, margins[:, None]).solution[:, 0]  # feats @ d == margins
        model.fc.weight.copy_(torch.stack([common + d / 2, common - d / 2, common / 2]).float())
        model.fc.bias.zero_()
    return root, bagnet.save_model_file(root / "m.pt", model, {"img_size": 40, "classes": ["circle", "square", "stripes"]})


def _predictions(model, folder):
    """Each image alone through ``model``, by hand."""
    cfg = bagnet.load_model(folder.parent / "m.pt").pretrained_cfg
    ds = ImageFolder(folder, transform=eval_transform(40, cfg["mean"], cfg["std"]))
    with torch.no_grad():
        return [model(ds[i][0][None]).argmax(1).item() for i in range(len(ds))], [ds[i][1] for i in range(len(ds))]


@pytest.mark.parametrize("mode", ["fused", "bf16"])
def test_eval_fast_reports_agreement(folder_and_model, mode, tmp_path, capsys):
    root, path = folder_and_model
    out = tmp_path / "r.json"
    assert main(["eval", "--data", str(root), "--weights", str(path), "--workers", "0", "--batch-size", "5",
                 "--fast", mode, "--json", str(out)]) == 0
    fast = json.loads(out.read_text())["fast"]
    model = bagnet.load_model(path).eval()
    ref, targets = _predictions(model, root / "val")
    got, _ = _predictions(prepare_for_inference(model, **bagnet.models.INFERENCE_MODES[mode]), root / "val")
    n = len(ref)
    assert fast["mode"] == mode
    assert fast["top1_agreement"] == pytest.approx(100 * sum(a == b for a, b in zip(ref, got)) / n)
    assert fast["top1"] == pytest.approx(100 * sum(a == t for a, t in zip(got, targets)) / n)
    if mode == "fused":  # exact: the same predictions, logits equal to float rounding
        assert fast["top1_agreement"] == 100.0 and fast["max_abs_logit_diff"] < 1e-4
    else:
        assert fast["top1_agreement"] < 100.0  # the near-ties above make bfloat16 flip some
    assert "agrees with float32" in capsys.readouterr().out


def test_eval_fast_rejects_unknown_mode(folder_and_model, capsys):
    root, path = folder_and_model
    assert main(["eval", "--data", str(root), "--weights", str(path), "--fast", "plain"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a fast mode" in err
