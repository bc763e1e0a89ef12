"""Class switches of many-class models come from cached features: right maps, bounded memory."""

import gc

import numpy as np
import pytest
import torch

import bagnet
from bagnet.app import Explorer
from bagnet.app._cache import FeatureCache
from bagnet.testing.models import randomize_batchnorm

from .conftest import IMG_SIZE, random_image
from .test_server import naive_full_map, normalized

CLASSES = 40  # more than the explorer keeps all full-resolution maps of


@pytest.fixture(scope="module")
def many_class_model():
    torch.manual_seed(5)
    model = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=CLASSES)).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 1.0)
    return model


def counting_passes(explorer, monkeypatch):
    """Counts the passes through the model that compute full-resolution features."""
    mapper = explorer._mappers["full"]
    calls = []
    original = mapper.features

    def features(x):
        calls.append(1)
        return original(x)

    monkeypatch.setattr(mapper, "features", features)
    return calls


def feature_bytes(model, h, w):
    return h * w * model.fc.in_features * 4


def test_class_switch_uses_the_cache_and_equals_the_crop_by_crop_map(many_class_model, monkeypatch):
    explorer = Explorer(many_class_model, img_size=IMG_SIZE, top_k=3)
    passes = counting_passes(explorer, monkeypatch)
    array = random_image(IMG_SIZE, IMG_SIZE + 8, seed=3)
    image = explorer.explore(array)
    x = normalized(array)
    first, others = image.top_class, [7, 31, 0, 19]
    image.view(first, "full")
    assert len(passes) == 1
    for c in others:
        got = image.evidence(c, "full").numpy()
        np.testing.assert_allclose(got, naive_full_map(many_class_model, x, c), atol=2e-4, rtol=1e-4)
    assert len(passes) == 1  # every switch after the first view came from the cache
    info = explorer.cache_info()
    assert info["images"] == 1 and info["bytes"] == feature_bytes(many_class_model, IMG_SIZE, IMG_SIZE + 8)
    assert info["hits"] >= len(others)


def test_cache_respects_its_bound_and_recomputes_what_it_dropped(many_class_model, monkeypatch):
    one = feature_bytes(many_class_model, IMG_SIZE, IMG_SIZE)
    explorer = Explorer(many_class_model, img_size=IMG_SIZE, cache_bytes=int(1.5 * one))
    passes = counting_passes(explorer, monkeypatch)
    arrays = [random_image(IMG_SIZE, IMG_SIZE, seed=s) for s in (1, 2)]
    images = [explorer.explore(a) for a in arrays]
    for im in images:
        im.evidence(3, "full")
        assert explorer.cache_info()["bytes"] <= int(1.5 * one)
    assert explorer.cache_info()["images"] == 1 and len(passes) == 2
    # The first image's features were dropped for the second's: its next class costs a pass,
    # and is still right.
    got = images[0].evidence(11, "full").numpy()
    assert len(passes) == 3
    np.testing.assert_allclose(got, naive_full_map(many_class_model, normalized(arrays[0]), 11), atol=2e-4, rtol=1e-4)
    assert explorer.cache_info()["images"] == 1 and explorer.cache_info()["bytes"] == one

    # An image gone from memory (e.g. from the server's store) frees its features.
    del images
    gc.collect()
    assert explorer.cache_info() | {"hits": 0, "misses": 0} == {
        "images": 0, "bytes": 0, "max_bytes": int(1.5 * one), "hits": 0, "misses": 0}


def test_features_larger_than_the_bound_are_not_kept(many_class_model, monkeypatch):
    explorer = Explorer(many_class_model, img_size=IMG_SIZE, top_k=3, cache_bytes=1000)
    passes = counting_passes(explorer, monkeypatch)
    array = random_image(IMG_SIZE, IMG_SIZE, seed=9)
    image = explorer.explore(array)
    top = image.ranking(3)
    image.evidence(top[0], "full")
    assert explorer.cache_info()["bytes"] == 0 and len(passes) == 1
    # The top classes came with that pass; another class needs its own.
    image.evidence(top[2], "full")
    assert len(passes) == 1
    other = next(c for c in range(CLASSES) if c not in top)
    got = image.evidence(other, "full").numpy()
    assert len(passes) == 2
    np.testing.assert_allclose(got, naive_full_map(many_class_model, normalized(array), other), atol=2e-4, rtol=1e-4)


def test_feature_cache_drops_least_recently_used_by_bytes():
    cache = FeatureCache(100)
    a, b, c = torch.zeros(10), torch.zeros(10), torch.zeros(5)  # 40, 40 and 20 bytes
    assert cache.put(1, a) and cache.put(2, b)
    assert cache.get(1) is a  # 1 is now the most recently used
    assert cache.put(3, c)  # 100 bytes: all fit
    assert cache.put(4, torch.zeros(6))  # 24 more: 2 (least recently used) goes
    assert 2 not in cache and cache.get(1) is a and 3 in cache and 4 in cache
    assert cache.info()["bytes"] == 84
    assert not cache.put(5, torch.zeros(26))  # 104 bytes: over the bound by itself
    assert 5 not in cache and cache.info()["bytes"] == 84
    with pytest.raises(ValueError, match="at least 0 bytes"):
        FeatureCache(-1)
