import hashlib

import pytest
import torch

import bagnet
from bagnet.models import CheckpointMismatchError, _weights, load_state_dict_strict, save_model_file

from .naive import random_state_dict


def _hashed_file(tmp_path, obj, stem):
    raw = tmp_path / "raw.tmp"
    torch.save(obj, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    path = tmp_path / f"{stem}-{digest[:8]}.pth.tar"
    raw.rename(path)
    return path


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    d = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(d))
    return d


def test_pretrained_true_downloads_published_format_and_checks_hash(tmp_path, hub_dir, monkeypatch):
    sd = random_state_dict("bagnet9", seed=3)
    # published files predate BatchNorm's batch counter
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = _hashed_file(tmp_path, sd, "bagnet8")
    cfg = _weights.PretrainedCfg(url=path.as_uri())
    monkeypatch.setitem(_weights._PRETRAINED, ("bagnet9", "imagenet"), cfg)
    model = bagnet.create_model("bagnet9", pretrained=True)
    torch.testing.assert_close(model.fc.weight, sd["fc.weight"])
    assert (hub_dir / "checkpoints" / path.name).is_file()  # cached under torch hub
    assert model.pretrained_cfg["classes"][0] == "tench" and len(model.pretrained_cfg["classes"]) == 1000
    assert model.pretrained_cfg["mean"] == [0.485, 0.456, 0.406]


def test_hash_mismatch_is_refused(tmp_path, hub_dir, monkeypatch):
    sd = random_state_dict("bagnet9", seed=3)
    path = tmp_path / "bagnet8-00000000.pth.tar"
    torch.save(sd, path)
    monkeypatch.setitem(_weights._PRETRAINED, ("bagnet9", "imagenet"), _weights.PretrainedCfg(url=path.as_uri()))
    with pytest.raises(ValueError, match="hash"):
        bagnet.create_model("bagnet9", pretrained="imagenet")
    assert not (hub_dir / "checkpoints" / path.name).exists()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {"module." + k: v for k, v in sd.items()}},
        lambda sd: {"_orig_mod.module." + k: v for k, v in sd.items()},
    ],
    ids=["plain", "state_dict", "model+module", "compile+ddp"],
)
def test_wrapped_checkpoints_load(tmp_path, wrap):
    sd = random_state_dict("bagnet17", num_classes=5, seed=4)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(sd), path)
    model = bagnet.create_model("bagnet17", pretrained=str(path), num_classes=5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k])


