"""The one-pass evidence map against the crop-by-crop definition."""

import copy

import pytest
import torch
import torch.nn.functional as F

import bagnet
from bagnet.explain import EvidenceMapper, evidence_map, evidence_map_reference, map_geometry
from bagnet.explain._phases import PhaseNet

from .conftest import randomized


def assert_exact(got, expected):
    """The issue's tolerance: max abs difference <= 1e-4 * max |logit|."""
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    assert (got - expected).abs().max().item() <= 1e-4 * scale


def images(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_reference_is_the_definition(tiny):
    # The reference, restated by hand for a few pixels: pad by (q-1)/2, logits of the
    # q x q crop centred at (y, x).
    x = images(1, 3, 13, 17)
    q = tiny.receptive_field
    ref = evidence_map_reference(tiny, x, classes=[5, 2])
    padded = F.pad(x, (4, 4, 4, 4))
    for y, xx in [(0, 0), (12, 16), (6, 3), (0, 16)]:
        with torch.no_grad():
            want = tiny(padded[:, :, y : y + q, xx : xx + q])[0, [5, 2]]
        torch.testing.assert_close(ref[0, :, y, xx], want)


@pytest.mark.parametrize("name,size", [("bagnet_tiny", (21, 26)), ("bagnet17_slim", (19, 24))])
def test_full_map_equals_reference(name, size):
    model = randomized(name, num_classes=5, seed=3)
    x = images(2, 3, *size, seed=4)
    got = evidence_map(model, x)
    assert got.dtype == torch.float32 and got.shape == (2, 5, *size)
    assert_exact(got, evidence_map_reference(model, x))


def test_bagnet33_class_subset_equals_reference_on_borders_and_sample(slim33):
    h, w = 35, 30
    x = images(1, 3, h, w, seed=5)
    classes = [4, 1]
    got = evidence_map(slim33, x, classes=classes)
    assert got.shape == (1, 2, h, w)
    # every border pixel (where the padding matters) and a random sample of the interior
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    border = (ys < 2) | (ys >= h - 2) | (xs < 2) | (xs >= w - 2)
    inner = torch.nonzero(~border)[torch.randperm(int((~border).sum()), generator=torch.Generator().manual_seed(0))[:60]]
    pixels = torch.cat([torch.nonzero(border), inner])
    ref = evidence_map_reference(slim33, x, classes=classes, pixels=pixels)
    assert_exact(got[:, :, pixels[:, 0], pixels[:, 1]], ref)


def test_native_stride_is_patch_logits(slim33):
    x = images(2, 3, 61, 50, seed=6)
    with torch.no_grad():
        unpadded = slim33.patch_logits(x)
        padded = slim33.patch_logits(F.pad(x, (16, 16, 16, 16)))
    assert_exact(evidence_map(slim33, x, stride="native", pad_value=None), unpadded)
    native = evidence_map(slim33, x, stride="native")
    assert_exact(native, padded)
    # and the native map is the full map at every 8th pixel
    assert_exact(native, evidence_map(slim33, x)[:, :, ::8, ::8])


@pytest.mark.parametrize("stride,pad_value", [(2, 0.0), (4, None), (3, 0.0), (6, None), (8, 0.7)])
def test_integer_strides_equal_reference(tiny, stride, pad_value):
    x = images(1, 3, 23, 18, seed=7)
    got = evidence_map(tiny, x, stride=stride, classes=[0, 6], pad_value=pad_value)
    assert got.shape[-2:] == map_geometry(tiny, (23, 18), stride, padded=pad_value is not None).map_size
    assert_exact(got, evidence_map_reference(tiny, x, stride=stride, classes=[0, 6], pad_value=pad_value))


def test_unpadded_full_map_and_pad_value(tiny):
    x = images(1, 3, 20, 15, seed=8)
    unpadded = evidence_map(tiny, x, pad_value=None)
    assert unpadded.shape[-2:] == (20 - 8, 15 - 8)
    assert_exact(unpadded, evidence_map_reference(tiny, x, pad_value=None))
    assert_exact(evidence_map(tiny, x, pad_value=-1.5), evidence_map_reference(tiny, x, pad_value=-1.5))


def test_image_smaller_than_patch_is_fine_when_padded(tiny):
    x = images(3, 5, 4, seed=9)  # one [C, H, W] image, smaller than q = 9
    got = evidence_map(tiny, x)
    assert got.shape == (7, 5, 4)
    assert_exact(got, evidence_map_reference(tiny, x))


@pytest.mark.parametrize("model,stride,tiles", [("tiny", 1, (5, 16)), ("tiny", 2, (3,)), ("slim33", 1, (20,)),
                                                ("slim33", "native", (2,))])
def test_forced_tiles_equal_untiled(request, model, stride, tiles):
    model = request.getfixturevalue(model)
    x = images(2, 3, 37, 30, seed=10)
    whole = evidence_map(model, x, stride=stride)
    for tile in tiles:
        torch.testing.assert_close(evidence_map(model, x, stride=stride, tile_size=tile), whole, atol=1e-5, rtol=1e-5)


def test_memory_bound_cuts_tiles_and_chunks(tiny, monkeypatch):
    x = images(3, 3, 40, 37, seed=11)
    whole = evidence_map(tiny, x)
    seen = []
    call = PhaseNet.__call__

    def spy(self, padded, *args, **kwargs):
        seen.append(tuple(padded.shape))
        return call(self, padded, *args, **kwargs)

    monkeypatch.setattr(PhaseNet, "__call__", spy)
    mapper = EvidenceMapper(tiny)
    per_pixel = mapper._net.bytes_per_output_pixel(7, 1)
    # room for one image but not three: chunks of images
    chunked = EvidenceMapper(tiny, max_memory=per_pixel * 40 * 37 + 1)(x)
    assert [s[0] for s in seen] == [1, 1, 1]
    # room for 16 x 16 outputs: 3 x 3 even tiles (14 x 13) per image, overlapping by q - 1
    seen.clear()
    tiled = EvidenceMapper(tiny, max_memory=per_pixel * 16 * 16)(x)
    assert len(seen) == 3 * 3 * 3
    assert {s[-2:] for s in seen} == {(14 + 8, 13 + 8), (14 + 8, 11 + 8), (12 + 8, 13 + 8), (12 + 8, 11 + 8)}
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    # at the native stride an output entry stands for 8 x 8 pixels of the early layers, so
    # the bound bites sooner (here: image by image, as tiles are at least 8 entries wide);
    # the logits (the unpadded native map's mean) obey it as well
    seen.clear()
    small = EvidenceMapper(tiny, stride="native", max_memory=mapper._net.bytes_per_output_pixel(7, 8) * 4)
    got = small(x)
    assert [s[0] for s in seen] == [1, 1, 1]
    torch.testing.assert_close(got, evidence_map(tiny, x, stride="native"), atol=1e-5, rtol=1e-5)
    seen.clear()
    logits = small.logits(x)
    assert [s[0] for s in seen] == [1, 1, 1]
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny(x), atol=1e-5, rtol=1e-5)


