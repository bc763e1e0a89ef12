"""class_patches over a labelled folder, against a per-image brute-force search."""

import numpy as np
import pytest
import torch
from PIL import Image

from bagnet.explain import class_patches, evidence_map_reference, map_geometry
from bagnet.testing import make_image_folder

from .conftest import randomized

CLASSES = ("circle", "square", "stripes")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=3, size=28, splits=("val",))
    (root / "val" / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root / "val"


@pytest.fixture(scope="module")
def model():
    m = randomized("bagnet_tiny", num_classes=3, seed=31)
    m.pretrained_cfg["classes"] = list(CLASSES)
    return m


def brute_force(model, folder, c, k):
    """Every image's best native-stride patch for class c, from the reference maps."""
    mean = torch.tensor(model.pretrained_cfg["mean"])[:, None, None]
    std = torch.tensor(model.pretrained_cfg["std"])[:, None, None]
    geom = map_geometry(model, (28, 28), "native")
    found = {True: [], False: []}
    for label, name in enumerate(CLASSES):
        for path in sorted((folder / name).glob("[0-9].png")):
            x = (torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1) / 255.0 - mean) / std
            ev = evidence_map_reference(model, x, classes=[c], stride="native")[0]
            i, j = divmod(int(ev.argmax()), ev.shape[1])
            y0, x0 = 8 * i - geom.offset, 8 * j - geom.offset
            box = (max(x0, 0), max(y0, 0), min(x0 + 9, 28), min(y0 + 9, 28))
            found[label == c].append((float(ev.max()), str(path), box, label))
    return {g: sorted(v, key=lambda t: -t[0])[:k] for g, v in found.items()}


@pytest.mark.parametrize("c", [0, 2])
def test_matches_brute_force(model, folder, c):
    result = class_patches(model, folder, c, k=4, img_size=28, batch_size=4)
    want = brute_force(model, folder, c, 4)
    assert result.num_images == 9 and len(result.skipped) == 1 and "broken.png" in result.skipped[0]
    for got, expected in ((result.positive, want[True]), (result.negative, want[False])):
        assert [(p.source, p.box, p.label) for p in got] == [(s, b, lab) for _, s, b, lab in expected]
        assert [p.score for p in got] == pytest.approx([s for s, *_ in expected], abs=1e-5)
    assert len(result.positive) == 3 and len(result.negative) == 4
    assert all(p.label == c for p in result.positive) and all(p.label != c for p in result.negative)
    crop = result.positive_crops[0]
    x0, y0, x1, y1 = result.positive[0].box
    assert crop.shape == (3, y1 - y0, x1 - x0)
    _, axes = result.plot()
    assert len(axes) == 7
    d = result.to_dict()
    assert d["class_name"] == CLASSES[c] and len(d["negative"]) == 4 and "source" in d["negative"][0]


def test_labels_mapping(model, folder):
    # folders renamed by an explicit mapping: "stripes" images count as class 0 now
    result = class_patches(model, folder, 0, k=2, img_size=28, labels={"circle": 2, "square": 1, "stripes": 0})
    assert {p.label for p in result.positive} == {0}
    assert all("stripes" in p.source for p in result.positive)


def test_unknown_folders_need_labels(folder):
    m = randomized("bagnet_tiny", num_classes=5, seed=32)  # no class names, 5 classes != 3 folders
    with pytest.raises(ValueError, match="labels="):
        class_patches(m, folder, 0, img_size=28)
    with pytest.raises(ValueError, match="no class index"):
        class_patches(m, folder, 0, img_size=28, labels={"circle": 0})
    with pytest.raises(ValueError, match="out of range"):
        class_patches(m, folder, 5, img_size=28)
    with pytest.raises(ValueError, match="not a folder"):
        class_patches(m, folder / "nope", 0)
