import pytest
import torch

import bagnet
from bagnet.models._profile import count_macs

from .naive import Counter, expected_keys, naive_patch_logits, random_state_dict

PUBLISHED = ["bagnet9", "bagnet17", "bagnet33"]
PUBLISHED_Q = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33}


@pytest.mark.parametrize("name", PUBLISHED)
def test_state_dict_keys_and_shapes_match_published(name):
    with torch.device("meta"):
        model = bagnet.create_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_keys(name)


def test_num_classes_and_in_chans_override():
    with torch.device("meta"):
        model = bagnet.create_model("bagnet17", num_classes=7, in_chans=1)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_keys("bagnet17", num_classes=7, in_chans=1)


@pytest.mark.parametrize("name", PUBLISHED)
@pytest.mark.parametrize("size", [(None, None), (16, 5), (9, 30)])
def test_matches_naive_restatement(name, size):
    q = PUBLISHED_Q[name]
    h, w = q + size[0] if size[0] is not None else q, q + size[1] if size[1] is not None else q
    sd = random_state_dict(name, num_classes=13, seed=1)
    model = bagnet.create_model(name, num_classes=13).eval()
    model.load_state_dict(sd)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = naive_patch_logits(sd, name, x)
        got = model.patch_logits(x)
        pooled = model(x)
    assert got.shape == expected.shape == (2, 13, (h - q) // 8 + 1, (w - q) // 8 + 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, expected.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_gmacs_match_naive_count():
    name = "bagnet33"
    sd = random_state_dict(name)
    counter = Counter()
    naive_patch_logits(sd, name, torch.zeros(1, 3, 224, 224), counter)
    with torch.device("meta"):
        model = bagnet.create_model(name)
    assert count_macs(model, 224) == counter.macs
    assert abs(counter.macs / 1e9 - 16.26) < 0.01  # the 16.3 GMACs


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("name", bagnet.list_models())
def test_receptive_field_is_gradient_support(name):
    model = _randomize(bagnet.create_model(name, num_classes=5)).double().eval()
    q, s = model.receptive_field, model.patch_stride
    h, w = q + 2 * s + 3, q + 3 * s + 5
    # several images, so that a ReLU that happens to be off for one pixel of one image
    # cannot hide that pixel from the support
    x = torch.randn(8, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    logits = model.patch_logits(x)
    assert logits.shape[-2:] == ((h - q) // s + 1, (w - q) // s + 1)
    i, j = 1, 2
    logits[:, :, i, j].sum().backward()
    support = (x.grad.abs().sum((0, 1)) > 0).nonzero()
    top, left = support.min(0).values.tolist()
    bottom, right = support.max(0).values.tolist()
    assert (top, left, bottom, right) == (s * i, s * j, s * i + q - 1, s * j + q - 1)
    assert len(support) == q * q  # every pixel of the window matters


def test_published_geometry():
    with torch.device("meta"):
        for name, q in PUBLISHED_Q.items():
            model = bagnet.create_model(name)
            assert (model.receptive_field, model.patch_stride) == (q, 8)
        for name, q in PUBLISHED_Q.items():
            assert bagnet.create_model(name + "_slim").receptive_field == q


@pytest.mark.parametrize("q", [3, 5, 9, 17, 33, 49, 65])
def test_general_builder_reaches_patch_sizes(q):
    from bagnet.models import BagNet, kernel3_for

    with torch.device("meta"):
        model = BagNet(kernel3=kernel3_for(q), layers=(3, 4, 6, 3))
    assert model.receptive_field == q


def test_builder_rejects_bad_config():
    from bagnet.models import BagNet, kernel3_for

    with pytest.raises(ValueError, match="kernel3"):
        BagNet(layers=(1, 1, 1, 1), kernel3=(2, 0, 0, 0))
    with pytest.raises(ValueError, match="not reachable"):
        kernel3_for(21)
    with pytest.raises(ValueError, match="not reachable"):
        kernel3_for(33 + 16 * 9)  # more 3x3 blocks than stages 3 and 4 have


@pytest.mark.parametrize("name", bagnet.list_models())
def test_forward_backward_every_model(name):
    model = bagnet.create_model(name, num_classes=42).train()
    q = model.receptive_field
    x = torch.randn(2, 3, q + 8, q + 16)
    out = model(x)
    assert out.shape == (2, 42)
    out.logsumexp(1).sum().backward()
    assert not torch.isnan(out).any()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} got a zero gradient"


def test_patch_logits_mean_equals_forward_slim():
    model = _randomize(bagnet.create_model("bagnet33_slim", num_classes=10)).eval()
    x = torch.randn(3, 3, 97, 120)
    with torch.no_grad():
        torch.testing.assert_close(model.patch_logits(x).mean((2, 3)), model(x), atol=1e-5, rtol=1e-5)


def test_small_input_is_a_clear_error():
    model = bagnet.create_model("bagnet_tiny")
    with pytest.raises(ValueError, match=r"8x20 pixels.*receptive field 9x9"):
        model(torch.zeros(1, 3, 8, 20))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.zeros(1, 1, 20, 20))


def test_registry():
    names = bagnet.list_models()
    assert {"bagnet9", "bagnet17", "bagnet33", "bagnet9_slim", "bagnet17_slim", "bagnet33_slim"} <= set(names)
    assert bagnet.list_models("*_slim") == ["bagnet17_slim", "bagnet33_slim", "bagnet9_slim"]
    with pytest.raises(ValueError, match="unknown model"):
        bagnet.create_model("resnet9000")
    from bagnet.models import register_model

    with pytest.raises(ValueError, match="already registered"):

        @register_model()
        def bagnet9(**kwargs):
            pass
