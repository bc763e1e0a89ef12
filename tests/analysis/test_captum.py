"""The captum-ready rewrite of reference networks and the per-cell attributions."""

import pytest
import torch
import torchvision
from torch import nn

from bagnet.analysis import UnsupportedModelError, attribution_cells, captum_ready, check_lrp_supported
from bagnet.analysis._captum import CAPTUM_TESTED, captum_internals

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


def test_untraceable_models_fall_back(bag9):
    """BagNets check input sizes in Python, so fx cannot trace them: saliency still works."""
    cells = attribution_cells(bag9, torch.rand(1, 3, 40, 40), torch.tensor([0]), "saliency")
    assert cells.shape == (1, 5, 5)
    with pytest.raises(UnsupportedModelError):
        attribution_cells(bag9, torch.rand(1, 3, 40, 40), torch.tensor([0]), "lrp")
    assert torchvision  # torchvision classifiers are the usual references


def test_captum_internals_we_rely_on_are_still_there():
    """captum exports no addition module, epsilon rule or table of LRP rules; bagnet reaches
    into captum for them (analysis._captum.captum_internals). When captum moves or changes
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