def test_mismatch_lists_keys_and_loads_nothing(tmp_path):
    sd = random_state_dict("bagnet17", num_classes=5, seed=4)
    sd["extra.weight"] = torch.zeros(1)
    del sd["layer2.0.conv1.weight"]
    sd["layer4.0.conv2.weight"] = torch.zeros(512, 512, 3, 3)  # bagnet17 has 1x1 here
    model = bagnet.create_model("bagnet17", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(model, sd)
    msg = str(err.value)
    assert "missing keys: layer2.0.conv1.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "layer4.0.conv2.weight: checkpoint (512, 512, 3, 3) vs model (512, 512, 1, 1)" in msg
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was changed by a failed load"


def test_head_size_comes_from_the_file_and_a_conflicting_one_is_clear(tmp_path):
    path = tmp_path / "c.pth"
    sd = random_state_dict("bagnet9", num_classes=5)
    torch.save(sd, path)
    model = bagnet.create_model("bagnet9", pretrained=str(path))
    assert model.num_classes == 5 and model.fc.out_features == 5
    torch.testing.assert_close(model.fc.weight, sd["fc.weight"])
    with pytest.raises(ValueError, match=r"fc.weight: checkpoint \(5, 2048\) vs model \(1000, 2048\)"):
        bagnet.create_model("bagnet9", pretrained=str(path), num_classes=1000)


def test_model_file_roundtrip_carries_metadata(tmp_path):
    model = bagnet.create_model("bagnet_tiny", num_classes=3)
    classes = ["a", "b", "c"]
    path = save_model_file(tmp_path / "m.pt", model, {"classes": classes, "img_size": 64, "metrics": {"top1": 50.0}})
    loaded = bagnet.create_model("bagnet_tiny", pretrained=str(path))  # num_classes comes from the file
    assert loaded.num_classes == 3 and loaded.pretrained_cfg["classes"] == classes
    assert loaded.pretrained_cfg["img_size"] == 64 and loaded.pretrained_cfg["metrics"] == {"top1": 50.0}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert bagnet.load_model(path).model_name == "bagnet_tiny"
    with pytest.raises(ValueError, match="holds a 'bagnet_tiny' model"):
        bagnet.create_model("bagnet9_slim", pretrained=str(path))


def test_bad_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        bagnet.create_model("bagnet9", pretrained=str(junk))
    with pytest.raises(FileNotFoundError):
        bagnet.create_model("bagnet9", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="no published weights"):
        bagnet.create_model("bagnet9_slim", pretrained=True)


def test_imagenet_classes_ship():
    from bagnet.data.imagenet import imagenet_classes

    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[217] == "English springer"


def test_torchvision_references_through_the_same_factory(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(num_classes=3).eval()
    plain = tmp_path / "r18.pth"
    torch.save({"model": reference.state_dict()}, plain)
    model = bagnet.create_model("resnet18", pretrained=str(plain)).eval()  # head size read from fc.weight
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert model.num_classes == 3 and model.model_name == "resnet18"
    path = save_model_file(tmp_path / "m.pt", model, {"classes": ["a", "b", "c"]})
    loaded = bagnet.load_model(path).eval()
    assert loaded.pretrained_cfg["classes"] == ["a", "b", "c"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))
    with pytest.raises(ValueError, match="holds a 'resnet18' model"):
        bagnet.create_model("torchvision:vgg11", pretrained=str(path))
    with pytest.raises(ValueError, match="or any torchvision classifier"):
        bagnet.create_model("resnet_nonexistent")


def test_shipped_imagenette_model_loads_and_matches_its_hash():
    from importlib import resources

    files = [p for p in resources.files("bagnet.weights").iterdir() if p.name.endswith(".pt")]
    assert files, "the package ships no model file"
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert f.name.rsplit("-", 1)[1].split(".")[0] == digest[:8], f.name
        assert f.stat().st_size <= 10 * 2**20
    model = bagnet.create_model("bagnet17_slim", pretrained="imagenette").eval()
    cfg = model.pretrained_cfg
    assert model.num_classes == 10 and cfg["img_size"] == 112
    assert cfg["class_names"][0] == "tench" and cfg["classes"][0] == "n01440764"
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 112, 112))).all()


def test_the_default_model_is_shipped_and_knows_the_drawn_golf_ball():
    # The README's screenshot and the demo's first sample rest on this: the shipped default
    # loads offline, sees 192 px (its last training stage was at that size, see its model
    # card), and calls the drawn golf ball a golf ball.
    from bagnet.app import sample_image
    from bagnet.explain import preprocess
    from bagnet.models import DEFAULT_MODEL

    model = bagnet.create_model(DEFAULT_MODEL[0], pretrained=DEFAULT_MODEL[1]).eval()
    cfg = model.pretrained_cfg
    assert DEFAULT_MODEL == ("bagnet33_w25", "imagenette")
    assert model.num_classes == 10 and cfg["img_size"] == 192 and model.receptive_field == 33
    assert cfg["train_img_size"] == 192 and cfg["val_split"]["fraction"] == 0.1
    assert cfg["unknown"]["threshold"] is not None
    x, _ = preprocess(sample_image("golf_ball"), cfg)
    with torch.no_grad():
        probs = model(x[None]).softmax(1)[0]
    assert cfg["class_names"][int(probs.argmax())] == "golf ball", probs
