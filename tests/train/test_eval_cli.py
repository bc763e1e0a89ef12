"""`bagnet eval`: metrics against a naive per-image loop, ImageNet class maps, refusals."""

import json

import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.data.folder import ImageFolder, eval_transform
from bagnet.testing import make_image_folder

WNIDS = {"n01440764": 0, "n02102040": 217, "n02979186": 482}


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """A 1000-class bagnet_tiny saved as a model file, and a folder of wnid classes."""
    root = tmp_path_factory.mktemp("nette")
    make_image_folder(root, classes=tuple(WNIDS), per_class=3, size=40, splits=("val",))
    (root / "classes.tsv").write_text(
        "wnid\timagenet_index\tname\n" + "".join(f"{w}\t{i}\tx\n" for w, i in WNIDS.items())
    )
    torch.manual_seed(0)
    model = bagnet.create_model("bagnet_tiny", num_classes=1000)
    with torch.no_grad():  # spread the logits so the restricted argmax varies between images
        model.fc.weight.mul_(50)
    path = bagnet.save_model_file(root / "fake.pt", model, {"img_size": 32})
    return root, path


def _naive(path, folder, index):
    """Each image alone through the model; argmax among ``index`` columns, by hand."""
    model = bagnet.load_model(path).eval()
    ds = ImageFolder(folder, transform=eval_transform(32, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    preds, targets = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            x, t = ds[i]
            logits = model(x[None])[0].tolist()
            scores = [logits[j] for j in index]
            preds.append(max(range(len(index)), key=lambda k: scores[k]))
            targets.append(t)
    return preds, targets


def test_class_map_restricts_logits_to_the_dataset_classes(fake_imagenet, tmp_path, capsys):
    root, path = fake_imagenet
    out = tmp_path / "r.json"
    args = ["eval", "--data", str(root), "--model", "bagnet_tiny", "--weights", str(path), "--class-map", "imagenet",
            "--workers", "0", "--batch-size", "4", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    preds, targets = _naive(path, root / "val", list(WNIDS.values()))
    assert 0 < len(set(preds))  # sanity
    correct = sum(p == t for p, t in zip(preds, targets))
    assert report["images"] == 9 and report["top1"] == pytest.approx(100 * correct / 9)
    assert report["top5"] == 100.0  # 3 classes
    cm = [[0] * 3 for _ in range(3)]
    for p, t in zip(preds, targets):
        cm[t][p] += 1
    assert report["confusion"] == cm
    for k, wnid in enumerate(WNIDS):
        assert report["per_class"][wnid]["top1"] == pytest.approx(100 * cm[k][k] / 3)
    assert report["images_per_s"] > 0 and report["img_size"] == 32
    printed = capsys.readouterr().out
    assert f"top-1 {report['top1']:.2f}%" in printed and "confusion" in printed

    # the same mapping from an explicit file, with the dataset's own classes.tsv gone
    other = tmp_path / "map.tsv"
    other.write_text((root / "classes.tsv").read_text())
    assert main([*args[:-2], "--class-map", str(other), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["confusion"] == cm


def test_model_file_classes_are_matched_by_name(tmp_path, capsys):
    make_image_folder(tmp_path, per_class=2, size=40, splits=("val",))
    torch.manual_seed(1)
    model = bagnet.create_model("bagnet_tiny", num_classes=4)
    # the model's outputs are in another order and include a class the folder lacks
    classes = ["stripes", "dog", "circle", "square"]
    path = bagnet.save_model_file(tmp_path / "m.pt", model, {"classes": classes, "img_size": 32})
    assert main(["eval", "--data", str(tmp_path), "--weights", str(path), "--workers", "0",
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    preds, targets = _naive(path, tmp_path / "val", [classes.index(c) for c in ("circle", "square", "stripes")])
    assert report["top1"] == pytest.approx(100 * sum(p == t for p, t in zip(preds, targets)) / 6)


def test_eval_refusals_are_one_line(fake_imagenet, tmp_path, capsys):
    root, path = fake_imagenet
    base = ["eval", "--data", str(root), "--weights", str(path), "--workers", "0"]
    cases = [
        (base, "1000 outputs and no class names"),  # an ImageNet model needs --class-map
        ([*base, "--split", "test"], "test does not exist"),
        ([*base, "--class-map", str(tmp_path / "none.tsv")], "none.tsv does not exist"),
    ]
    bad = tmp_path / "bad.tsv"
    bad.write_text("n01440764\t0\nn02102040\t2000\n")
    cases.append(([*base, "--class-map", str(bad)], "no entry for class folder(s) n02979186"))
    bad2 = tmp_path / "bad2.tsv"
    bad2.write_text("n01440764\t0\nn02102040\t2000\nn02979186\t1\n")
    cases.append(([*base, "--class-map", str(bad2)], "maps to output 2000, but the model has 1000 outputs"))
    for args, message in cases:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
