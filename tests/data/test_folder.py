import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from bagnet.data.folder import ImageFolder, collate_skip, eval_transform, read_class_index, split_indices
from bagnet.testing import make_image_folder


def _truncated_jpeg(path, size=40):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_unreadable_images_are_skipped_counted_and_warned(tmp_path, caplog):
    root = make_image_folder(tmp_path, per_class=3, splits=("train",)) / "train"
    _truncated_jpeg(root / "circle" / "cut.jpg")
    (root / "square" / "notes.jpg").write_text("this is text, not a JPEG")
    ds = ImageFolder(root, transform=T.PILToTensor())
    assert len(ds) == 3 * 3 + 2
    with caplog.at_level(logging.WARNING):
        batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_skip))
    assert sum(b[2] for b in batches) == 2
    assert sum(b[0].shape[0] for b in batches) == 9
    assert all(b[0].shape[0] == b[1].shape[0] for b in batches)
    text = caplog.text
    assert "cut.jpg" in text and "notes.jpg" in text
    # each bad file is warned about once per process, not once per epoch
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        list(DataLoader(ds, batch_size=4, collate_fn=collate_skip))
    assert "cut.jpg" not in caplog.text


def test_all_unreadable_batch_is_empty_not_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG broken")
    images, targets, skipped = collate_skip([ImageFolder(tmp_path)[0]])
    assert images.shape[0] == 0 and targets.shape == (0,) and skipped == 1


def test_modes_become_rgb(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    Image.new("L", (4, 4), 77).save(d / "gray.png")
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(d / "palette.png")
    Image.new("RGBA", (4, 4), (5, 6, 7, 0)).save(d / "clear.png")  # fully transparent -> white
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(d / "cmyk.jpg", quality=100)
    ds = ImageFolder(tmp_path, transform=T.PILToTensor())
    got = {p.rsplit("/", 1)[-1]: ds[i][0] for i, (p, _) in enumerate(ds.samples)}
    assert all(t.shape == (3, 4, 4) and t.dtype == torch.uint8 for t in got.values())
    assert got["gray.png"].eq(77).all()
    assert got["palette.png"][:, 0, 0].tolist() == [10, 20, 30]
    assert got["clear.png"].eq(255).all()
    r, g, b = got["cmyk.jpg"][:, 0, 0].tolist()  # cyan, up to JPEG rounding
    assert r < 8 and g > 247 and b > 247


def test_empty_class_folders_and_non_image_files_are_reported(tmp_path, caplog):
    root = make_image_folder(tmp_path, per_class=2, splits=("train",)) / "train"
    (root / "empty").mkdir()
    (root / "circle" / "README.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolder(root)
    assert ds.classes == ["circle", "empty", "square", "stripes"]
    assert ds.empty_classes == ["empty"]
    assert [p.rsplit("/", 1)[-1] for p in ds.non_image_files] == ["README.txt"]
    assert "without images: empty" in caplog.text and "ignored 1 file without an image extension" in caplog.text
    assert len(ds) == 6


def test_expected_classes_are_enforced_and_ordered(tmp_path):
    root = make_image_folder(tmp_path, per_class=1, splits=("train",)) / "train"
    ds = ImageFolder(root, classes=["stripes", "circle", "square"])
    assert ds.classes == ["stripes", "circle", "square"]
    assert {p.split("/")[-2]: t for p, t in ds.samples} == {"stripes": 0, "circle": 1, "square": 2}
    with pytest.raises(ValueError, match="missing: dog; unexpected: circle"):
        ImageFolder(root, classes=["dog", "square", "stripes"])


def test_missing_folder_and_no_images_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        ImageFolder(tmp_path)


def test_eval_transform_is_resize_then_centre_crop():
    img = Image.fromarray(np.arange(64 * 96 * 3, dtype=np.uint8).reshape(64, 96, 3) % 251)
    got = eval_transform(28, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=0.875)(img)
    resized = img.resize((48, 32), Image.BILINEAR)  # short side 28 / 0.875 = 32
    naive = np.asarray(resized)[2:30, 10:38].astype(np.float32) / 255
    assert got.shape == (3, 28, 28)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), naive, atol=2 / 255)


def test_split_indices_is_stratified_disjoint_and_complete():
    targets = [0] * 10 + [1] * 3 + [2] * 1
    train, val = split_indices(targets, 0.2, seed=3)
    assert sorted(train + val) == list(range(14)) and not set(train) & set(val)
    val_classes = [targets[i] for i in val]
    assert val_classes.count(0) == 2 and val_classes.count(1) == 1 and val_classes.count(2) == 0
    assert split_indices(targets, 0.2, seed=3) == (train, val)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_indices(targets, 1.5)


def test_read_class_index(tmp_path):
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("wnid\timagenet_index\tname\nn01440764\t0\ttench\nn02102040\t217\tspringer\n")
    assert read_class_index(tsv) == {"n01440764": 0, "n02102040": 217}
    tsv.write_text("n01440764\t0\nn02102040\tx\n")
    with pytest.raises(ValueError, match=r"classes.tsv:2: class index 'x'"):
        read_class_index(tsv)


def test_read_class_names(tmp_path):
    from bagnet.data.folder import read_class_names

    (tmp_path / "classes.tsv").write_text("wnid\timagenet_index\tname\nn01440764\t0\ttench\nn02102040\t217\tspringer\n")
    assert read_class_names(tmp_path, ["n02102040", "n01440764"]) == ["springer", "tench"]
    assert read_class_names(tmp_path, ["n01440764", "n99999999"]) is None  # not every class named
    assert read_class_names(tmp_path / "nowhere", ["a"]) is None


def test_train_transform_crop_scale_bounds_the_crop_area():
    from bagnet.data.folder import train_transform

    # A 100x100 image whose left half is black, right half white: a crop covering at least
    # 81% of the area cannot be all black or all white; crops of down to 1% often are.
    img = Image.fromarray(np.concatenate([np.zeros((100, 50, 3), np.uint8), np.full((100, 50, 3), 255, np.uint8)], 1))
    torch.manual_seed(0)

    def uniform_fraction(scale):
        tf = train_transform(16, [0, 0, 0], [1, 1, 1], crop_scale=scale)
        outs = [tf(img) for _ in range(200)]
        return np.mean([float(o.min() == o.max()) for o in outs])

    assert uniform_fraction(0.81) == 0.0
    assert uniform_fraction(0.01) > 0.05


def test_crop_scale_is_validated():
    from bagnet.train import TrainConfig

    with pytest.raises(ValueError, match="--crop-scale"):
        TrainConfig(data="d", out="o", model="m", crop_scale=0.0).validate()
