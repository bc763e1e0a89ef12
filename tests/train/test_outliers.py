"""Outlier exposure: the loss by hand, and a run that learns to be unsure on other images."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.explain import explain
from bagnet.train import load_checkpoint, train
from bagnet.train.outliers import OUTLIER, OutlierExposureLoss, OutlierImages

from .conftest import tiny_config


def test_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([0, OUTLIER, 2])

    def log_softmax(row):
        z = math.log(sum(math.exp(v) for v in row))
        return [v - z for v in row]

    ce = -(log_softmax([2.0, 0.0, -1.0])[0] + log_softmax([1.0, 2.0, 3.0])[2]) / 2
    uniform = -sum(log_softmax([0.5, 0.5, 3.0])) / 3
    assert float(OutlierExposureLoss(weight=0.5)(logits, targets)) == pytest.approx(ce + 0.5 * uniform, rel=1e-6)
    only_known = OutlierExposureLoss(weight=0.5)(logits[[0, 2]], targets[[0, 2]])
    assert float(only_known) == pytest.approx(ce, rel=1e-6)
    only_out = OutlierExposureLoss(weight=2.0)(logits[[1]], targets[[1]])
    assert float(only_out) == pytest.approx(2.0 * uniform, rel=1e-6)
    with pytest.raises(ValueError, match="weight must be 0 or more"):
        OutlierExposureLoss(weight=-1)


def _outlier_folder(root, n=12, size=40, seed=7):
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / "x" if i % 2 else root / "y" / "deep"
        d.mkdir(parents=True, exist_ok=True)
        # other "classes": smooth colour gradients, nothing like the training textures
        yy, xx = np.mgrid[:size, :size] / size
        img = np.stack([yy, xx, (yy + xx) / 2], -1) * rng.uniform(80, 255, 3)
        Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_outlier_images_are_found_recursively(tmp_path):
    ds = OutlierImages(_outlier_folder(tmp_path / "o"))
    assert len(ds) == 12 and all(ds[i][1] == OUTLIER for i in range(len(ds)))
    with pytest.raises(FileNotFoundError, match="--outliers folder"):
        OutlierImages(tmp_path / "missing")


def test_training_with_outliers_lowers_confidence_on_them(tiny_data, tmp_path):
    outliers = _outlier_folder(tmp_path / "outliers")
    held_out = _outlier_folder(tmp_path / "held", n=6, seed=99)
    runs = {}
    for name, extra in {"plain": {}, "oe": {"outliers": str(outliers), "outlier_weight": 1.0, "outlier_repeat": 2}}.items():
        out = tmp_path / name
        train(tiny_config(tiny_data, out, epochs=6, **extra))
        runs[name] = out
    log = [json.loads(x) for x in (runs["oe"] / "log.jsonl").read_text().splitlines()]
    # 24 labelled + 2 x 12 outlier images per epoch; accuracy counts the labelled ones only
    assert log[0]["train_images"] == 24 + 24
    assert all(0 <= r["train_top1"] <= 100 for r in log)
    model = {k: bagnet.load_model(v / "model.pt") for k, v in runs.items()}
    assert model["oe"].pretrained_cfg["config"]["outliers"] == str(outliers)
    for k, m in model.items():  # compare the final weights (model.pt holds the best val epoch)
        m.load_state_dict(load_checkpoint(runs[k] / "last.pt")["model"])

    def mean_max_prob(m):
        return np.mean([float(explain(m, p, k=1).probabilities.max()) for p in sorted(held_out.rglob("*.png"))])

    assert mean_max_prob(model["oe"]) < mean_max_prob(model["plain"])
