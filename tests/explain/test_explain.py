"""explain(): preprocessing, predictions, maps and patches of one image."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from bagnet.explain import Explanation, evidence_map, explain, top_patches

from .conftest import randomized

NAMES = ["ant", "bee", "cat", "dog", "eel"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def model():
    m = randomized("bagnet_tiny", num_classes=5, seed=21)
    m.pretrained_cfg.update(classes=list(NAMES), img_size=24, mean=MEAN, std=STD)
    return m


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8))  # 45 wide, 30 high


def expected_input(photo, size=24):
    """Independently: torchvision's Resize(short side), no crop, then normalization."""
    t = TF.to_dtype(TF.pil_to_tensor(photo), torch.float32, scale=True)
    t = TF.resize(t, [size], antialias=True)
    return TF.normalize(t, MEAN, STD)


def test_predictions_maps_and_patches(model, photo):
    x = expected_input(photo)
    assert x.shape == (3, 24, 36)
    with torch.no_grad():
        logits = model(x[None])[0]
    probs = torch.softmax(logits, 0)
    e = explain(model, photo, classes="top2", k=3)
    assert isinstance(e, Explanation)
    assert e.image.shape == (3, 24, 36) and e.image.min() >= 0 and e.image.max() <= 1
    torch.testing.assert_close(e.logits, logits, atol=1e-4, rtol=1e-4)
    order = torch.argsort(probs, descending=True).tolist()
    assert [p.index for p in e.predictions] == order
    assert [p.name for p in e.predictions] == [NAMES[i] for i in order]
    assert e.predictions[0].probability == pytest.approx(float(probs[order[0]]), abs=1e-5)
    assert e.classes == order[:2]
    want = evidence_map(model, x[None], classes=order[:2])[0]
    torch.testing.assert_close(e.evidence, want, atol=1e-4, rtol=1e-4)
    assert e.geometry.image_size == (24, 36) and e.geometry.stride == 1
    # top patches of each explained class: non-overlapping, and by default among the
    # model's own patches (those the logit averages), by a greedy search written out here
    with torch.no_grad():
        own = model.patch_logits(x[None])[0]
    for c, patches in zip(e.classes, e.patches):
        assert patches[0].score == pytest.approx(float(own[c].max()), abs=1e-4)
        assert [(p.box, pytest.approx(p.score, abs=1e-4)) for p in patches] == greedy_own_patches(own[c], 9, 8, 3)
    assert e.patch_source == "model"
    # with patch_source="map": the map's own top entries, as top_patches finds them
    m = explain(model, photo, classes="top2", k=3, patch_source="map")
    for c, patches in zip(m.classes, m.patches):
        assert patches == top_patches(m.evidence_for(c), m.geometry, k=3, classes=[c], non_overlapping=True)


def greedy_own_patches(own, q, s, k):
    """The k best non-overlapping model patches of one class's ``[h', w']`` patch logits:
    patch (i, j) covers pixels [s*i, s*i + q) x [s*j, s*j + q); boxes (x0, y0, x1, y1)."""
    entries = sorted(((float(own[i, j]), i, j) for i in range(own.shape[0]) for j in range(own.shape[1])),
                     key=lambda t: (-t[0], t[1], t[2]))
    chosen = []
    for score, i, j in entries:
        box = (s * j, s * i, s * j + q, s * i + q)
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b, _ in chosen):
            chosen.append((box, score))
        if len(chosen) == k:
            break
    return chosen


