"""affected_locations against the definition: perturb the pixels under a patch and see
which patch logits change."""

import pytest
import torch

from bagnet import create_model
from bagnet.models import BagNet
from bagnet.robust import affected_locations, format_share, patch_pixels
from bagnet.testing.models import randomize_batchnorm


def _models():
    yield "bagnet_tiny", lambda: create_model("bagnet_tiny", num_classes=3)  # q 9, stride 8
    yield "bagnet17_slim", lambda: create_model("bagnet17_slim", num_classes=3)  # q 17, stride 8
    # stride 4 and a receptive field of 17 with 3x3 convs in every stage
    yield "stride4", lambda: BagNet(layers=(1, 1, 1, 1), kernel3=(1, 1, 1, 0), strides=(2, 2, 1, 1), width=0.0625,
                                    num_classes=3)


@pytest.mark.parametrize("name,make", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("size,patch", [((40, 48), 7), ((33, 33), 12), ((41, 36), 1)])
def test_changed_logits_are_exactly_the_affected_locations(name, make, size, patch):
    torch.manual_seed(0)
    model = randomize_batchnorm(make())
    geo = affected_locations(model, size, patch)
    h, w = size
    x = torch.randn(1, 3, h, w)
    tops = sorted({*range(0, h - patch + 1, 3), h - patch})
    lefts = sorted({*range(0, w - patch + 1, 3), w - patch})
    corners = [(t, left) for t in tops for left in lefts]
    batch = x.repeat(len(corners), 1, 1, 1)
    for k, (t, left) in enumerate(corners):
        batch[k, :, t:t + patch, left:left + patch] += 5 * torch.randn(3, patch, patch)
    with torch.no_grad():
        clean = model.patch_logits(x)
        changed = (model.patch_logits(batch) - clean).abs().amax(1) > 1e-5  # [K, H', W']
    assert changed.shape[1:] == geo.grid
    for k, (t, left) in enumerate(corners):
        predicted = geo.mask(t, left)
        assert not (changed[k] & ~predicted).any(), f"{name}: patch at {(t, left)} changed an unpredicted location"
        # Tight along each axis: the changed rows and columns span the predicted ranges. Not
        # for one-pixel patches: strided 1x1 convolutions skip some pixels of a window.
        rows, cols = changed[k].any(1).nonzero()[:, 0], changed[k].any(0).nonzero()[:, 0]
        if predicted.any() and patch > 1:
            assert (rows.min().item(), rows.max().item() + 1) == geo.rows[t], (name, t)
            assert (cols.min().item(), cols.max().item() + 1) == geo.cols[left], (name, left)
        elif not predicted.any():
            assert not changed[k].any()


def test_window_is_the_largest_affected_extent():
    model = create_model("bagnet17_slim", num_classes=3)
    geo = affected_locations(model, 224, 32)
    # (32 + 17 - 1) / 8 = 6 rows for a patch aligned badly, the window PatchGuard uses.
    assert geo.window == (6, 6)
    assert geo.grid == (26, 26)
    assert len(geo.rows) == 224 - 32 + 1


@pytest.mark.parametrize("spec,side", [("1%", 23), ("2%", 32), ("3%", 39), (0.02, 32), (32, 32), ("32px", 32),
                                       ("17", 17)])
def test_patch_sizes_in_pixels_or_area(spec, side):
    assert patch_pixels(spec, 224) == side


def test_area_fraction_covers_at_least_that_area():
    for frac in (0.005, 0.01, 0.02, 0.03, 0.1):
        for h, w in ((112, 112), (100, 150)):
            p = patch_pixels(frac, (h, w))
            assert p * p >= frac * h * w > (p - 1) ** 2


@pytest.mark.parametrize("spec", ["0%", "big", 0, 300, "150%", True])
def test_bad_patch_sizes_are_refused(spec):
    with pytest.raises(ValueError, match="patch"):
        patch_pixels(spec, 224)


def test_models_without_geometry_are_refused():
    with pytest.raises(ValueError, match="not a BagNet"):
        affected_locations(torch.nn.Linear(2, 2), 32, 4)


@pytest.mark.parametrize("fraction,text", [(1.0, "100%"), (0.25, "25%"), (0.1, "10%"), (0.0213, "2.1%"),
                                           (0.02, "2%"), (0.005, "0.5%"), (0.0004, "less than 0.1%"),
                                           (0.9996, "99%"), (0.0996, "10%")])
def test_shares_of_the_image_read_as_people_write_them(fraction, text):
    assert format_share(fraction) == text
