"""accuracy, patch-size, logit-correlation and error-distribution against naive computations."""

import numpy as np
import pytest

from bagnet.analysis import accuracy, error_distribution, logit_correlation, patch_size, predictions
from bagnet.analysis._output import read_json
from bagnet.analysis.accuracy import accuracy_of, write_accuracy
from bagnet.analysis.error_distribution import class_errors, write_error_distribution
from bagnet.analysis.logit_correlation import correlations, write_logit_correlation
from bagnet.analysis.patch_size import write_patch_size

from .conftest import CLASSES, classifier, tiny_bagnet


def test_topk_against_a_loop():
    from bagnet.analysis._predictions import Predictions

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 7)).astype(np.float32)
    targets = rng.integers(0, 7, 40)
    p = Predictions(np.arange(40), targets, logits, np.zeros(40, np.float32), 1.0, -np.sort(-logits, 1)[:, :5])
    for k in (1, 2, 5, 9):
        hits = sum(int(t in sorted(range(7), key=lambda c: -row[c])[:k]) for row, t in zip(logits, targets))
        assert accuracy_of(p, k, restricted=True) == pytest.approx(100.0 * hits / 40)
    for k in (1, 2, 5):  # here the data set's 7 classes are all the outputs: the same counts
        hits = sum(int(t in sorted(range(7), key=lambda c: -row[c])[:k]) for row, t in zip(logits, targets))
        assert accuracy_of(p, k) == pytest.approx(100.0 * hits / 40)


def test_accuracy_and_patch_size(data, bag9, bag3, resnet, cache, tmp_path):
    rows = accuracy([bag9, bag3, resnet], data, batch_size=4, cache=cache)
    assert [r.label for r in rows] == ["B9", "B3", "R18"]
    assert [r.receptive_field for r in rows] == [9, 3, None] and rows[2].kind == "reference"
    p = predictions(bag9, data, cache=cache)
    assert rows[0].top1 == pytest.approx(100.0 * np.mean(p.logits.argmax(1) == p.targets))
    assert rows[0].images == len(data.order) and rows[0].images_per_s > 0
    ps = patch_size([bag9, bag3, resnet], data, cache=cache)
    assert [b["receptive_field"] for b in ps.bagnets] == [3, 9]
    assert ps.references[0]["label"] == "R18"
    paths = {**write_accuracy(rows, tmp_path), **{f"ps_{k}": v for k, v in write_patch_size(ps, tmp_path).items()}}
    assert all(p.stat().st_size > 0 for p in paths.values())
    back = read_json(tmp_path / "accuracy.json")
    assert back["models"][1]["top1"] == pytest.approx(rows[1].top1)
    assert read_json(tmp_path / "patch_size.json")["bagnets"][0]["receptive_field"] == 3
    with pytest.raises(ValueError, match="at least one BagNet"):
        patch_size([resnet], data, cache=cache)


def test_accuracy_is_scored_among_all_outputs_unless_restricted(data, tmp_path):
    """A 7-output model on the 3-class folder: by default top1/top5 choose among all 7 outputs
    (as `bagnet eval` scores); restricted, among the folder's classes (the paper's subset
    evaluation). Both checked by hand, and the report says which."""
    import torch

    from bagnet.analysis import LogitCache
    from bagnet.analysis.report import tables_for

    model = tiny_bagnet(9, seed=3)
    wide = type(model)(layers=(1, 1, 1, 1), kernel3=(1, 1, 0, 0), width=0.0625, num_classes=7)
    wide.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, strict=False)
    with torch.no_grad():
        wide.fc.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(5))
        wide.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]))  # an output outside the data
    clf = classifier("W", wide.eval())
    columns = [4, 0, 2]
    clf.columns = torch.tensor(columns)
    hits = {"top1": 0, "top5": 0, "top1_all": 0, "top5_all": 0}
    n = 0
    for x, y, _ in data.iter_batches(data.indices(), 4):
        with torch.no_grad():
            full = wide(clf.normalize(x))
        for row, t in zip(full, y.tolist()):
            order = torch.argsort(row, descending=True).tolist()
            sub = torch.argsort(row[columns], descending=True).tolist()
            hits["top1"] += sub[0] == t
            hits["top5"] += t in sub[:5]
            hits["top1_all"] += order[0] == columns[t]
            hits["top5_all"] += columns[t] in order[:5]
            n += 1
    [row] = accuracy([clf], data, batch_size=4, cache=LogitCache(tmp_path / "cache"))
    assert row.top1 == pytest.approx(100 * hits["top1_all"] / n)
    assert row.top5 == pytest.approx(100 * hits["top5_all"] / n)
    assert row.outputs == 7 and row.classes == 3 and "scored among all 7 outputs" in row.scoring
    [restricted] = accuracy([clf], data, batch_size=4, cache=LogitCache(tmp_path / "cache"), restricted=True)
    assert restricted.top1 == pytest.approx(100 * hits["top1"] / n) and restricted.top5 == 100.0
    assert row.top1 < restricted.top1  # the bias pulls predictions outside the data's classes
    assert restricted.scoring.startswith("RESTRICTED")
    # read back from the cache on disk, the same numbers
    [again] = accuracy([clf], data, batch_size=4, cache=LogitCache(tmp_path / "cache"))
    assert again.top1 == row.top1
    write_accuracy([row], tmp_path)
    [(caption, header, _)] = tables_for("accuracy", read_json(tmp_path / "accuracy.json"))
    assert "scored among all 7 outputs" in caption and "top-1 % [95% CI]" in header
    # the per-class errors follow the same convention: an image predicted outside the data is wrong
    ed = error_distribution([clf], [clf], data, cache=LogitCache(tmp_path / "cache"))
    for c in range(3):
        wrong = [order0 for order0, t in _top_outputs(wide, clf, data) if t == c]
        assert ed.errors["W"][c] == pytest.approx(100 * np.mean([o != columns[c] for o in wrong]))


