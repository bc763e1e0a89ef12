import copy

import pytest
import torch

import bagnet
from bagnet.models import FusedBagNet, _packed, fuse, prepare_for_inference, top1_agreement
from bagnet.models._packed import packable_bfloat16
from bagnet.models._profile import count_macs

from .test_bagnet import _randomize


def _reference(model, x):
    """The unfused model in float64: an independent reference for the float32 fused one.

    Returns features, patch logits and image logits (the mean of the patch logits).
    """
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        features = ref.forward_features(x.double())
        patch_logits = torch.einsum("bfhw,kf->bkhw", features, ref.fc.weight) + ref.fc.bias[:, None, None]
    return features, patch_logits, patch_logits.mean((2, 3))


def _assert_rel_close(got, expected, rel=1e-4):
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    err = (got.double() - expected).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} is more than {rel} of the largest value {scale:.3g}"


@pytest.mark.parametrize("name", bagnet.list_models())
def test_fused_matches_unfused_float64(name):
    model = _randomize(bagnet.create_model(name, num_classes=11), seed=3).eval()
    fused = model.fuse()
    assert isinstance(fused, FusedBagNet)
    q, s = model.receptive_field, model.patch_stride
    g = torch.Generator().manual_seed(4)
    sizes = [(q + s + 3, q + 2 * s), (q, q), (q + 3 * s + 7, q + 5)]
    if model.num_features > 1000:  # the full-width models cost seconds per size on 2 cores
        sizes = sizes[:1]
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=g)
        features, patch_logits, logits = _reference(model, x)
        with torch.no_grad():
            _assert_rel_close(fused.forward_features(x), features)
            _assert_rel_close(fused.patch_logits(x), patch_logits)
            _assert_rel_close(fused(x), logits)


