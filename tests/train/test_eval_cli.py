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
    """Each image alone through the model; argmax among ``index`` columns, by hand (the
    position in ``index``)."""
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


def test_class_map_restricted_to_the_dataset_classes_only_when_asked(fake_imagenet, tmp_path, capsys):
    root, path = fake_imagenet
    out = tmp_path / "r.json"
    args = ["eval", "--data", str(root), "--model", "bagnet_tiny", "--weights", str(path), "--class-map", "imagenet",
            "--workers", "0", "--batch-size", "4", "--restrict-to-folder-classes", "--json", str(out)]
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
    assert report["confusion"] == cm and report["confusion_columns"] == list(WNIDS)
    for k, wnid in enumerate(WNIDS):
        assert report["per_class"][wnid]["top1"] == pytest.approx(100 * cm[k][k] / 3)
    assert report["images_per_s"] > 0 and report["img_size"] == 32
    assert report["restricted_to_folder_classes"] is True and report["scored_among"] == 3
    assert report["model_outputs"] == 1000
    printed = capsys.readouterr().out
    assert f"top-1 {report['top1']:.2f}%" in printed and "confusion" in printed
    assert "RESTRICTED" in printed and "--restrict-to-folder-classes" in printed

    # the same mapping from an explicit file, with the dataset's own classes.tsv gone
    other = tmp_path / "map.tsv"
    other.write_text((root / "classes.tsv").read_text())
    assert main([*args[:-2], "--class-map", str(other), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["confusion"] == cm


def test_class_map_scores_all_outputs_by_default(fake_imagenet, tmp_path, capsys):
    """A 1000-class model on a 3-class folder chooses among its 1000 outputs; a prediction
    outside the folder's classes is wrong (and counted in the confusion's 'other' column)."""
    root, path = fake_imagenet
    out = tmp_path / "r.json"
    assert main(["eval", "--data", str(root), "--weights", str(path), "--class-map", "imagenet", "--workers", "0",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    index = list(WNIDS.values())
    preds, targets = _naive(path, root / "val", list(range(1000)))  # argmax over all outputs
    assert report["top1"] == pytest.approx(100 * sum(p == index[t] for p, t in zip(preds, targets)) / 9)
    cm = [[0] * 4 for _ in range(3)]
    for p, t in zip(preds, targets):
        cm[t][index.index(p) if p in index else 3] += 1
    assert report["confusion"] == cm and report["confusion_columns"] == [*WNIDS, "other"]
    assert report["restricted_to_folder_classes"] is False and report["scored_among"] == 1000
    printed = capsys.readouterr().out
    assert "scored among all 1000 outputs" in printed and "RESTRICTED" not in printed


def test_a_folder_with_some_of_the_model_classes_is_not_scored_among_them_alone(tmp_path, capsys):
    """The issue's case: a 4-class model on a folder of one of its classes. The model
    predicts 'dog' for every image (a huge bias), so the honest top-1 on 'circle' is 0%;
    restricted to the folder's one class it is trivially 100%, and labelled so."""
    make_image_folder(tmp_path, classes=("circle",), per_class=3, size=40, splits=("val",))
    model = bagnet.create_model("bagnet_tiny", num_classes=4)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 100.0, 0.0, 0.0]))
    path = bagnet.save_model_file(tmp_path / "m.pt", model, {"classes": ["circle", "dog", "square", "stripes"],
                                                             "img_size": 32})
    base = ["eval", "--data", str(tmp_path), "--weights", str(path), "--workers", "0"]
    assert main([*base, "--json", str(tmp_path / "a.json")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["top1"] == 0.0 and report["per_class"]["circle"]["top1"] == 0.0
    assert report["confusion"] == [[0, 3]] and report["confusion_columns"] == ["circle", "other"]
    assert main([*base, "--restrict-to-folder-classes", "--json", str(tmp_path / "b.json")]) == 0
    restricted = json.loads((tmp_path / "b.json").read_text())
    assert restricted["top1"] == 100.0 and restricted["restricted_to_folder_classes"] is True
    printed = capsys.readouterr().out
    assert "RESTRICTED: predictions chosen among the folder's 1 class only" in printed


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
    index = [classes.index(c) for c in ("circle", "square", "stripes")]
    preds, targets = _naive(path, tmp_path / "val", list(range(4)))
    assert report["top1"] == pytest.approx(100 * sum(p == index[t] for p, t in zip(preds, targets)) / 6)


def test_eval_refusals_are_one_line(fake_imagenet, tmp_path, capsys):
    root, path = fake_imagenet
    base = ["eval", "--data", str(root), "--weights", str(path), "--workers", "0"]
    cases = [
        (base, "1000 outputs and no class names"),  # an ImageNet model needs --class-map
        ([*base, "--split", "test"], "test does not exist"),
        ([*base, "--class-map", str(tmp_path / "none.tsv")], "none.tsv does not exist"),
        ([*base, "--img-size", "4"], "--img-size 4 is smaller than the model's"),
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
