import subprocess
import sys

import numpy as np
import pytest
import torch

import bagnet
from bagnet.models import save_model_file
from bagnet.testing.models import randomize_batchnorm

timm = pytest.importorskip("timm")
timm_data = pytest.importorskip("timm.data")
timm_optim = pytest.importorskip("timm.optim")


def _pair(name, **kwargs):
    """The same model built by bagnet and through timm (same seed, so the same init)."""
    torch.manual_seed(0)
    ours = bagnet.create_model(name, **kwargs)
    torch.manual_seed(0)
    theirs = timm.create_model(name, **kwargs)
    return randomize_batchnorm(ours, seed=1), randomize_batchnorm(theirs, seed=1)


@pytest.mark.parametrize("name", bagnet.list_models())
def test_every_bagnet_builds_through_timm_with_our_outputs(name):
    ours, theirs = _pair(name, num_classes=42)
    assert type(theirs) is type(ours)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for k in sd_ours:
        assert torch.equal(sd_ours[k], sd_theirs[k]), k
    q = ours.receptive_field
    x = torch.randn(2, 3, q + 7, q + 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ours(x)
        assert expected.shape == (2, 42)
        torch.testing.assert_close(theirs(x), expected, rtol=0, atol=0)
        features = theirs.forward_features(x)
        tol = 1e-5 * float(expected.abs().max())  # float32 sums in another order
        torch.testing.assert_close(theirs.forward_head(features), expected, rtol=0, atol=tol)
        pooled = theirs.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean((2, 3)))
        # the head is the mean of the patch evidence, computed independently
        torch.testing.assert_close(theirs.patch_logits(x).mean((2, 3)), expected, rtol=0, atol=tol)
    assert theirs.get_classifier() is theirs.fc
    cfg = theirs.pretrained_cfg
    assert cfg["architecture"] == name and cfg["num_classes"] == 42 and cfg["classifier"] == "fc"
    assert cfg["first_conv"] == "conv1" and cfg["min_input_size"] == (3, q, q)


def test_pretrained_through_timm_is_the_shipped_model_with_its_data_config():
    ours = bagnet.create_model("bagnet17_slim", pretrained="imagenette").eval()
    for spec in ("bagnet17_slim", "bagnet17_slim.imagenette"):
        theirs = timm.create_model(spec, pretrained=True).eval()
        for k, v in ours.state_dict().items():
            assert torch.equal(theirs.state_dict()[k], v), k
    assert "bagnet17_slim.imagenette" in timm.list_pretrained("bagnet*")
    assert "bagnet33.imagenet" in timm.list_pretrained("bagnet*")
    data = timm_data.resolve_data_config(model=theirs)
    # the model file's own preprocessing, not timm's ImageNet defaults
    assert data["input_size"] == (3, 112, 112)
    # bagnet's whole-image preprocessing: the whole (square) image at 112 px, no crop
    assert data["interpolation"] == "bilinear" and data["crop_pct"] == 1.0 and data["crop_mode"] == "center"
    assert list(data["mean"]) == list(ours.pretrained_cfg["mean"])
    cfg = theirs.pretrained_cfg
    assert list(cfg["label_names"]) == ours.pretrained_cfg["classes"]
    assert cfg["label_descriptions"]["n01440764"] == "tench"
    # timm's eval transform gives the input bagnet's one preprocessing gives, for a square image
    from PIL import Image

    from bagnet.data.transforms import Preprocessing

    ours_pre = Preprocessing.from_cfg(ours.pretrained_cfg)
    for h, w in ((150, 150), (150, 130)):
        img = Image.fromarray((torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
        t_theirs = timm_data.create_transform(**data)(img)
        t_ours = ours_pre(img)
        if h == w:
            assert t_theirs.shape == t_ours.shape == (3, 112, 112)
            # PIL's and torch's antialiased bilinear resampling differ by rounding; the geometry is the same
            assert (t_theirs - t_ours).abs().mean() < 0.05
        else:  # timm has no whole-image mode: it keeps the central square (documented in timm_data_config)
            assert t_theirs.shape == (3, 112, 112) and t_ours.shape == (3, 129, 112)


def test_a_timm_made_model_keeps_bagnets_whole_image_on_bagnets_paths(tmp_path):
    """timm's pretrained_cfg says crop_pct 1.0 (a square centre crop, timm's nearest
    spelling); bagnet's own paths (explain, export metadata, analyses) must still take the
    whole image, as the model card's accuracy was measured."""
    from PIL import Image

    import bagnet.explain
    from bagnet.data.transforms import Preprocessing
    from bagnet.export import export_metadata

    theirs = timm.create_model("bagnet17_slim.imagenette", pretrained=True).eval()
    assert timm_data.resolve_data_config(model=theirs)["crop_pct"] == 1.0  # what timm's transforms need
    pre = Preprocessing.from_cfg(theirs.pretrained_cfg)
    assert pre.crop_pct is None and pre.img_size == 112
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), np.uint8))
    assert pre(img).shape == (3, 112, 149)  # short side 112, aspect kept: 200 * 112 / 150 = 149.3
    result = bagnet.explain.explain(theirs, img, stride="native")
    assert tuple(result.image.shape[-2:]) == (112, 149)
    assert export_metadata(theirs, patch_logits=False)["crop_pct"] is None
    # saved and loaded back by bagnet: still the whole image
    theirs.save_pretrained(tmp_path / "m")
    assert Preprocessing.from_cfg(bagnet.create_model(str(tmp_path / "m")).pretrained_cfg).crop_pct is None