def test_to_dict_is_json_and_complete(model, photo):
    e = explain(model, photo, classes=[4, 1], k=2, stride="native")
    d = json.loads(json.dumps(e.to_dict()))
    # [width, height]: the 45x30 photo, resized to a short side of 24 (x1.25 smaller)
    assert d["model"] == "bagnet_tiny" and d["image_size"] == [45, 30] and d["resized_size"] == [36, 24]
    assert d["analysed_box"] == [0, 0, 45, 30] and "x to the right" in d["coordinates"]
    assert d["patch_size_resized"] == [9, 9] and d["patch_size"] == [11, 11]  # round(9 * 1.25)
    assert d["stride_resized"] == 8 and d["padded"] is True
    assert [c["index"] for c in d["explained"]] == [4, 1]
    assert [c["name"] for c in d["explained"]] == ["eel", "bee"]
    first = d["explained"][0]
    assert first["probability"] == pytest.approx(float(e.probabilities[4]))
    assert first["evidence"]["max"] == pytest.approx(float(e.evidence[0].max()))
    assert [p["box_resized"] for p in first["patches"]] == [list(p.box) for p in e.patches[0]]
    assert [p["center_resized"] for p in first["patches"]] == [list(p.center) for p in e.patches[0]]
    for p in first["patches"]:  # original pixels, by hand: x1.25 on both axes
        assert p["box"] == [round(1.25 * v) for v in p["box_resized"]]
        assert p["center"] == [int((c + 0.5) * 1.25) for c in p["center_resized"]]
    assert len(d["predictions"]) == 5 and sum(p["probability"] for p in d["predictions"]) == pytest.approx(1.0)


def test_inputs_of_every_kind_agree(model, photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    arr = np.array(photo)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    ref = explain(model, photo, classes=[0])
    for image in (str(path), path, arr, tensor, torch.from_numpy(arr).permute(2, 0, 1)):
        e = explain(model, image, classes=[0])
        torch.testing.assert_close(e.evidence, ref.evidence, atol=1e-5, rtol=1e-5)


def test_true_class_gives_the_misclassification_figure(model, photo):
    import matplotlib.colors as mcolors

    e = explain(model, photo, classes=[], true_class=3, k=2)
    top = e.predictions[0].index
    assert e.classes == list(dict.fromkeys([3, top]))
    assert e.to_dict()["true_class"]["index"] == 3
    _, axes = e.plot()
    assert len(axes) == 3 and "dog" in axes[1].get_title()
    assert all(mcolors.to_rgba(r.get_edgecolor()) == mcolors.to_rgba("red") for r in axes[2].patches)
    _, axes = explain(model, photo, classes="top3").plot()
    assert len(axes) == 4


def test_model_is_left_alone(photo):
    m = randomized("bagnet_tiny", num_classes=5, seed=22).train()
    before = copy.deepcopy(m.state_dict())
    e = explain(m, photo, classes=[1])
    assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    with torch.no_grad():
        want = copy.deepcopy(m).eval()(_plain(photo, m))[0]
    torch.testing.assert_close(e.logits, want, atol=1e-4, rtol=1e-4)


def _plain(photo, m):
    # no img_size in this model's cfg: the short side goes to 224 px (bagnet's default for a
    # model that names no size), bilinear with antialiasing; ImageNet normalization
    t = TF.to_dtype(TF.pil_to_tensor(photo), torch.float32, scale=True)
    h, w = t.shape[-2:]
    size = (224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)
    t = torch.nn.functional.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return TF.normalize(t.clamp(0, 1), m.pretrained_cfg["mean"], m.pretrained_cfg["std"])[None]


def test_display_names_win_over_folder_names(photo):
    m = randomized("bagnet_tiny", num_classes=2, seed=23)
    m.pretrained_cfg.update(classes=["n01", "n02"], class_names=["tench", "springer"])
    e = explain(m, photo, classes=[1, 0])
    assert [c["name"] for c in e.to_dict()["explained"]] == ["springer", "tench"]


def test_errors(model, photo):
    with pytest.raises(ValueError, match="topN"):
        explain(model, photo, classes="best")
    with pytest.raises(ValueError, match="out of range"):
        explain(model, photo, classes=[5])
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        explain(model, photo, img_size=6)
    with pytest.raises(ValueError, match="was not explained"):
        explain(model, photo, classes=[0]).evidence_for(1)
