"""The captum-ready rewrite of reference networks and the per-cell attributions."""

import pytest
import torch
import torchvision
from torch import nn

from bagnet.analysis import UnsupportedModelError, attribution_cells, captum_ready, check_lrp_supported
from bagnet.analysis._captum_ready import CAPTUM_TESTED, captum_internals

from .conftest import classifier


def test_rewrite_keeps_the_function_and_makes_lrp_exact(resnet):
    net = resnet.model
    ready = captum_ready(net)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ready(x), net(x))
    check_lrp_supported(ready)
    relus = [m for m in ready.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) and not any(m.inplace for m in relus)
    # For ReLU networks, LRP-epsilon with epsilon -> 0 is gradient x input (Ancona et al., 2018).
    from captum.attr import LRP

    EpsilonRule = captum_internals().EpsilonRule
    for m in ready.modules():
        if not list(m.children()) and not isinstance(m, nn.ReLU):
            m.rule = EpsilonRule(epsilon=1e-9)
    t = torch.tensor([0, 2])
    lrp = LRP(ready).attribute(x.clone().requires_grad_(), target=t)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net(xg).gather(1, t[:, None]).sum(), xg)
    torch.testing.assert_close(lrp, g * x, rtol=1e-3, atol=1e-5)


def test_unsupported_layers_are_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(UnsupportedModelError, match="SiLU"):
        check_lrp_supported(captum_ready(net))
    clf = classifier("silu", net.eval())
    with pytest.raises(UnsupportedModelError, match="SiLU"):
        attribution_cells(clf, torch.rand(1, 3, 16, 16), torch.tensor([0]), "lrp")


def test_occlusion_cells_are_the_masking_differences(resnet):
    """Occlusion with 8x8 windows on the 8x8 grid: each cell's score is (up to the 64 pixels
    it is spread over) the logit change from masking that cell alone, computed here by hand."""
    x = torch.rand(1, 3, 24, 24)
    y = torch.tensor([1])
    got = attribution_cells(resnet, x, y, "occlusion", batch_size=4)
    with torch.no_grad():
        base = resnet.full_logits(x)[0, 1]
        for i in range(3):
            for j in range(3):
                m = x.clone()
                m[..., 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = x.mean(dim=(2, 3), keepdim=True)
                want = 3 * 64 * (base - resnet.full_logits(m)[0, 1])  # summed over channels and pixels
                assert float(got[0, i, j]) == pytest.approx(float(want), rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "deeplift", "lrp"])
def test_gradient_methods_give_one_score_per_cell(resnet, method):
    x = torch.rand(2, 3, 40, 40)
    cells = attribution_cells(resnet, x, torch.tensor([0, 1]), method, ig_steps=4)
    assert cells.shape == (2, 5, 5) and torch.isfinite(cells).all() and cells.abs().sum() > 0


def test_integrated_gradients_are_complete(resnet):
    """IG sums to f(x) - f(baseline) (here the channel-mean image) up to the integration error."""
    x = torch.rand(1, 3, 32, 32)
    cells = attribution_cells(resnet, x, torch.tensor([2]), "integrated_gradients", ig_steps=64)
    with torch.no_grad():
        diff = resnet.full_logits(x)[0, 2] - resnet.full_logits(x.mean(dim=(2, 3), keepdim=True).expand_as(x))[0, 2]
    assert float(cells.sum()) == pytest.approx(float(diff), rel=0.05, abs=1e-3)


class _ShapeChecking(nn.Module):
    """Python control flow on the input's shape, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[-1] < 8:
            raise ValueError("too small")
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_untraceable_models_fall_back():
    """Networks fx cannot trace keep saliency, IG, occlusion and Grad-CAM; DeepLift and LRP
    are refused with a reason (and left out by spatial-sensitivity)."""
    clf = classifier("odd", _ShapeChecking().eval())
    x, y = torch.rand(1, 3, 16, 16), torch.tensor([0])
    for method in ("saliency", "integrated_gradients", "occlusion", "gradcam"):
        assert attribution_cells(clf, x, y, method, ig_steps=2).shape == (1, 2, 2)
    for method in ("deeplift", "lrp"):
        with pytest.raises(UnsupportedModelError):
            attribution_cells(clf, x, y, method)
    assert torchvision  # torchvision classifiers are the usual references


def test_captum_internals_we_rely_on_are_still_there():
    """captum exports no addition module, epsilon rule or table of LRP rules; bagnet reaches
    into captum for them (analysis._captum_ready.captum_internals). When captum moves or changes
    them, this test says which, and pyproject.toml's pin (CAPTUM_TESTED) must be revisited."""
    import captum
    from packaging.specifiers import SpecifierSet

    assert captum.__version__ in SpecifierSet(CAPTUM_TESTED), (
        f"captum {captum.__version__} is outside the tested range {CAPTUM_TESTED}: rerun these tests and update "
        "CAPTUM_TESTED and the [analysis] extra")
    c = captum_internals()
    a, b = torch.rand(2, 3), torch.rand(2, 3)
    torch.testing.assert_close(c.Addition_Module()(a, b), a + b)
    assert c.EpsilonRule(epsilon=0.5).STABILITY_FACTOR == 0.5
    for layer in (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, c.Addition_Module):
        assert layer in c.SUPPORTED_LAYERS_WITH_RULES, f"captum's LRP has no default rule for {layer.__name__} any more"
    assert set(c.SUPPORTED_NON_LINEAR_LAYERS) >= {nn.ReLU, nn.Dropout}