def test_untrained_model_with_a_tag_gets_the_tags_data_config():
    m = timm.create_model("bagnet17_slim.imagenette", pretrained=False)
    assert m.pretrained_cfg["input_size"] == (3, 112, 112) and m.pretrained_cfg["tag"] == "imagenette"
    assert m.num_classes == 1000  # no weights, so the default head


def test_pretrained_cfg_overlay_file_loads_a_local_model_file(tmp_path):
    src = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=3))
    path = save_model_file(tmp_path / "m.pt", src, {"classes": ["a", "b", "c"], "img_size": 48})
    m = timm.create_model("bagnet_tiny", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert m.num_classes == 3 and list(m.pretrained_cfg["label_names"]) == ["a", "b", "c"]
    assert timm_data.resolve_data_config(model=m)["input_size"] == (3, 48, 48)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), src.eval()(x))


def test_local_dir_model_folder_loads_its_weights(tmp_path):
    """``timm.create_model("local-dir:RUN/model", pretrained=True)``: the folder bagnet writes."""
    src = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=3))
    folder = bagnet.save_pretrained(src, tmp_path / "run" / "model", {"classes": ["a", "b", "c"], "img_size": 48})
    m = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert m.num_classes == 3 and list(m.pretrained_cfg["label_names"]) == ["a", "b", "c"]
    assert timm_data.resolve_data_config(model=m)["input_size"] == (3, 48, 48)
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), src.eval()(x), rtol=0, atol=0)
    # without pretrained: the folder's architecture, untrained
    untrained = timm.create_model(f"local-dir:{folder}", pretrained=False)
    assert untrained.num_classes == 3 and not torch.equal(untrained.fc.weight, src.fc.weight)


def test_reset_classifier_and_feature_extractor():
    m = timm.create_model("bagnet_tiny", num_classes=5).eval()
    m.pretrained_cfg = {**m.pretrained_cfg, "classes": list("abcde")}
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        features = m.forward_head(m.forward_features(x), pre_logits=True)
        m.reset_classifier(7)
        assert m(x).shape == (2, 7) and m.patch_logits(x).shape[1] == 7 and m.num_classes == 7
        assert m.pretrained_cfg["classes"] is None  # the old names no longer fit the head
        m.reset_classifier(0)
        torch.testing.assert_close(m(x), features)
    with pytest.raises(ValueError, match="no classifier"):
        m.patch_logits(x)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, global_pool="max")
    f = timm.create_model("bagnet_tiny", num_classes=0).eval()
    assert f(x).shape == (2, f.num_features)


def test_timm_optimizer_trains_every_parameter():
    m = timm.create_model("bagnet_tiny", num_classes=3, drop_rate=0.0)  # what timm's train.py passes
    opt = timm_optim.create_optimizer_v2(m, "sgd", lr=0.1, weight_decay=1e-4)
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 40, 40)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    opt.step()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"drop_path_rate": 0.1}, "drop_path_rate"), ({"features_only": True}, "features_only"),
     ({"global_pool": "max"}, "global_pool")],
)
def test_unsupported_timm_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("bagnet_tiny", **kwargs)


@pytest.mark.slow  # a fresh interpreter imports torch, bagnet and timm
def test_registration_when_timm_is_imported_after_bagnet():
    code = (
        "import sys, bagnet\n"
        "assert 'timm' not in sys.modules\n"
        "import timm\n"
        "m = timm.create_model('bagnet_tiny', num_classes=3)\n"
        "print(type(m).__name__, m.num_classes)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["BagNet", "3"]
