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
    assert "scored among all 7 outputs" in caption and "top-1 %" in header
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