def test_fuse_leaves_the_model_and_its_state_dict_alone():
    model = _randomize(bagnet.create_model("bagnet_tiny", num_classes=5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert model.training and all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the fused copy shares no storage with the original
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not ptrs & {p.data_ptr() for p in fused.parameters()}
    assert fused.model_name == "bagnet_tiny" and fused.pretrained_cfg == model.pretrained_cfg


def test_fused_has_the_same_geometry():
    for name in bagnet.list_models():
        with torch.device("meta"):
            model = bagnet.create_model(name)
            fused = model.fuse()
        assert (fused.receptive_field, fused.patch_stride) == (model.receptive_field, model.patch_stride)
        assert fused.patch_grid(100, 130) == model.patch_grid(100, 130)
        assert fused.num_classes == model.num_classes and fused.num_features == model.num_features


def test_fused_refuses_training_and_small_inputs():
    fused = bagnet.create_model("bagnet_tiny").fuse()
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    assert fused.eval() is fused and not fused.training
    assert not any(p.requires_grad for p in fused.parameters())
    with pytest.raises(ValueError, match=r"8x20 pixels.*receptive field 9x9"):
        fused(torch.zeros(1, 3, 8, 20))
    with pytest.raises(ValueError, match="input channels"):
        fused(torch.zeros(1, 1, 20, 20))
    with pytest.raises(TypeError, match="takes a BagNet"):
        fuse(torch.nn.Conv2d(3, 3, 1))


def test_fused_macs_bagnet33():
    """Savings counted by hand: the merged stem, and the last residual 1x1 conv cropped before, not after."""
    with torch.device("meta"):
        model = bagnet.create_model("bagnet33")
        fused = model.fuse()
    stem_before = 224 * 224 * 64 * 3 + 222 * 222 * 64 * 64 * 9
    stem_after = 222 * 222 * 64 * 3 * 9
    # the last stage's stride-1 downsample computes 24x24 of its 26x26 outputs (the crop
    # keeps 24x24); the strided ones drop one row and column, which is not worth a copy
    crop_saving = (26 * 26 - 24 * 24) * 1024 * 2048
    before, after = count_macs(model, 224), count_macs(fused, 224)
    assert before - after == stem_before - stem_after + crop_saving
    assert abs((stem_before - stem_after) / 1e9 - 1.74) < 0.01  # the "about 1.7 of 16.3"
    assert abs(after / 1e9 - 14.31) < 0.01


def test_prepare_channels_last_and_bfloat16():
    model = _randomize(bagnet.create_model("bagnet17_slim", num_classes=7), seed=5).eval()
    x = torch.randn(2, 3, 49, 57)
    _, patch_logits, logits = _reference(model, x)
    fast = prepare_for_inference(model, channels_last=True)
    assert fast.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.micro_batch == 1  # the batch of 2 goes through one image at a time
    with torch.no_grad():
        _assert_rel_close(fast.patch_logits(x), patch_logits)
        _assert_rel_close(fast(x), logits)
        fast.micro_batch = None
        _assert_rel_close(fast.patch_logits(x), patch_logits)
    half = prepare_for_inference(model, dtype=torch.bfloat16)
    assert half.stem.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = half(x)
    assert out.dtype == torch.float32  # computed in bfloat16, returned in the input's dtype
    _assert_rel_close(out, logits, rel=0.1)  # bfloat16 keeps 8 bits: close, not exact
    plain = prepare_for_inference(model, fuse=False, channels_last=False)
    assert type(plain) is type(model) and plain is not model
    with pytest.raises(ValueError, match="floating-point"):
        prepare_for_inference(model, dtype=torch.int8)
    with pytest.raises(ValueError, match="micro_batch"):
        prepare_for_inference(model, micro_batch=0)


def test_prepare_folds_a_torchvision_resnet():
    import torchvision

    model = _randomize(torchvision.models.resnet18(num_classes=9), seed=6).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double())
        folded = prepare_for_inference(model)
        got = folded(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original keeps its own
    _assert_rel_close(got, expected)


def test_top1_agreement():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    assert top1_agreement(a, b) == pytest.approx(2 / 3)
    assert top1_agreement(a, a) == 1.0
    with pytest.raises(ValueError, match="one shape"):
        top1_agreement(a, b[:2])
    with pytest.raises(ValueError, match="no logits"):
        top1_agreement(a[:0], b[:0])


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs PyTorch built with oneDNN")
@pytest.mark.parametrize("name", ["bagnet17_slim", "bagnet33_slim"])
def test_prepacked_oneDNN_path_matches_float64(name):
    # One size where the last stage crops the downsample's input, one where the strided
    # stages crop its output: both of FusedBottleneck's choices, through the packed convs.
    model = _randomize(bagnet.create_model(name, num_classes=7), seed=6).eval()
    x = torch.randn(2, 3, 96, 81, generator=torch.Generator().manual_seed(7))
    features, patch_logits, logits = _reference(model, x)
    fast = prepare_for_inference(model, prepack=True)
    with torch.no_grad():
        _assert_rel_close(fast.forward_features(x), features)
        _assert_rel_close(fast.patch_logits(x), patch_logits)
        assert fast._packed is not None  # the packed path ran
        _assert_rel_close(copy.deepcopy(fast)(x), logits)  # copies drop the oneDNN weights, then re-pack
        fast.to(torch.bfloat16)  # new weights: packed again, in bfloat16 where the CPU can
        half = fast(x)
        assert half.dtype == torch.float32
        _assert_rel_close(half, logits, rel=0.1)
        unpacked = prepare_for_inference(model, dtype=torch.bfloat16)(x)
        if packable_bfloat16():
            assert fast._packed[0][0] == torch.bfloat16
            assert not torch.equal(half, unpacked)  # the fused adds round once, not twice
            _assert_rel_close(half, unpacked.double(), rel=0.05)
        else:  # oneDNN cannot pack bfloat16 here (an AVX2-only CPU): the unpacked path runs
            assert fast._packed is None  # .to() dropped the float32 pack; none was made
            assert torch.equal(half, unpacked)


def test_bfloat16_runs_unpacked_on_a_cpu_that_cannot_pack_it(monkeypatch):
    # AVX2-only CPUs: oneDNN refuses to re-lay bfloat16 weights, so the packed path must not
    # be tried (it raised "bf16 path needs the cpu support ..." in `bagnet bench`)
    monkeypatch.setattr(_packed, "packable_bfloat16", lambda: False)
    model = _randomize(bagnet.create_model("bagnet17_slim", num_classes=7), seed=6).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        packed = prepare_for_inference(model, dtype=torch.bfloat16, prepack=True)
        out = packed(x)
        assert packed._packed is None
        assert torch.equal(out, prepare_for_inference(model, dtype=torch.bfloat16)(x))


def test_prepack_falls_back_where_oneDNN_cannot_run_it():
    model = _randomize(bagnet.create_model("bagnet_tiny", num_classes=3), seed=8).eval()
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(9))
    _, _, logits = _reference(model, x)
    half = prepare_for_inference(model, dtype=torch.float16, prepack=True)  # no packed float16 kernels
    with torch.no_grad():
        _assert_rel_close(half(x), logits, rel=0.02)
    assert half._packed is None


def test_bfloat16_on_a_cpu_without_units_warns_that_it_is_slower(monkeypatch, caplog):
    import bagnet.models._fuse as fuse_mod

    model = bagnet.create_model("bagnet_tiny", num_classes=3).eval()
    monkeypatch.setattr(fuse_mod, "fast_bfloat16", lambda device="cpu": None)
    with caplog.at_level("WARNING", logger="bagnet"):
        prepare_for_inference(model, dtype=torch.bfloat16)
    assert "bfloat16 on this CPU is emulated" in caplog.text
    caplog.clear()
    monkeypatch.setattr(fuse_mod, "fast_bfloat16", lambda device="cpu": "this CPU has AMX bfloat16 tiles")
    with caplog.at_level("WARNING", logger="bagnet"):
        prepare_for_inference(model, dtype=torch.bfloat16)
        prepare_for_inference(model)
    assert "emulated" not in caplog.text
