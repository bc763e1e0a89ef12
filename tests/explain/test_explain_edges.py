"""explain() at its edges: what the maps cost and the limit on it, progress, tiny images,
and which patches are listed."""

import html
import itertools
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import bagnet
from bagnet.explain import EvidenceMapper, MapCostError, explain

from .conftest import randomized

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def model():
    m = randomized("bagnet_tiny", num_classes=5, seed=51)
    m.pretrained_cfg.update(classes=list("abcde"), img_size=24, mean=MEAN, std=STD)
    return m


def noise(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def photo():
    return noise(30, 45, seed=3)  # 45 wide, 30 high: resized to 36 x 24


def measured(fn):
    """The multiply-adds ``fn()`` really spends, counted by PyTorch's FlopCounterMode (2 per
    MAC). Calls given no ``mapper`` also count folding the weights once, so the tests below
    measure explain() with a prepared one."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops() // 2, out


def refused(*args, **kwargs):
    """explain(*args, **kwargs) raises a MapCostError; returns the multiply-adds it spent first."""
    def call():
        with pytest.raises(MapCostError):
            explain(*args, **kwargs)

    return measured(call)[0]


def normalized(image, size=24):
    """By hand: resize the short side (torchvision's Resize), normalize."""
    from torchvision.transforms.v2 import functional as TF

    t = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    return TF.normalize(TF.resize(t, [size], antialias=True), MEAN, STD)


# -- 1. what it costs, and the limit --------------------------------------------------------


@pytest.fixture(scope="module")
def mapper(model):
    return EvidenceMapper(model)


def test_the_limit_is_the_work_measured_and_refuses_before_computing(model, mapper, photo):
    work, _ = measured(lambda: explain(model, photo, classes=[1, 3], k=2, max_macs=None, mapper=mapper))
    assert work > 0
    explain(model, photo, classes=[1, 3], k=2, max_macs=work, mapper=mapper)  # exactly at the limit: fine
    assert refused(model, photo, classes=[1, 3], max_macs=work - 1, mapper=mapper) == 0  # before any pass
    with pytest.raises(MapCostError) as err:
        explain(model, photo, classes=[1, 3], max_macs=work - 1)
    e = err.value
    assert isinstance(e, ValueError) and e.macs == work and e.limit == work - 1
    msg = str(e)
    assert "45x30 px (width x height) resized to 36x24" in msg and "2 classes at map stride 1" in msg
    assert "--" not in msg and "--stride native" in e.cli_message and "--max-gmacs" in e.cli_message
    # the cheaper options it names hold: the native stride costs what it says ...
    native_mapper = EvidenceMapper(model, stride="native")
    native, _ = measured(lambda: explain(model, photo, classes=[1, 3], max_macs=None, mapper=native_mapper))
    said = float(re.search(r"stride='native' \(about ([\d.e+-]+) GMACs\)", msg).group(1))
    assert said == pytest.approx(native / 1e9, rel=0.05)
    # ... and img_size=N is the largest short side within the limit
    n = int(re.search(r"img_size=(\d+) or less", msg).group(1))
    at_n, _ = measured(lambda: explain(model, photo, classes=[1, 3], img_size=n, max_macs=None, mapper=mapper))
    above, _ = measured(lambda: explain(model, photo, classes=[1, 3], img_size=n + 1, max_macs=None, mapper=mapper))
    assert at_n <= work - 1 < above
    explain(model, photo, classes=[1, 3], img_size=n, max_macs=work - 1)


def test_a_long_thin_image_is_refused_where_a_normal_one_is_not(model, mapper, photo):
    strip = noise(10, 4000, seed=4)  # 4000 wide, 10 high
    strip_work, _ = measured(lambda: explain(model, strip, max_macs=None, mapper=mapper))
    photo_work, _ = measured(lambda: explain(model, photo, max_macs=None, mapper=mapper))
    assert strip_work > photo_work
    limit = (strip_work + photo_work) // 2
    explain(model, photo, max_macs=limit)
    with pytest.raises(MapCostError, match=r"4000x10 px \(width x height\).*img_size=\d+ or less"):
        explain(model, strip, max_macs=limit)


def test_the_default_limit_stops_a_huge_map_of_the_default_architecture_at_once():
    m = randomized("bagnet33_w25", num_classes=10, seed=52)
    m.pretrained_cfg.update(img_size=192)
    image = noise(30, 40)
    # a 4:3 photo at the model's own size is far below the default limit ...
    mapper = EvidenceMapper(m)
    assert mapper.logits_macs((192, 256)) + mapper.macs((192, 256), 3) < bagnet.explain._cost.DEFAULT_MAX_MACS / 20
    # ... one resized to a short side of 2000 px is refused before any work (5.7e12 MACs)
    assert refused(m, image, img_size=2000, mapper=mapper) == 0
    with pytest.raises(MapCostError, match=r"resized to 2666x2000.*above the limit of 4,000 GMACs"):
        explain(m, image, img_size=2000, mapper=mapper)


def test_progress_counts_the_work_up_to_its_total(model, photo):
    calls = []
    mapper = EvidenceMapper(model, tile_size=7)  # many passes
    work, e = measured(lambda: explain(model, photo, classes=[0, 2], mapper=mapper,
                                       progress=lambda d, t: calls.append((d, t))))
    assert calls[0] == (0, work) and calls[-1] == (work, work) and len(calls) > 10
    assert all(t == work for _, t in calls)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
    torch.testing.assert_close(e.evidence, explain(model, photo, classes=[0, 2]).evidence, atol=1e-5, rtol=1e-5)


def test_with_progress_a_large_map_runs_in_about_ten_passes(model, monkeypatch):
    import bagnet.explain._maps as maps

    monkeypatch.setattr(maps, "PROGRESS_PASS_MEMORY", 1)
    x = torch.randn(1, 3, 60, 70, generator=torch.Generator().manual_seed(0))
    mapper = EvidenceMapper(model)
    calls = []
    got = mapper(x, [0, 4], progress=lambda d, t: calls.append((d, t)))
    assert 8 <= len(calls) - 1 <= 16  # passes, after the call before the first
    torch.testing.assert_close(got, mapper(x, [0, 4]), atol=1e-5, rtol=1e-5)


# -- 2. tiny images -------------------------------------------------------------------------


@pytest.mark.parametrize("size,img_size,warning", [
    ((1, 1), None, "upscaled 24x from 1x1 px (smaller than one 9x9 px patch)"),
    ((6, 8), None, "upscaled 4.0x from 8x6 px (smaller than one 9x9 px patch)"),  # 6 < 9, though 4 x 6 = 24
    ((9, 12), None, None),  # 9 >= 9 and 4 x 9 >= 24
    ((15, 20), 64, "upscaled 4.3x from 20x15 px (less than 1/4 of the model's input size)"),  # 4 x 15 < 64
    ((16, 20), 64, None),  # 4 x 16 = 64
    ((30, 45), None, None),  # shrunk
])
def test_a_much_upscaled_image_is_flagged(model, size, img_size, warning):
    e = explain(model, noise(*size), classes="top2", img_size=img_size)
    d = e.to_dict()
    if warning is None:
        assert e.warnings == [] and d["warnings"] == []
        return
    assert len(e.warnings) == 1 and e.warnings[0].startswith(warning)
    assert "interpolated pixels" in e.warnings[0] and d["warnings"] == e.warnings
    fig, _ = e.plot()
    assert warning in fig._suptitle.get_text().replace("\n", " ")
    assert html.escape(warning) in e._repr_html_()
    e = explain(model, noise(*size), classes=[], true_class=1, img_size=img_size)  # the misclassification figure
    fig, _ = e.plot()
    assert warning in fig._suptitle.get_text().replace("\n", " ")


# -- 3. the listed patches are those the logit averages ---------------------------------------


@pytest.mark.parametrize("stride", [1, "native", 2])
def test_listed_patches_are_the_models_own_patches(model, photo, stride):
    x = normalized(photo)
    with torch.no_grad():
        own = model.patch_logits(x[None])[0]  # the logit is the mean of this map
        torch.testing.assert_close(model(x[None])[0], own.mean(dim=(-2, -1)))
    q, s = 9, 8
    grid = {(s * j, s * i, s * j + q, s * i + q) for i in range(own.shape[1]) for j in range(own.shape[2])}
    e = explain(model, photo, classes="top3", stride=stride, k=50, non_overlapping=False)
    torch.testing.assert_close(e.logits, own.mean(dim=(-2, -1)), atol=1e-4, rtol=1e-4)
    for c, patches in zip(e.classes, e.patches):
        # all of the model's patches, each once, each with its evidence, best first
        assert {p.box for p in patches} == grid and len(patches) == len(grid)
        for p in patches:
            x0, y0, _, _ = p.box
            assert p.score == pytest.approx(float(own[c, y0 // s, x0 // s]), abs=1e-4)
        assert [p.score for p in patches] == sorted((p.score for p in patches), reverse=True)
    d = e.to_dict()
    assert d["patches_from"] == "model"
    assert not any(p["padded"] for c in d["explained"] for p in c["patches"])


def test_map_patches_include_padded_windows_and_say_so(model, photo):
    e = explain(model, photo, classes=[2], k=40, non_overlapping=False, patch_source="map")
    h, w = 24, 36
    flags = []
    for p, rec in zip(e.patches[0], e.to_dict()["explained"][0]["patches"]):
        cx, cy = p.center  # the 9 x 9 window centred there, by hand
        outside = cx - 4 < 0 or cy - 4 < 0 or cx + 5 > w or cy + 5 > h
        assert rec["padded"] is outside
        flags.append(outside)
    assert any(flags) and e.to_dict()["patches_from"] == "map"


def test_bad_patch_source(model, photo):
    with pytest.raises(ValueError, match="patch_source"):
        explain(model, photo, patch_source="inside")
