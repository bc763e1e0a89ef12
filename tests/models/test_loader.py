"""The one loader: hash checks, registered weights from a local file, tags alone, head sizes
of torchvision classifiers, run folders, clear errors, and the default model."""

import hashlib
import logging
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import bagnet
from bagnet.cli.main import main
from bagnet.data.imagenet import IMAGENET_MEAN
from bagnet.models import UnnamedWeightsError, _factory, _weights


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def tiny_file(tmp_path):
    torch.manual_seed(0)
    model = bagnet.create_model("bagnet_tiny", num_classes=3)
    return bagnet.save_model_file(tmp_path / "tiny.pt", model, {"classes": ["a", "b", "c"], "img_size": 40})


@pytest.fixture
def tiny_tag(tmp_path, monkeypatch):
    """Registered weights 'testtag' of bagnet_tiny (a 1000-class plain state dict, as the
    authors publish theirs), hosted nowhere: the file is the user's local copy."""
    torch.manual_seed(1)
    sd = bagnet.create_model("bagnet_tiny").state_dict()
    raw = tmp_path / "raw.pth"
    torch.save(sd, raw)
    digest = _sha(raw)
    path = raw.rename(tmp_path / f"bagnet_tiny-{digest[:8]}.pth")
    cfg = _weights.PretrainedCfg(url=f"https://example.invalid/{path.name}", sha256=digest[:8])
    monkeypatch.setitem(_weights._PRETRAINED, ("bagnet_tiny", "testtag"), cfg)
    return path, sd


def test_a_url_whose_name_looks_hashed_is_not_checked_unless_asked(tiny_file, tmp_path):
    dated = tmp_path / "finetune-20240115.pth"  # 8 digits: looks like a hash prefix, is a date
    dated.write_bytes(tiny_file.read_bytes())
    assert bagnet.create_model("bagnet_tiny", pretrained=dated.as_uri()).num_classes == 3
    other = tmp_path / "other-20240115.pth"  # another name: not served from the cache
    other.write_bytes(tiny_file.read_bytes())
    with pytest.raises(ValueError, match="does not match its hash"):
        bagnet.create_model("bagnet_tiny", pretrained=other.as_uri(), check_hash=True)
    assert not _weights.cached_path(other.as_uri()).exists()


def test_check_hash_passes_a_matching_name(tiny_file, tmp_path):
    named = tmp_path / f"tiny-{_sha(tiny_file)[:10]}.pt"
    named.write_bytes(tiny_file.read_bytes())
    assert bagnet.create_model("bagnet_tiny", pretrained=named.as_uri(), check_hash=True).num_classes == 3
    with pytest.raises(ValueError, match="carries no hash"):
        bagnet.create_model("bagnet_tiny", pretrained=tiny_file.as_uri(), check_hash=True)


def test_a_registered_tag_loads_from_a_local_file_with_its_metadata(tiny_tag):
    path, sd = tiny_tag
    model = bagnet.create_model("bagnet_tiny", pretrained="testtag", file=path)
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    cfg = model.pretrained_cfg
    assert cfg["source"] == "testtag" and len(cfg["classes"]) == 1000 and cfg["classes"][0] == "tench"
    assert cfg["mean"] == list(IMAGENET_MEAN)
    assert bagnet.load_model("testtag", file=path).model_name == "bagnet_tiny"  # the tag alone names its model


def test_a_local_file_that_is_not_the_registered_one_is_refused(tiny_tag, tiny_file):
    with pytest.raises(ValueError) as err:
        bagnet.create_model("bagnet_tiny", pretrained="testtag", file=tiny_file)
    msg = str(err.value)
    assert f"starts with {_sha(tiny_file)[:8]}, expected {tiny_tag[0].name[12:20]}" in msg
    assert "download https://example.invalid/" in msg and "unregistered checkpoint" in msg