def _top_outputs(model, clf, data):
    import torch

    out = []
    for x, y, _ in data.iter_batches(data.indices(), 4):
        with torch.no_grad():
            full = model(clf.normalize(x))
        out += [(int(row.argmax()), int(t)) for row, t in zip(full, y)]
    return out


def test_correlations_against_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 6))
    b = a + rng.normal(scale=0.7, size=a.shape)
    got = correlations(a, b)
    per_image = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    assert got["r_per_image"] == pytest.approx(np.mean(per_image))
    assert got["r_per_image_median"] == pytest.approx(np.median(per_image))
    assert got["r_all"] == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert correlations(a, a)["r_all"] == pytest.approx(1.0)


def test_logit_correlation_and_error_distribution(data, bag9, bag3, resnet, cache, tmp_path):
    lc = logit_correlation([bag9, bag3], [resnet, bag9], data, cache=cache)
    assert [(p["bagnet"], p["reference"]) for p in lc.pairs] == [("B3", "R18"), ("B3", "B9"), ("B9", "R18"), ("B9", "B9")]
    assert lc.pairs[3]["r_all"] == pytest.approx(1.0) and lc.pairs[3]["r_per_image"] == pytest.approx(1.0)
    assert [(b["a"], b["b"]) for b in lc.baselines] == [("R18", "B9")]
    a, b = predictions(bag3, data, cache=cache).logits, predictions(resnet, data, cache=cache).logits
    assert lc.pairs[0]["r_all"] == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], rel=1e-5)

    ed = error_distribution([bag9], [resnet], data, cache=cache)
    assert ed.classes == list(CLASSES) and ed.images_per_class == [3, 3, 3]
    p = predictions(resnet, data, cache=cache)
    naive = [100.0 * np.mean([p.logits[i].argmax() != c for i in range(len(p.targets)) if p.targets[i] == c])
             for c in range(3)]
    assert ed.errors["R18"] == pytest.approx(naive)
    for out in (write_logit_correlation(lc, tmp_path), write_error_distribution(ed, tmp_path)):
        assert out["png"].stat().st_size > 0
    assert read_json(tmp_path / "error_distribution.json")["errors"]["B9"] == pytest.approx(ed.errors["B9"])
    assert read_json(tmp_path / "logit_correlation.json")["images"] == len(data.order)


def test_class_errors_handles_empty_classes():
    errs = class_errors(np.array([0, 1]), np.array([0, 0]), 3)
    assert errs[0] == 50.0 and np.isnan(errs[1]) and np.isnan(errs[2])
    assert class_errors(np.array([-1, 0]), np.array([0, 0]), 3)[0] == 50.0  # -1: another output, wrong


def _naive_interval(boot, n, stat, strata=None):
    """Percentile interval of ``stat(rows)`` over the bootstrap's resamples, each built by
    repeating image i as often as the resample draws it (an independent re-implementation
    of the vectorized statistics)."""
    values = []
    for row in boot.weights(n, strata):
        values.append(stat(np.repeat(np.arange(n), row.astype(int))))
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return list(np.quantile(values, [0.025, 0.975]))