def test_dilated_layout_equals_phases(tiny):
    x = images(1, 3, 27, 22, seed=12)
    padded = F.pad(x, (4, 4, 4, 4))
    net = PhaseNet(tiny)
    classes = torch.arange(7)
    for g in (1, 2, 4):
        torch.testing.assert_close(net(padded, classes, g, "dilated"), net(padded, classes, g, "phases"),
                                   atol=1e-5, rtol=1e-5)


def test_model_is_not_modified_and_training_mode_uses_running_stats():
    model = randomized("bagnet_tiny", num_classes=4, seed=13).train()
    before = copy.deepcopy(model.state_dict())
    x = images(2, 3, 19, 22, seed=14)
    got = evidence_map(model, x)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert_exact(got, evidence_map_reference(copy.deepcopy(model).eval(), x))
    mapper = EvidenceMapper(model)
    with torch.no_grad():
        torch.testing.assert_close(mapper.logits(x), copy.deepcopy(model).eval()(x), atol=1e-5, rtol=1e-5)


def test_float64_model(tiny):
    model = copy.deepcopy(tiny).double()
    x = images(1, 3, 15, 12, seed=15).double()
    got = evidence_map(model, x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, evidence_map_reference(model, x), atol=1e-10, rtol=1e-10)


def test_bad_input_errors(tiny):
    x = images(1, 3, 20, 20)
    with pytest.raises(TypeError, match="BagNet"):
        evidence_map(torch.nn.Conv2d(3, 3, 1), x)
    with pytest.raises(ValueError, match="channels"):
        evidence_map(tiny, images(1, 4, 20, 20))
    with pytest.raises(ValueError, match="shape"):
        evidence_map(tiny, images(20, 20))
    with pytest.raises(ValueError, match="stride"):
        evidence_map(tiny, x, stride=0)
    with pytest.raises(ValueError, match="stride"):
        evidence_map(tiny, x, stride="fine")
    with pytest.raises(ValueError, match="out of range"):
        evidence_map(tiny, x, classes=[7])
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        evidence_map(tiny, images(1, 3, 8, 30), pad_value=None)
    with pytest.raises(ValueError, match="float"):
        evidence_map(tiny, torch.zeros(1, 3, 20, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="tile_size"):
        evidence_map(tiny, x, tile_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(tiny):
    x = images(1, 3, 30, 27, seed=16)
    cpu = evidence_map(tiny, x)
    gpu = evidence_map(copy.deepcopy(tiny).cuda(), x.cuda())
    assert gpu.is_cuda
    assert_exact(gpu.cpu(), cpu)


def test_every_registered_model_geometry():
    # Shapes only, on the meta device: every registered BagNet has an odd q and a
    # stride made of leading strides, so the full and native maps are defined.
    for name in bagnet.list_models():
        with torch.device("meta"):
            model = bagnet.create_model(name)
        assert model.receptive_field % 2 == 1
        geom = map_geometry(model, (100, 90), "native")
        assert geom.map_size == ((100 - 1) // 8 + 1, (90 - 1) // 8 + 1)


@pytest.mark.parametrize("stride, tile", [(1, None), (1, 5), ("native", None), (3, None)])
def test_features_then_classify_is_the_map(tiny, stride, tile):
    """What the explorer caches: the features before the classifier, then any class from them."""
    mapper = EvidenceMapper(tiny, stride=stride, tile_size=tile)
    x = images(3, 14, 19, seed=4)
    features = mapper.features(x)
    assert features.shape[0] == tiny.fc.in_features
    assert_exact(mapper.classify(features, [6, 1]), evidence_map_reference(tiny, x[None], stride=stride, classes=[6, 1])[0])
    with pytest.raises(ValueError, match="one image"):
        mapper.features(torch.stack([x, x]))


@pytest.mark.parametrize("kwargs", [
    {}, {"stride": "native"}, {"stride": 3}, {"stride": 2, "pad_value": None}, {"tile_size": 5},
    {"_layout": "dilated"}, {"max_memory": 200_000},
], ids=repr)
def test_macs_is_the_work_done(tiny, kwargs):
    """What the mapper says a map costs, against PyTorch's count of the operations it runs."""
    from torch.utils.flop_counter import FlopCounterMode

    mapper = EvidenceMapper(tiny, **kwargs)
    x = images(1, 3, 37, 30, seed=14)
    for run, said in ((lambda: mapper(x, [0, 1, 2]), mapper.macs((37, 30), 3)),
                      (lambda: mapper.logits(x), mapper.logits_macs((37, 30))),
                      (lambda: mapper(x), mapper.macs((37, 30)))):
        with FlopCounterMode(display=False) as counter:
            run()
        assert counter.get_total_flops() == 2 * said
    # the full-resolution map runs every layer at every pixel: far dearer than the model's pass
    assert mapper.macs((37, 30), 3, stride=1) > 20 * mapper.macs((37, 30), 3, stride="native")


def test_patch_logits_are_the_models(tiny):
    x = images(2, 3, 29, 40, seed=15)
    for mapper in (EvidenceMapper(tiny), EvidenceMapper(tiny, stride=2, pad_value=None)):
        with torch.no_grad():
            torch.testing.assert_close(mapper.patch_logits(x, [3, 1]), tiny.patch_logits(x)[:, [3, 1]],
                                       atol=1e-5, rtol=1e-5)