def test_weights_file_on_the_command_line(tiny_tag, tiny_file, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (48, 40), (90, 20, 200)).save(image)
    path, _ = tiny_tag
    assert main(["explain", str(image), "--weights", "testtag", "--weights-file", str(path), "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["explain", str(image), "--weights", "testtag", "--weights-file", str(tiny_file), "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected" in err and "SHA-256" in err
    assert main(["explain", str(image), "--weights-file", str(path)]) == 1
    assert "--weights-file needs --weights TAG" in capsys.readouterr().err


def test_downloads_show_a_progress_bar_on_a_terminal(tiny_file, tmp_path, monkeypatch):
    seen = {}

    def download(url, dst, hash_prefix=None, progress=True):
        seen.update(progress=progress, hash_prefix=hash_prefix)
        Path(dst).write_bytes(tiny_file.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _weights.fetch("https://example.invalid/a.pt")
    assert seen == {"progress": True, "hash_prefix": None}
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    _weights.fetch("https://example.invalid/b.pt", sha256="abcdef12")
    assert seen == {"progress": False, "hash_prefix": "abcdef12"}


@pytest.mark.parametrize("name", ["mobilenet_v2", "torchvision:mobilenet_v2", "torchvision/mobilenet_v2"])
def test_torchvision_head_size_comes_from_the_file_whatever_the_layer_is_called(tmp_path, name):
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(num_classes=10).eval()
    path = tmp_path / "m.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = bagnet.create_model(name, pretrained=str(path)).eval()  # its head is classifier.1
    assert model.num_classes == 10 and model.model_name == "mobilenet_v2"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_torchvision_weight_enums_are_checked_before_any_download():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        bagnet.create_model("resnet18", pretrained="IMAGENET1K_V9")


def test_run_folders_missing_paths_and_unnamed_files_get_clear_errors(tmp_path, tiny_file):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="folder without model.pt or last.pt"):
        bagnet.load_model(run)
    (run / "model.pt").write_bytes(tiny_file.read_bytes())
    assert bagnet.load_model(run).num_classes == 3  # a run folder stands for its model.pt
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist"):
        bagnet.load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="nor is 'imagnet' a registered tag"):
        bagnet.load_model("imagnet")
    plain = tmp_path / "plain.pth"
    torch.save(bagnet.create_model("bagnet_tiny").state_dict(), plain)
    with pytest.raises(UnnamedWeightsError, match="does not name its model"):
        bagnet.load_model(plain)
    with pytest.raises(ValueError, match="weights exist for (bagnet33_w25, bagnet17_slim|bagnet17_slim, bagnet33_w25)$"):
        bagnet.create_model("bagnet9_slim", pretrained="imagenette")


def test_cli_errors_name_the_problem(tmp_path, capsys):
    plain = tmp_path / "plain.pth"
    torch.save(bagnet.create_model("bagnet_tiny").state_dict(), plain)
    for weights, words in [(plain, "does not name its model; name the model with --model NAME"),
                           (tmp_path / "nope.pt", "nope.pt does not exist"),
                           (tmp_path, "is a folder without model.pt or last.pt")]:
        assert main(["eval", "--data", str(tmp_path), "--split", ".", "--weights", str(weights)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_a_shared_tag_alone_names_the_default_model(monkeypatch):
    monkeypatch.setitem(_weights._PRETRAINED, ("bagnet_tiny", "imagenette"), _weights.PretrainedCfg(file="x.pt"))
    assert _weights.model_for_tag("imagenette", default=_factory.DEFAULT_MODEL[0]) == _factory.DEFAULT_MODEL[0]
    assert _weights.model_for_tag("imagenet") == "bagnet33"
    with pytest.raises(ValueError, match="name the model"):
        _weights.model_for_tag("imagenette")


def test_default_model_is_the_shipped_one_and_says_how_to_get_imagenet():
    model, line = bagnet.models.default_model()
    assert (model.model_name, model.pretrained_cfg["source"]) == _factory.DEFAULT_MODEL
    assert "--weights imagenet" in line and "shipped" in line and "tench" in line


def test_default_model_prefers_downloaded_imagenet_weights_without_downloading(tiny_tag, monkeypatch):
    path, sd = tiny_tag
    monkeypatch.setattr(_factory, "IMAGENET_MODEL", ("bagnet_tiny", "testtag"))
    assert bagnet.models.default_model()[0].model_name == _factory.DEFAULT_MODEL[0]  # not downloaded: no attempt
    cached = _weights.cached_path(_weights.pretrained_cfg("bagnet_tiny", "testtag").url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(path.read_bytes())
    model, line = bagnet.models.default_model()
    assert model.model_name == "bagnet_tiny" and "found in the torch hub cache" in line
    assert torch.equal(model.state_dict()["fc.weight"], sd["fc.weight"])


def test_no_model_options_and_a_tag_alone_work_on_the_command_line(tmp_path, caplog):
    from PIL import Image

    caplog.set_level(logging.INFO)
    image = tmp_path / "x.png"
    Image.new("RGB", (120, 112), (30, 120, 40)).save(image)
    for extra in ([], ["--weights", "imagenette"]):
        out = tmp_path / f"o{len(extra)}"
        assert main(["explain", str(image), *extra, "--out", str(out), "--device", "cpu", "--stride", "native"]) == 0
        assert (out / "x.json").is_file()
    assert f"model: {_factory.DEFAULT_MODEL[0]} trained on {_factory.DEFAULT_MODEL[1]}" in caplog.text


def test_every_registered_weight_has_a_hash():
    for (name, tag), cfg in _weights._PRETRAINED.items():
        assert cfg.sha256 and len(cfg.sha256) >= 8, (name, tag)
        assert cfg.sha256 == _weights.hash_in_name(cfg.filename), (name, tag)


def test_an_offline_torchvision_download_names_the_model_and_the_way_out(tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"could not download torchvision's .* weights for resnet18 from https://.*"
                                      r"--weights imagenet --weights-file PATH"):
        bagnet.create_model("resnet18", pretrained=True)
