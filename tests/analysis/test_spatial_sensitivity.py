"""Ranking cells by heatmaps, attributions or at random, and masking the top k."""

import numpy as np
import pytest
import torch

from bagnet.analysis import bagnet_cells, mask_top_cells, masking_scores, predictions, spatial_sensitivity
from bagnet.analysis._output import read_json
from bagnet.analysis.spatial_sensitivity import write_spatial_sensitivity


def test_mask_top_cells_against_a_loop():
    x = torch.rand(3, 20, 18)  # 2x2 whole cells of 8 px; the rest is never masked
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.9]])  # tie: row-major order first
    got = mask_top_cells(x, scores, [0, 1, 2, 4], 8)
    fill = x.mean(dim=(1, 2))[:, None, None]
    order = [(0, 1), (1, 1), (1, 0), (0, 0)]
    for n, k in enumerate([0, 1, 2, 4]):
        want = x.clone()
        for i, j in order[:k]:
            want[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = fill
        torch.testing.assert_close(got[n], want)


def test_native_heatmap_cells_are_the_patch_logits(data, bag3):
    """With q = 3 every patch lies inside one 8x8 cell, so its cell score is its evidence."""
    x, y, _ = next(data.iter_batches(data.indices(4), 4))
    cells = bagnet_cells(bag3, x, y, stride="native")
    with torch.no_grad():
        patches = bag3.model.patch_logits(bag3.normalize(x))  # [B, K, 5, 5]
    want = patches[torch.arange(4), y]
    torch.testing.assert_close(cells, want, rtol=1e-4, atol=1e-4)
    # The paper's stride-1 map: every pixel's centred patch, summed per cell (naive loop).
    from bagnet.explain import evidence_map

    full = evidence_map(bag3.model, bag3.normalize(x), classes=y.unique())
    sel = full[torch.arange(4), torch.searchsorted(y.unique(), y)]
    dense = bagnet_cells(bag3, x, y, stride=1)
    for i in range(5):
        for j in range(5):
            torch.testing.assert_close(dense[:, i, j], sel[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].sum((1, 2)),
                                       rtol=1e-4, atol=1e-3)


def test_masking_scores_against_direct_forward(data, resnet):
    x, y, _ = next(data.iter_batches(data.indices(2), 2))
    ranks = {"a": torch.rand(2, 5, 5), "b": torch.rand(2, 5, 5)}
    got = masking_scores(resnet, x, y, ranks, [1, 3], batch_size=3)
    with torch.no_grad():
        for name in ranks:
            for b in range(2):
                imgs = mask_top_cells(x[b], ranks[name][b], [1, 3], 8)
                out = resnet.model(resnet.normalize(imgs))
                np.testing.assert_allclose(got[name][0][b], out[:, y[b]].numpy(), rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(got[name][1][b], out.softmax(1)[:, y[b]].numpy(), rtol=1e-4, atol=1e-6)


def test_own_evidence_beats_random_for_a_bagnet(data, bag3, cache, tmp_path):
    """For q = 3, masking a cell replaces exactly one patch's evidence by that of a constant
    patch, so the logit drop of a set of cells is additive and masking in the order of the
    model's own evidence is optimal for every k: never worse than random, and concave in k."""
    ks = list(range(26))
    res = spatial_sensitivity([bag3], [bag3], data, methods=(), ks=ks, heatmap_stride="native", cache=cache)
    (m,) = res.models
    heat, rnd = m["curves"]["heatmap B3"], m["curves"]["random"]
    assert res.rankings == ["heatmap B3", "random"] and res.images == len(data.order)
    h, r = np.asarray(heat["logit_drop"]), np.asarray(rnd["logit_drop"])
    assert h[0] == 0 and r[0] == 0 and len(h) == len(ks) and len(heat["prob_drop"]) == len(ks)
    assert (h >= r - 1e-5).all() and (h - r)[1:-1].mean() > 1e-3
    assert h[-1] == pytest.approx(r[-1], abs=1e-4)  # all 25 cells masked either way
    assert (np.diff(h, 2) <= 1e-5).all()  # marginal drops never grow: concave in k
    p = predictions(bag3, data, cache=cache)
    assert heat["prob"][0] == pytest.approx(float(np.mean(p.probs()[np.arange(len(p.targets)), p.targets])), rel=1e-5)
    paths = write_spatial_sensitivity(res, tmp_path)
    assert read_json(paths["json"])["models"][0]["curves"]["random"]["logit_drop"] == pytest.approx(list(r))


def test_attribution_rankings_on_a_resnet(data, bag9, resnet, cache):
    res = spatial_sensitivity(
        [bag9], [resnet, bag9], data, ks=[0, 2, 4], max_images=2, ig_steps=3, batch_size=16, cache=cache
    )
    r18, b9 = res.models
    assert set(r18["curves"]) == {"heatmap B9", "random", "saliency", "integrated_gradients", "deeplift", "lrp",
                                  "occlusion"} and r18["unsupported"] == {}
    # BagNets are not traceable by torch.fx, so DeepLift/LRP are left out with a reason.
    assert set(b9["unsupported"]) == {"deeplift", "lrp"} and "occlusion" in b9["curves"]
    for c in r18["curves"].values():
        assert len(c["prob_drop"]) == 3 and c["prob_drop"][0] == 0.0
    with pytest.raises(ValueError, match="unknown attribution"):
        spatial_sensitivity([bag9], [resnet], data, methods=["gradcam"])
    with pytest.raises(ValueError, match="has 25 cells"):
        spatial_sensitivity([bag9], [resnet], data, ks=[0, 30])
    with pytest.raises(ValueError, match="not a BagNet"):
        spatial_sensitivity([resnet], [resnet], data, ks=[0, 1])
