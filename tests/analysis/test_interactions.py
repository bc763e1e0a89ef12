"""Masking image parts one at a time and together: exact additivity for BagNets."""

import numpy as np
import pytest
import torch

from bagnet.analysis import choose_patches, interactions, mask_patches, predictions
from bagnet.analysis._output import read_json
from bagnet.analysis.interactions import write_interactions


def test_choose_patches_keeps_distance_and_stays_inside():
    for seed in range(20):
        c = choose_patches(40, 48, 3, 8, gap=5, seed=(seed, 1))
        assert c.shape == (3, 2) and len({tuple(x) for x in c}) == 3
        assert (c >= 0).all() and (c[:, 0] + 8 <= 40).all() and (c[:, 1] + 8 <= 48).all()
        for i in range(3):
            for j in range(i + 1, 3):
                dy, dx = np.abs(c[i] - c[j])
                assert max(dy, dx) >= 8 + 5  # at least `gap` pixels between the squares
    np.testing.assert_array_equal(choose_patches(40, 40, 3, 8, seed=(0, 7)), choose_patches(40, 40, 3, 8, seed=(0, 7)))
    with pytest.raises(ValueError, match="only 4 patches"):
        choose_patches(40, 40, 5, 8, gap=9)


def test_mask_patches_against_a_loop():
    x = torch.rand(3, 20, 24)
    corners = np.array([[0, 0], [8, 16]])
    got = mask_patches(x, corners, 4)
    fill = x.mean(dim=(1, 2))
    want = x.repeat(3, 1, 1, 1)
    for k, (top, left) in enumerate(corners):
        for c in range(3):
            want[k, c, top : top + 4, left : left + 4] = fill[c]
            want[2, c, top : top + 4, left : left + 4] = fill[c]
    torch.testing.assert_close(got, want)


def test_bagnet_is_additive_when_patches_are_farther_apart_than_q(data, bag9, resnet, cache, tmp_path):
    q = bag9.receptive_field
    res = interactions([bag9, resnet], data, n_patches=3, patch_size=8, gap=q, batch_size=8, cache=cache)
    b, r = res.models
    s, j = np.asarray(b["sum_single"]), np.asarray(b["joint"])
    assert len(s) == len(data.order) and np.abs(s).max() > 1e-3  # masking does change the logit
    np.testing.assert_allclose(j, s, atol=2e-5 * max(1.0, np.abs(s).max()))
    assert b["slope"] == pytest.approx(1.0, abs=1e-3) and b["r"] == pytest.approx(1.0, abs=1e-6)
    # A ResNet sees the whole 40 px image from every output: the parts interact.
    rs, rj = np.asarray(r["sum_single"]), np.asarray(r["joint"])
    assert np.abs(rj - rs).max() > 100 * np.abs(j - s).max() + 1e-4
    paths = write_interactions(res, tmp_path)
    back = read_json(paths["json"])
    assert back["models"][0]["joint"] == pytest.approx(b["joint"]) and paths["png"].stat().st_size > 0


def test_changes_match_a_direct_computation_and_batching_does_not_matter(data, bag9, cache):
    a = interactions([bag9], data, n_patches=2, gap=0, target="predicted", batch_size=1, max_images=4, cache=cache)
    b = interactions([bag9], data, n_patches=2, gap=0, target="predicted", batch_size=64, max_images=4, cache=cache)
    np.testing.assert_allclose(a.models[0]["joint"], b.models[0]["joint"], atol=1e-5)
    np.testing.assert_allclose(a.models[0]["sum_single"], b.models[0]["sum_single"], atol=1e-5)
    # Recompute the first image by hand: same patches, masked with the image mean.
    i = data.indices(1)[0]
    x = data.dataset[i][0]
    corners = choose_patches(40, 40, 2, 8, 0, seed=(0, i))
    p = predictions(bag9, data, 4, cache=cache)
    t = int(p.logits[0].argmax())
    with torch.no_grad():
        def logit(img):
            return float(bag9.model(bag9.normalize(img[None]))[0, t])

        base = logit(x)
        singles, joint = 0.0, x.clone()
        for top, left in corners:
            one = x.clone()
            for img in (one, joint):
                img[:, top : top + 8, left : left + 8] = x.mean(dim=(1, 2))[:, None, None]
            singles += logit(one) - base
        assert a.models[0]["sum_single"][0] == pytest.approx(singles, abs=1e-4)
        assert a.models[0]["joint"][0] == pytest.approx(logit(joint) - base, abs=1e-4)


def test_bad_options(data, bag9):
    with pytest.raises(ValueError, match="target"):
        interactions([bag9], data, target="best")
    with pytest.raises(ValueError, match="patch size 'q' needs a BagNet"):
        from .conftest import classifier, tiny_resnet

        interactions([classifier("R", tiny_resnet())], data, patch_size="q")
    with pytest.raises(ValueError, match="fit into a 40x40 image"):
        interactions([bag9], data, n_patches=2, patch_size="q", gap=30)
