"""The "none of the classes this model knows" flag: scores, calibration, and explain()."""

import copy
import math

import numpy as np
import pytest
import torch

from bagnet.explain import calibrate_unknown, explain, familiarity, unknown_check

from .conftest import randomized


def test_familiarity_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    e2 = math.exp(2)
    assert familiarity(logits, "max_softmax").tolist() == pytest.approx([e2 / (e2 + 2), 1 / 3])
    assert familiarity(logits, "max_logit").tolist() == pytest.approx([2.0, 1.0])
    assert familiarity(logits, "energy").tolist() == pytest.approx([math.log(e2 + 2), math.log(3 * math.e)])
    with pytest.raises(ValueError, match="unknown familiarity score 'entropy'"):
        familiarity(logits, "entropy")


def _with_threshold(model, method, threshold):
    model = copy.deepcopy(model)
    model.pretrained_cfg["unknown"] = {"method": method, "threshold": threshold}
    return model


def test_unknown_check_flags_below_the_threshold():
    model = randomized("bagnet_tiny", num_classes=3)
    assert unknown_check(model, torch.zeros(3)) is None  # nothing calibrated: nothing said
    flagged = unknown_check(_with_threshold(model, "max_logit", 1.5), torch.tensor([1.0, 0.0, 0.0]))
    assert flagged.flag and flagged.score == 1.0 and flagged.threshold == 1.5 and flagged.num_classes == 3
    assert flagged.message == "probably none of the 3 classes this model knows"
    batch = unknown_check(_with_threshold(model, "max_logit", 1.5), torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    assert [c.flag for c in batch] == [True, False] and batch[1].message == ""
    with pytest.raises(ValueError, match="not one of"):
        unknown_check(_with_threshold(model, "entropy", 0.5), torch.zeros(3))


def test_calibration_flags_the_requested_share_of_known_images():
    known = np.arange(1, 101, dtype=float)  # 1..100
    unknown = np.array([0.5, 2.5, 4.5, 50.0])
    cal = calibrate_unknown(known, unknown, method="max_logit", cost=0.05)
    # the five lowest known scores (1..5) are flagged, 6 is not
    assert 5 < cal.threshold <= 6 and cal.cost == 0.05
    assert cal.caught == 0.75  # 0.5, 2.5, 4.5 caught; 50 not
    # AUROC by hand: P(known > unknown), ties count half
    pairs = [(k > u) + 0.5 * (k == u) for k in known for u in unknown]
    assert cal.auroc == pytest.approx(np.mean(pairs))
    held_out = cal.evaluate([1.0, 7.0, 8.0, 9.0], [3.0, 60.0])
    assert held_out == {"cost": 0.25, "caught": 0.5, "known_images": 4, "unknown_images": 2}
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        calibrate_unknown(known, unknown, method="max_logit", cost=0.0)
    with pytest.raises(ValueError, match="images of the model's classes and of other classes"):
        calibrate_unknown(known, [], method="max_logit")


def test_auroc_with_ties_matches_pairs():
    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    cal = calibrate_unknown(known, unknown, method="energy", cost=0.1)
    pairs = [(k > u) + 0.5 * (k == u) for k in known for u in unknown]
    assert cal.auroc == pytest.approx(np.mean(pairs))


def test_explain_carries_the_flag():
    model = randomized("bagnet_tiny", num_classes=4, seed=3)
    image = torch.rand(3, 40, 40)
    assert explain(model, image, k=1).unknown is None
    e = explain(_with_threshold(model, "max_softmax", 1.01), image, k=1)  # every image is flagged
    assert e.unknown.flag and e.to_dict()["unknown"]["message"] == "probably none of the 4 classes this model knows"
    probs = torch.softmax(e.logits, 0)
    assert e.unknown.score == pytest.approx(float(probs.max()))
    assert not explain(_with_threshold(model, "max_softmax", 0.0), image, k=1).unknown.flag