def test_a_missing_captum_internal_is_one_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum.attr._utils.lrp_rules", None)  # as if captum had moved it
    with pytest.raises(ImportError, match=r"no longer has the internals .*pip install 'captum>=0\.7,<0\.10'"):
        captum_internals()


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")
def test_bagnets_are_rewritten_for_deeplift_and_lrp(bag9):
    """The fx-traceable BagNet computes the same logits; LRP-epsilon with epsilon -> 0 is then
    gradient x input and DeepLift sums to f(x) - f(baseline) (no max pooling in a BagNet)."""
    torch.manual_seed(0)
    from captum.attr import LRP, DeepLift

    net = bag9.model
    ready = captum_ready(net)
    check_lrp_supported(ready)
    x = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(ready(x), net(x))
    EpsilonRule = captum_internals().EpsilonRule
    for m in ready.modules():
        if not list(m.children()) and not isinstance(m, nn.ReLU):
            m.rule = EpsilonRule(epsilon=1e-9)
    t = torch.tensor([0, 2])
    lrp = LRP(ready).attribute(x.clone().requires_grad_(), target=t)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net(xg).gather(1, t[:, None]).sum(), xg)
    torch.testing.assert_close(lrp, g * x, rtol=1e-3, atol=1e-5)
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    dl = DeepLift(captum_ready(net)).attribute(x, baselines=base, target=t)
    with torch.no_grad():
        want = (net(x) - net(base)).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(dl.sum((1, 2, 3)), want, rtol=1e-3, atol=1e-4)


def test_gradcam_of_a_bagnet_is_its_patch_evidence(bag9):
    """A BagNet's logit is the mean of its patch evidence, so the Grad-CAM weights are the
    class's classifier row / (h w) and the map is (patch logit - bias) / (h w), exactly."""
    torch.manual_seed(0)
    from bagnet.analysis import gradcam_map

    x, y = torch.rand(2, 3, 40, 48), torch.tensor([1, 2])
    cam = gradcam_map(bag9, x, y)
    with torch.no_grad():
        patches = bag9.model.patch_logits(bag9.normalize(x))[torch.arange(2), y]
    bias = bag9.model.fc.bias[y][:, None, None]
    h, w = patches.shape[-2:]
    torch.testing.assert_close(cam, (patches - bias) / (h * w), rtol=1e-4, atol=1e-6)


def test_gradcam_of_a_resnet_against_hooks(resnet):
    torch.manual_seed(0)
    from bagnet.analysis import gradcam_layer, gradcam_map

    assert gradcam_layer(resnet.model, (40, 40)) == "layer4"
    assert gradcam_layer(torchvision.models.mobilenet_v2(num_classes=3).eval(), (40, 40)) == "features"
    x, y = torch.rand(2, 3, 40, 40), torch.tensor([0, 2])
    seen = {}
    handle = resnet.model.layer4.register_forward_hook(lambda m, i, o: seen.update(a=o))
    try:
        out = resnet.model(resnet.normalize(x))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), seen["a"])
    want = (grad.mean((2, 3), keepdim=True) * seen["a"]).sum(1)  # unclipped Grad-CAM
    torch.testing.assert_close(gradcam_map(resnet, x, y), want.detach(), rtol=1e-4, atol=1e-6)


def test_upsampling_is_bilinear_between_the_centres():
    torch.manual_seed(0)
    import torch.nn.functional as F

    from bagnet.analysis import upsample_to_pixels

    maps = torch.rand(2, 3, 5)
    H, W = 24, 40
    centres = ((torch.arange(3) + 0.5) * H / 3 - 0.5, (torch.arange(5) + 0.5) * W / 5 - 0.5)
    want = F.interpolate(maps[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(upsample_to_pixels(maps, (H, W), centres), want)
    # A BagNet's entry (i, j) sits on the centre of its patch (s i + (q - 1) / 2), edges held.
    one = torch.zeros(1, 4, 4)
    one[0, 1, 2] = 1.0
    up = upsample_to_pixels(one, (40, 40), (8 * torch.arange(4) + 4.0, 8 * torch.arange(4) + 4.0))
    assert up[0, 12, 20] == 1.0 and up[0, 12, 16] == 0.5 and up[0, 4, 20] == 0.0
    assert up[0, 16, 24] == pytest.approx(0.25)


def test_bagnet_occlusion_is_the_masking_difference(bag9):
    """The crop-based occlusion of a BagNet: cell (i, j) holds channels x 64 x (logit drop
    when that 8x8 cell alone is masked), computed here by masking the whole image; with
    overlapping windows it is captum's Occlusion."""
    from captum.attr import Occlusion

    from bagnet.analysis import bagnet_occlusion

    x, y = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])
    got = attribution_cells(bag9, x, y, "occlusion", batch_size=5)
    with torch.no_grad():
        for b in range(2):
            base = bag9.full_logits(x[b : b + 1])[0, y[b]]
            for i in range(3):
                for j in range(4):
                    m = x[b : b + 1].clone()
                    m[..., 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = x[b].mean(dim=(1, 2))[:, None, None]
                    want = 3 * 64 * (base - bag9.full_logits(m)[0, y[b]])
                    # 192 x a float32 difference of logits: ~1e-6 relative error, scaled up
                    assert float(got[b, i, j]) == pytest.approx(float(want), rel=1e-3, abs=2e-3)
    fast = bagnet_occlusion(bag9, x, y, window=12, stride=4, batch_size=7)
    xn = bag9.normalize(x)
    captum_attr = Occlusion(bag9.model).attribute(
        xn, sliding_window_shapes=(3, 12, 12), strides=(3, 4, 4), target=y,
        baselines=bag9.normalize(x.mean(dim=(2, 3), keepdim=True).expand_as(x)))
    torch.testing.assert_close(fast, captum_attr.sum(1), rtol=1e-3, atol=1e-4)
