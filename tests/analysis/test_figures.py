"""class-patches and misclassified: the explanation figures over a data set."""

import json

import numpy as np
import pytest
import torch

from bagnet.analysis import predictions
from bagnet.analysis.figures import class_patches, misclassified, write_class_patches, write_misclassified

from .conftest import CLASSES


def test_class_patches_writes_a_figure_per_model_and_class(data, bag9, tmp_path):
    res = class_patches([bag9], data, out_dir=tmp_path, classes=["square", "circle"], top=2)
    assert [(f["label"], f["class"]) for f in res["figures"]] == [("B9", "square"), ("B9", "circle")]
    for f in res["figures"]:
        assert (tmp_path / f["png"]).stat().st_size > 1000
    (sq, _) = res["results"]["B9"]
    assert sq["num_images"] == len(data.order) and len(sq["positive"]) == 2
    # Positives come from images of the class, best first.
    assert all("/square/" in p["source"] for p in sq["positive"])
    assert sq["positive"][0]["score"] >= sq["positive"][1]["score"]
    back = json.loads(write_class_patches(res, tmp_path)["json"].read_text())
    assert back["figures"] == res["figures"]
    with pytest.raises(ValueError, match="unknown class"):
        class_patches([bag9], data, out_dir=tmp_path, classes=["dog"])


def test_misclassified_picks_the_most_confident_mistakes(data, bag9, cache, tmp_path):
    res = misclassified([bag9], data, out_dir=tmp_path, count=3, stride="native", cache=cache)
    p = predictions(bag9, data, cache=cache)
    # Independent check straight from the model's outputs.
    with torch.no_grad():
        x = torch.stack([data.dataset[i][0] for i in p.indices])
        probs = bag9.model(bag9.normalize(x)).softmax(1).numpy()
    wrong = [(-probs[r].max(), int(p.indices[r])) for r in range(len(p.indices)) if probs[r].argmax() != p.targets[r]]
    want = [i for _, i in sorted(wrong)[:3]]
    assert len(want) == 3  # the random tiny model makes mistakes
    assert [f["index"] for f in res["figures"]] == want
    for f in res["figures"]:
        assert f["true"] != f["predicted"] and f["true"] in CLASSES
        assert (tmp_path / f["png"]).stat().st_size > 1000
        assert f["probability"] == pytest.approx(float(np.max(probs[list(p.indices).index(f["index"])])), rel=1e-4)
    assert json.loads(write_misclassified(res, tmp_path)["json"].read_text())["figures"][0]["index"] == want[0]
