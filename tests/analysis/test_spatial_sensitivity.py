"""Ranking cells by heatmaps, attributions or at random, and masking the top k."""

import numpy as np
import pytest
import torch

from bagnet.analysis import bagnet_cells, mask_top_cells, masking_scores, predictions, spatial_sensitivity
from bagnet.analysis._output import read_json
from bagnet.analysis._stats import Bootstrap
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
        [bag9], [resnet, bag9], data, ks=[0, 2, 4], max_images=2, ig_steps=3, batch_size=16, cache=cache,
        bootstrap=Bootstrap(100),
    )
    r18, b9 = res.models
    own = {"saliency", "integrated_gradients", "deeplift", "lrp", "occlusion", "gradcam"}
    assert set(r18["curves"]) == {"heatmap B9", "random", *own} and r18["unsupported"] == {}
    # BagNets are rewritten for torch.fx too, so every method runs on them.
    assert set(b9["curves"]) == {"heatmap B9", "random", *own} and b9["unsupported"] == {}
    for c in r18["curves"].values():
        assert len(c["prob_drop"]) == 3 and c["prob_drop"][0] == 0.0 and c["prob_drop_ci"][0] == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown attribution"):
        spatial_sensitivity([bag9], [resnet], data, methods=["smoothgrad"])
    with pytest.raises(ValueError, match="has 25 cells"):
        spatial_sensitivity([bag9], [resnet], data, ks=[0, 30])
    with pytest.raises(ValueError, match="not a BagNet"):
        spatial_sensitivity([resnet], [resnet], data, ks=[0, 1])
    with pytest.raises(ValueError, match="stride <= window"):
        spatial_sensitivity([bag9], [resnet], data, methods=["occlusion"], ks=[0, 1], occlusion_window=4,
                            occlusion_stride=8)


def test_bagnets_are_tested_with_the_references_attributions(data, bag9, resnet, cache):
    """The other direction: a tested BagNet's cells are also ranked by the reference's own
    attributions ('METHOD R18'); those are R18's cells, masked on the BagNet."""
    from bagnet.analysis import attribution_cells

    res = spatial_sensitivity([bag9], [resnet, bag9], data, methods=("saliency", "gradcam"), references=[resnet],
                              ks=[0, 1, 3], max_images=3, cache=cache, bootstrap=Bootstrap(50))
    r18, b9 = res.models
    assert set(r18["curves"]) == {"heatmap B9", "saliency", "gradcam", "random"}
    assert set(b9["curves"]) == {"heatmap B9", "saliency", "gradcam", "saliency R18", "gradcam R18", "random"}
    assert res.rankings == ["heatmap B9", "saliency", "gradcam", "saliency R18", "gradcam R18", "random"]
    x, y, _ = next(data.iter_batches(data.indices(3), 3))
    for method in ("saliency", "gradcam"):
        cells = attribution_cells(resnet, x, y, method)
        logit, prob = masking_scores(bag9, x, y, {"r": cells}, [1, 3])["r"]
        np.testing.assert_allclose(res.per_image["B9"][f"{method} R18"][1][:, 1:], prob, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.per_image["B9"][f"{method} R18"][0][:, 1:], logit, rtol=1e-5, atol=1e-5)
    names = {(c["a"], c["b"]) for c in b9["comparisons"]}
    assert names == {("heatmap B9", b) for b in ("saliency", "gradcam", "saliency R18", "gradcam R18", "random")}


def _synthetic(drops: dict[str, np.ndarray], ks):
    """A result whose per-image probabilities are 1 - drop (logit = -drop)."""
    from bagnet.analysis.spatial_sensitivity import SpatialSensitivity

    n = len(next(iter(drops.values())))
    res = SpatialSensitivity(ks=list(ks), cell=8, heatmap_stride=1, rankings=list(drops), images=n,
                             indices=list(range(n)))
    res.per_image["T"] = {k: np.stack([-d, 1.0 - d]).astype(np.float32) for k, d in drops.items()}
    res.models.append({"label": "T", "unsupported": {}, "diagnostics": {}})
    return res


def test_curves_intervals_and_paired_comparisons_by_hand(tmp_path):
    from bagnet.analysis.spatial_sensitivity import add_curves, read_per_image

    rng = np.random.default_rng(0)
    n, ks = 40, [0, 2, 4]
    base = np.c_[np.zeros(n), rng.uniform(0, 0.3, n), rng.uniform(0.2, 0.6, n)]
    drops = {"heatmap B": base + np.c_[np.zeros(n), np.full((n, 2), 0.1)], "twin": base.copy(), "same": None}
    drops["same"] = drops["heatmap B"].copy()
    boot = Bootstrap(500, seed=1)
    res = add_curves(_synthetic(drops, ks), boot)
    (m,) = res.models
    c = m["curves"]["heatmap B"]
    assert c["prob_drop"] == pytest.approx(drops["heatmap B"].mean(0), abs=1e-6)
    w = boot.weights(n)
    naive = np.quantile([drops["heatmap B"][np.repeat(np.arange(n), r.astype(int)), 2].mean() for r in w], [0.025, 0.975])
    assert c["prob_drop_ci"][2] == pytest.approx(list(naive), abs=1e-6)
    assert c["mean_drop"] == pytest.approx(drops["heatmap B"][:, 1:].mean(), abs=1e-6)
    comps = {cmp["b"]: cmp for cmp in m["comparisons"]}
    assert set(comps) == {"twin", "same"}
    assert comps["same"]["p"] == [1.0, 1.0, 1.0] and comps["same"]["mean_p"] == 1.0
    assert comps["twin"]["diff"] == pytest.approx([0.0, 0.1, 0.1], abs=1e-6)
    assert comps["twin"]["p"][1:] == pytest.approx([2 / 501] * 2) and comps["twin"]["mean_p"] == pytest.approx(2 / 501)
    assert comps["twin"]["diff_ci"][1] == pytest.approx([0.1, 0.1], abs=1e-6)
    # The per-image file keeps everything needed to recompute intervals with other settings.
    paths = write_spatial_sensitivity(res, tmp_path)
    saved = read_json(paths["json"])
    assert "per_image" not in saved and saved["per_image_file"] == paths["npz"].name
    back = read_per_image(saved, tmp_path)
    again = add_curves(back, boot)
    np.testing.assert_allclose(again.models[0]["curves"]["twin"]["prob_drop_ci"], m["curves"]["twin"]["prob_drop_ci"])
    other = add_curves(read_per_image(saved, tmp_path), Bootstrap(300, seed=9))
    assert other.bootstrap["resamples"] == 300
    paths["npz"].unlink()
    assert read_per_image(saved, tmp_path) is None
