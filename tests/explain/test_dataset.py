"""class_patches over a labelled folder, against a per-image brute-force search."""

import numpy as np
import pytest
import torch
from PIL import Image

from bagnet.explain import EvidenceMapper, class_patches, evidence_map_reference
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
    """Every image's best native-stride patch for class c, from the reference maps: the
    model's own patches, all wholly inside the image (unpadded: top-left corner (8i, 8j))."""
    mean = torch.tensor(model.pretrained_cfg["mean"])[:, None, None]
    std = torch.tensor(model.pretrained_cfg["std"])[:, None, None]
    found = {True: [], False: []}
    for label, name in enumerate(CLASSES):
        for path in sorted((folder / name).glob("[0-9].png")):
            x = (torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1) / 255.0 - mean) / std
            ev = evidence_map_reference(model, x, classes=[c], stride="native", pad_value=None)[0]
            assert ev.shape == (3, 3)  # (28 - 9) // 8 + 1
            i, j = divmod(int(ev.argmax()), ev.shape[1])
            box = (8 * j, 8 * i, 8 * j + 9, 8 * i + 9)
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


def test_a_padded_mapper_still_gives_whole_patches(model, folder):
    """A padded native map (windows at -4, 4, 12, 20 for q = 9): only those wholly inside count."""
    padded = EvidenceMapper(model, stride="native")
    result = class_patches(model, folder, 1, k=9, img_size=28, mapper=padded)
    for p, crop in zip(result.positive + result.negative, result.positive_crops + result.negative_crops):
        x0, y0, x1, y1 = p.box
        assert (x1 - x0, y1 - y0) == (9, 9) and x0 in (4, 12) and y0 in (4, 12) and crop.shape == (3, 9, 9)


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