def test_intervals_are_those_of_resampled_images(data, bag9, bag3, resnet, cache):
    from bagnet.analysis import interactions
    from bagnet.analysis._stats import Bootstrap, mcnemar_exact
    from bagnet.analysis.accuracy import accuracy_comparisons

    boot = Bootstrap(200, seed=4)
    n = len(data.order)
    rows = accuracy([bag9, resnet], data, cache=cache, bootstrap=boot)
    p = predictions(bag9, data, cache=cache)
    hit = p.logits.argmax(1) == p.targets  # 3 outputs = the 3 classes
    assert rows[0].top1_ci == pytest.approx(_naive_interval(boot, n, lambda r: 100 * hit[r].mean()))
    assert rows[0].top1_ci[0] <= rows[0].top1 <= rows[0].top1_ci[1]

    same = classifier("B9 again", bag9.model)
    comps = accuracy_comparisons([bag9, resnet, same], data, cache=cache, bootstrap=boot)
    top1 = {(c["a"], c["b"]): c for c in comps if c["metric"] == "top1"}
    twin = top1[("B9", "B9 again")]
    assert twin["diff"] == 0 and twin["p"] == 1.0 and twin["p_mcnemar"] == 1.0 and twin["diff_ci"] == [0.0, 0.0]
    pr = predictions(resnet, data, cache=cache)
    hit_r = pr.logits.argmax(1) == pr.targets
    c = top1[("B9", "R18")]
    assert (c["a_only"], c["b_only"]) == (int((hit & ~hit_r).sum()), int((~hit & hit_r).sum()))
    assert c["p_mcnemar"] == pytest.approx(mcnemar_exact(hit, hit_r)[0])
    assert c["diff"] == pytest.approx(100 * (hit.mean() - hit_r.mean()))
    assert c["diff_ci"] == pytest.approx(_naive_interval(boot, n, lambda r: 100 * (hit[r].mean() - hit_r[r].mean())))

    lc = logit_correlation([bag3, bag9], [resnet], data, cache=cache, bootstrap=boot)
    a, b = predictions(bag9, data, cache=cache).logits, pr.logits
    pair = lc.pairs[1]
    assert pair["bagnet"] == "B9"
    assert pair["r_all_ci"] == pytest.approx(
        _naive_interval(boot, n, lambda r: np.corrcoef(a[r].ravel(), b[r].ravel())[0, 1]))
    per = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    assert pair["r_per_image_ci"] == pytest.approx(_naive_interval(boot, n, lambda r: per[r].mean()))
    assert pair["r_per_image_median_ci"] == pytest.approx(_naive_interval(boot, n, lambda r: np.median(per[r])))
    [c_all, c_img] = lc.comparisons  # B9 minus B3 against R18, on the same resamples
    a3 = predictions(bag3, data, cache=cache).logits
    assert (c_all["a"], c_all["b"], c_all["metric"]) == ("B9", "B3", "r_all")
    assert c_all["diff_ci"] == pytest.approx(_naive_interval(
        boot, n, lambda r: np.corrcoef(a[r].ravel(), b[r].ravel())[0, 1] - np.corrcoef(a3[r].ravel(), b[r].ravel())[0, 1]))
    assert c_img["metric"] == "r_per_image"

    ed = error_distribution([bag9], [resnet], data, cache=cache, bootstrap=boot)
    t = p.targets

    def err(pred, r):
        return [100 * np.mean(pred[r][t[r] == k] != k) for k in range(3)]

    pb, prr = p.logits.argmax(1), pr.logits.argmax(1)
    assert ed.pairs[0]["r_ci"] == pytest.approx(
        _naive_interval(boot, n, lambda r: np.corrcoef(err(prr, r), err(pb, r))[0, 1], strata=t), nan_ok=True)
    low, high = np.array(ed.errors_ci["B9"]).T
    assert (low <= np.array(ed.errors["B9"]) + 1e-9).all() and (np.array(ed.errors["B9"]) <= high + 1e-9).all()

    res = interactions([bag9, resnet], data, n_patches=2, gap=0, cache=cache, bootstrap=boot)
    m = res.models[1]
    x, y = np.asarray(m["sum_single"]), np.asarray(m["joint"])
    assert m["slope_ci"] == pytest.approx(_naive_interval(boot, n, lambda r: np.polyfit(x[r], y[r], 1)[0]))
    assert m["intercept_ci"] == pytest.approx(_naive_interval(boot, n, lambda r: np.polyfit(x[r], y[r], 1)[1]))
    assert m["r_ci"] == pytest.approx(_naive_interval(boot, n, lambda r: np.corrcoef(x[r], y[r])[0, 1]))
    assert m["relative_deviation_ci"] == pytest.approx(
        _naive_interval(boot, n, lambda r: np.abs(y[r] - x[r]).mean() / np.abs(x[r]).mean()))
    [cmp_slope, cmp_rel] = res.comparisons
    xb, yb = np.asarray(res.models[0]["sum_single"]), np.asarray(res.models[0]["joint"])
    assert cmp_rel["diff_ci"] == pytest.approx(_naive_interval(
        boot, n, lambda r: np.abs(yb[r] - xb[r]).mean() / np.abs(xb[r]).mean()
        - np.abs(y[r] - x[r]).mean() / np.abs(x[r]).mean()))
    assert cmp_slope["metric"] == "slope" and 0 <= cmp_slope["p"] <= 1
