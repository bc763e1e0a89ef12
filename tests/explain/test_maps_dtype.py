"""Evidence maps in bfloat16 and float16 against the float64 crop-by-crop definition.

Reduced-precision maps are not exact; the tolerances below are the documented ones
(docs/precision.md): measured on these models they are 2-4x tighter.
"""

import copy

import pytest
import torch

from bagnet.explain import EvidenceMapper, evidence_map, evidence_map_reference
from bagnet.explain._phases import PhaseNet
from bagnet.models import fuse

from .conftest import randomized

# Largest and mean absolute error, as fractions of the map's largest |value|.
TOLERANCE = {torch.bfloat16: (0.05, 0.006), torch.float16: (0.01, 0.001)}


def images(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def slim17():
    return randomized("bagnet17_slim", num_classes=5, seed=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model_name,size", [("tiny", (21, 26)), ("slim17", (36, 30))])
def test_reduced_map_is_close_to_float64_reference(request, model_name, size, dtype):
    model = request.getfixturevalue(model_name)
    x = images(2, 3, *size, seed=4)
    reference = evidence_map_reference(copy.deepcopy(model).double(), x.double())
    got = evidence_map(model, x, dtype=dtype)
    assert got.dtype == torch.float32 and got.shape == reference.shape
    err = (got.double() - reference).abs()
    scale = reference.abs().max()
    worst, mean = TOLERANCE[dtype]
    assert err.max() <= worst * scale and err.mean() <= mean * scale
    assert torch.corrcoef(torch.stack([got.double().flatten(), reference.flatten()]))[0, 1] >= 0.999
    # ... and not float32's map by another name: bfloat16 rounding shows.
    assert err.max() > 1e-5 * scale


def test_class_subset_and_tiles_in_bfloat16(tiny):
    x = images(1, 3, 25, 23, seed=5)
    whole = evidence_map(tiny, x, dtype=torch.bfloat16)
    # The same bfloat16 arithmetic per entry, whatever the classes and tiles.
    torch.testing.assert_close(evidence_map(tiny, x, classes=[6, 1], dtype="bf16"), whole[:, [6, 1]],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(evidence_map(tiny, x, tile_size=12, dtype=torch.bfloat16), whole, atol=2e-2, rtol=0)


def test_map_mean_equals_bfloat16_logits(slim17):
    x = images(2, 3, 40, 33, seed=6)
    mapper = EvidenceMapper(slim17, stride="native", pad_value=None, dtype=torch.bfloat16)
    logits = mapper.logits(x)
    assert logits.dtype == torch.float32
    # The logits are the float32 mean of the very map the mapper returns ...
    torch.testing.assert_close(mapper(x).mean((2, 3)), logits, atol=1e-6, rtol=1e-6)
    # ... and close to the float64 model's logits.
    want = copy.deepcopy(slim17).double()(x.double())
    assert (logits.double() - want).abs().max() <= 0.05 * want.abs().max()


def test_float32_stays_the_default(tiny):
    x = images(1, 3, 18, 20, seed=7)
    mapper = EvidenceMapper(tiny)
    assert mapper.dtype == torch.float32
    default = evidence_map(tiny, x)
    assert torch.equal(default, evidence_map(tiny, x, dtype=torch.float32))
    reference = evidence_map_reference(copy.deepcopy(tiny).double(), x.double())
    assert (default.double() - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_weights_are_folded_in_float64_and_rounded_once(tiny):
    before = copy.deepcopy(tiny.state_dict())
    net = PhaseNet(tiny, dtype=torch.bfloat16)
    exact = fuse(copy.deepcopy(tiny).double())
    assert torch.equal(net.stem.weight, exact.stem.weight.to(torch.bfloat16))
    assert torch.equal(net.blocks[-1].conv3.bias, exact.blocks[-1].conv3.bias.to(torch.bfloat16))
    assert net.fc_bias.dtype == torch.float32  # the bias is added to float32 logits
    for key, value in tiny.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key])  # the model is left as it was


def test_float16_overflow_is_an_error(tiny):
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        model.fc.weight.mul_(1e6)
    with pytest.raises(ValueError, match="overflowed.*bfloat16 or float32"):
        evidence_map(model, images(1, 3, 16, 16, seed=8), dtype=torch.float16)


@pytest.mark.parametrize("dtype,message", [(torch.int8, "torch.int8"), ("bf17", "'bf17'"), ("auto", "'auto'")])
def test_bad_dtype_is_refused(tiny, dtype, message):
    with pytest.raises(ValueError, match=message):
        evidence_map(tiny, images(1, 3, 16, 16), dtype=dtype)


def test_cached_features_give_the_same_bfloat16_map(tiny):
    # The explorer keeps features and applies the classifier per class: the same numbers.
    x = images(3, 17, 19, seed=9)
    mapper = EvidenceMapper(tiny, dtype=torch.bfloat16)
    features = mapper.features(x)
    assert features.dtype == torch.bfloat16
    maps = mapper.classify(features, [4, 0])
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, mapper(x, [4, 0]), atol=1e-6, rtol=0)
